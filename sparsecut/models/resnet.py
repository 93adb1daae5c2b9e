"""ResNet (basic and bottleneck blocks), optionally with squeeze-excitation or grouped (ResNeXt) 3×3 convs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsecut.models.blocks import ChannelGroup, SqueezeExcitation

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, se: bool = False, groups: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcitation(out_ch) if se else None
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)

    def channel_groups(self) -> list[ChannelGroup]:
        groups = [ChannelGroup(self.conv1, self.bn1)]
        return groups + (self.se.channel_groups() if self.se is not None else [])


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, se: bool = False, groups: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        inner = width * (2 if groups > 1 else 1)  # ResNeXt blocks are twice as wide inside
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcitation(out_ch) if se else None
        self.relu = nn.ReLU()
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        return self.relu(out + identity)

    def channel_groups(self) -> list[ChannelGroup]:
        groups = [ChannelGroup(self.conv1, self.bn1), ChannelGroup(self.conv2, self.bn2)]
        return groups + (self.se.channel_groups() if self.se is not None else [])


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(nn.Module):
    """ResNet; `stem="imagenet"` is the 7×7/2 conv + max-pool of the paper, `"cifar"` a 3×3/1 conv for small inputs."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        stem: str = "imagenet",
        se: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
            )
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (count, width) in enumerate(zip(layers, widths, strict=True)):
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(block(in_ch, width, stride, se=se, groups=groups))
                in_ch = width * block.expansion
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))

    def channel_groups(self) -> list[ChannelGroup]:
        return [g for b in self.blocks for g in b.channel_groups()]  # type: ignore[operator]
