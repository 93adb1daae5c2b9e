"""Factories for `--model MODULE:FACTORY` tests."""

import torch
from torch import nn


class Noisy(nn.Module):
    """Adds fresh noise: ONNX (RandomUniformLike) and PyTorch can never agree, so verification must refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + torch.rand_like(self.conv(x))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )


def noisy_net() -> nn.Module:
    return Noisy()


def not_a_module() -> str:
    return "hello"
