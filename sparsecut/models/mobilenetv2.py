"""MobileNetV2 (Sandler et al. 2018): inverted residuals with depthwise 3×3 convs and ReLU6."""

from __future__ import annotations

import torch
from torch import nn

from sparsecut.models.blocks import ChannelGroup

__all__ = ["InvertedResidual", "MobileNetV2"]


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn_act(in_ch, hidden, 1)
        layers += _conv_bn_act(hidden, hidden, 3, stride, groups=hidden)
        layers += [nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)
        self.expands = expand_ratio != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out

    def channel_groups(self) -> list[ChannelGroup]:
        if not self.expands:
            return []
        expand, bn1, _, depthwise, bn2 = list(self.conv)[:5]
        return [ChannelGroup(expand, bn1, followers=(depthwise, bn2))]  # type: ignore[arg-type]


class MobileNetV2(nn.Module):
    # (expand ratio, channels, repeats, stride) per stage, from the paper's Table 2.
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, first_stride: int = 2) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [nn.Sequential(*_conv_bn_act(3, in_ch, 3, first_stride))]
        for t, c, n, s in self.SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(nn.Sequential(*_conv_bn_act(in_ch, last, 1)))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def channel_groups(self) -> list[ChannelGroup]:
        return [g for f in self.features if isinstance(f, InvertedResidual) for g in f.channel_groups()]
