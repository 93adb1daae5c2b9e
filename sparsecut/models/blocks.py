"""Building blocks shared by the reference models, and `ChannelGroup`, the unit the pruning recipes act on."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["ChannelGroup", "SqueezeExcitation"]


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Output channels of `layer` that can be pruned on their own (inside a block, not on a residual stream).

    `followers` share the channel index on their own output axis 0 (the BatchNorm after the conv, a depthwise
    conv and its BatchNorm): a recipe that removes channel k of `layer` zeroes channel k of each of them too.
    `norm` is the BatchNorm whose γ network slimming drives to zero.
    """

    layer: nn.Conv2d | nn.Linear
    norm: nn.BatchNorm2d | None = None
    followers: tuple[nn.Module, ...] = ()

    @property
    def modules(self) -> tuple[nn.Module, ...]:
        return (self.layer, *((self.norm,) if self.norm is not None else ()), *self.followers)


class SqueezeExcitation(nn.Module):
    """x · σ(W2 ReLU(W1 avgpool(x) + b1) + b2) — Hu et al. 2018."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))

    def channel_groups(self) -> list[ChannelGroup]:
        return [ChannelGroup(self.fc1)]
