"""DenseNet-style network (Huang et al. 2017): pre-activation dense layers whose outputs are concatenated."""

from __future__ import annotations

import torch
from torch import nn

from sparsecut.models.blocks import ChannelGroup

__all__ = ["DenseLayer", "DenseNet"]


class DenseLayer(nn.Module):
    """BN → ReLU → 1×1 conv (bottleneck) → BN → ReLU → 3×3 conv; the output is concatenated to the input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        inner = bottleneck * growth
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, inner, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, growth, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.norm(x))))


class DenseNet(nn.Module):
    def __init__(
        self, growth: int = 12, block_layers: tuple[int, ...] = (4, 4, 4), stem: int = 24, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 1, 1, bias=False)]
        ch = stem
        for i, count in enumerate(block_layers):
            for _ in range(count):
                layers.append(DenseLayer(ch, growth))
                ch += growth
            if i < len(block_layers) - 1:
                layers.append(Transition(ch, ch // 2))
                ch //= 2
        layers += [nn.BatchNorm2d(ch), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def channel_groups(self) -> list[ChannelGroup]:
        return [ChannelGroup(m.conv1, m.norm2) for m in self.features if isinstance(m, DenseLayer)]
