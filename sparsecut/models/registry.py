"""The reference architectures, registered by name for `--arch`, each with its default input shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sparsecut.errors import ExportError
from sparsecut.models.densenet import DenseNet
from sparsecut.models.mobilenetv2 import MobileNetV2
from sparsecut.models.resnet import BasicBlock, Bottleneck, ResNet
from sparsecut.models.vit import VisionTransformer

__all__ = ["ARCHITECTURES", "Architecture", "build_model", "get_architecture"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str


_TINY: dict[str, Any] = dict(widths=(16, 32, 64), num_classes=10, stem="cifar")

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "resnet18", lambda: ResNet(BasicBlock, (2, 2, 2, 2)), (1, 3, 224, 224), "ResNet-18, basic blocks, ImageNet"
        ),
        Architecture(
            "resnet50",
            lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
            (1, 3, 224, 224),
            "ResNet-50, bottleneck blocks, ImageNet (25.6 M params)",
        ),
        Architecture(
            "resnet-tiny",
            lambda: ResNet(BasicBlock, (1, 1, 1), **_TINY),
            (1, 3, 32, 32),
            "3-stage ResNet, basic blocks",
        ),
        Architecture(
            "resnet-bottleneck-tiny",
            lambda: ResNet(Bottleneck, (1, 1, 1), **_TINY),
            (1, 3, 32, 32),
            "3-stage ResNet, bottleneck blocks",
        ),
        Architecture(
            "se-resnet-tiny",
            lambda: ResNet(BasicBlock, (1, 1, 1), se=True, **_TINY),
            (1, 3, 32, 32),
            "3-stage ResNet with squeeze-excitation in every block",
        ),
        Architecture(
            "resnext-tiny",
            lambda: ResNet(Bottleneck, (1, 1, 1), groups=4, **_TINY),
            (1, 3, 32, 32),
            "3-stage ResNeXt, grouped 3×3 convs (4 groups)",
        ),
        Architecture("mobilenetv2", lambda: MobileNetV2(), (1, 3, 224, 224), "MobileNetV2 1.0, ImageNet"),
        Architecture(
            "mobilenetv2-tiny",
            lambda: MobileNetV2(width_mult=0.5, num_classes=10, first_stride=1),
            (1, 3, 32, 32),
            "MobileNetV2 0.5: inverted residuals, depthwise convs, ReLU6",
        ),
        Architecture("densenet-tiny", lambda: DenseNet(), (1, 3, 32, 32), "DenseNet-BC style, concat dense blocks"),
        Architecture(
            "vit-tiny", lambda: VisionTransformer(), (1, 3, 32, 32), "ViT, 2 blocks, dim 64, 4 heads, patch 8"
        ),
    ]
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise ExportError(f"unknown architecture {name!r}; known: {known}") from None


def build_model(name: str, seed: int = 0) -> nn.Module:
    """A reference model in eval mode with seeded weights and non-trivial normalization statistics.

    No pretrained weights can be downloaded here, so BatchNorm/LayerNorm get random affine parameters and running
    statistics like a trained network has (γ ≠ 1, β ≠ 0, μ ≠ 0, σ² ≠ 1): an exporter or a pass that mishandles
    them then changes the outputs, instead of hiding behind the identity.
    """
    torch.manual_seed(seed)
    model = get_architecture(name).factory()
    randomize_normalization(model, seed)
    return model.eval()


def randomize_normalization(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
