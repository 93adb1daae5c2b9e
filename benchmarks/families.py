"""The model families the zoo benchmark prunes: timm, Ultralytics YOLO, segmentation_models_pytorch and a few
nets in plain torch. Each is built offline with a seeded random init and trained-like BatchNorm, pruned by
Torch-Pruning as its own examples do, and prepared for export the way its users export it.

timm, Torch-Pruning, ultralytics and segmentation-models-pytorch are benchmark-only dependencies:
`pip install timm torch-pruning ultralytics segmentation-models-pytorch` into the venv, with `torch==2.13.0` in
the same call (timm needs ../shared/tvshim.py on these machines; ultralytics runs with YOLO_OFFLINE=1).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable

import torch
from common import prune_both_ways, trained_like_batchnorm
from torch import nn

Pruned = tuple[nn.Module, "nn.Module | None", str]  # masked, Torch-Pruning's physical model (None: it failed), why


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    what: str
    size: int  # input H = W
    build: Callable[[], tuple[nn.Module, list[nn.Module]]]  # the model and the layers Torch-Pruning must not prune
    prune: Callable[[nn.Module, tuple[int, ...], list[nn.Module], float], Pruned] = prune_both_ways
    prepare: Callable[[nn.Module, str], nn.Module] = lambda model, exporter: model  # for export by `exporter`
    layernorm: bool = False  # only the MLP hidden is masked: the block channels pass a LayerNorm
    source: str = "plain torch"


# ------------------------------------------------------------------------------------------------ timm
TIMM = {
    "resnet": ("resnet18", 128, "residual basic blocks"),
    "resnext": ("resnext26ts", 128, "grouped 3×3 convs (cardinality 32)"),
    "regnet": ("regnety_002", 128, "grouped convs (group width 8) + SE"),
    "dla": ("dla34", 128, "deep layer aggregation: tree Concat + 1×1 roots"),
    "densenet": ("densenet121", 128, "dense Concat, BatchNorm after Concat"),
    "efficientnet": ("efficientnet_b0", 128, "depthwise + SE + SiLU"),
    "mobilenetv3": ("mobilenetv3_small_100", 128, "depthwise + SE + hard-swish"),
    "ghostnet": ("ghostnet_100", 128, "ghost modules: cheap depthwise features, Concat, Slice"),
    "convnext": ("convnext_atto", 128, "depthwise 7×7, channels-last LayerNorm, MLP (hidden masked)"),
    "hrnet": ("hrnet_w18_small", 128, "multi-branch, multi-resolution fusion (Resize)"),
    "res2net": ("res2net50_14w_8s", 128, "hierarchical Split → conv → Add → Concat"),
    "vit": ("vit_tiny_patch16_224", 224, "transformer MLP hidden neurons (masked)"),
    "swin": ("swin_tiny_patch4_window7_224", 224, "windowed attention, shifted windows (MLP hidden masked)"),
    "levit": ("levit_128s", 224, "hybrid conv/attention: conv stem, Linear + BatchNorm1d on tokens (MLP hidden)"),
}
_MLP_ONLY = {"convnext": "mlp.fc1", "vit": "mlp.fc1", "swin": "mlp.fc1"}


def _timm(family: str) -> Callable[[], tuple[nn.Module, list[nn.Module]]]:
    def build() -> tuple[nn.Module, list[nn.Module]]:
        import timm

        name, size, _ = TIMM[family]
        kwargs = {"img_size": size} if family == "vit" else {}
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        trained_like_batchnorm(model)
        if family in _MLP_ONLY:
            ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                       and not n.endswith(_MLP_ONLY[family])]  # fmt: skip
        elif family == "levit":  # its attention reshapes Torch-Pruning cannot follow: convs and MLP hidden pruned
            ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)
                       and not n.endswith("mlp.ln1.linear")]  # fmt: skip
        else:
            ignored = [model.get_classifier()]
        return model, ignored

    return build


# ------------------------------------------------------------------------------------------------ plain torch
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: split channels in half, transform one half (1×1 → depthwise 3×3 → 1×1), concat,
    shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.units = nn.Sequential(*(ShuffleUnit(width) for _ in range(4)))
        self.head = nn.Sequential(nn.Conv2d(width, 128, 1), nn.ReLU())
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.units(self.stem(x))).mean((2, 3)))


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """A two-level U-Net: encoder, max-pool, ConvTranspose upsampling, skip Concat, segmentation head."""

    def __init__(self, width: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.enc1, self.enc2 = _double_conv(3, width), _double_conv(width, 2 * width)
        self.bottom = _double_conv(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _double_conv(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _double_conv(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.max_pool2d(e1, 2))
        b = self.bottom(nn.functional.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)


def _plain(factory: Callable[[], nn.Module], head: Callable[[nn.Module], nn.Module]) -> Callable:
    def build() -> tuple[nn.Module, list[nn.Module]]:
        model = factory().eval()
        trained_like_batchnorm(model)
        return model, [head(model)]

    return build


# ------------------------------------------------------------------------------------------------ Ultralytics
class C2fTwoConvs(nn.Module):
    """C2f with cv1 as two convs, one per half (Torch-Pruning's C2f_v2, its YOLOv8 example): Torch-Pruning prunes
    each half on its own. Masked, the halves are put back into one cv1 (`merged_state`), as users export C2f."""

    def __init__(self, c2f: nn.Module) -> None:
        super().__init__()
        self.c = c2f.c
        conv = c2f.cv1
        self.cv0, self.cv1 = copy.deepcopy(conv), copy.deepcopy(conv)
        for half, rows in ((self.cv0, slice(0, self.c)), (self.cv1, slice(self.c, 2 * self.c))):
            inner = conv.conv
            half.conv = nn.Conv2d(inner.in_channels, self.c, inner.kernel_size, inner.stride, inner.padding, bias=False)
            half.conv.weight.data = inner.weight.data[rows].clone()
            half.bn = nn.BatchNorm2d(self.c)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(half.bn, key).data = getattr(conv.bn, key).data[rows].clone()
        self.cv2, self.m = c2f.cv2, c2f.m
        for attr in ("f", "i", "type", "np"):  # Ultralytics' graph bookkeeping
            if hasattr(c2f, attr):
                setattr(self, attr, getattr(c2f, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _two_convs(module: nn.Module) -> None:
    from ultralytics.nn.modules import C2f

    for name, child in module.named_children():
        if isinstance(child, C2f):  # C3k2 too
            setattr(module, name, C2fTwoConvs(child))
        else:
            _two_convs(child)


def merged_state(split: nn.Module) -> dict[str, torch.Tensor]:
    """The state of the stock model from that of one whose C2f convs were split: cv0 and cv1 joined again."""
    state = split.state_dict()
    merged = {}
    for key, value in state.items():
        if ".cv0." in key:
            continue
        prefix, sep, rest = key.partition(".cv1.")
        twin = f"{prefix}.cv0.{rest}"
        merged[key] = torch.cat([state[twin], value]) if sep and twin in state and value.dim() >= 1 else value
    return merged


def _yolo(name: str) -> Callable[[], tuple[nn.Module, list[nn.Module]]]:
    def build() -> tuple[nn.Module, list[nn.Module]]:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO
        from ultralytics.nn.modules import Detect
        from ultralytics.nn.modules.block import Attention

        model = YOLO(f"{name}.yaml").model.eval()
        trained_like_batchnorm(model)
        # as Torch-Pruning's YOLOv8 example: the Detect head stays; C2PSA's attention is beyond it (it fails there)
        return model, [m for m in model.modules() if isinstance(m, (Detect, Attention))]

    return build


def _prune_yolo(model: nn.Module, shape: tuple[int, ...], ignored: list[nn.Module], ratio: float) -> Pruned:
    """Torch-Pruning on the C2f-split model (its example's way); the masked model is the stock one again."""
    stock = copy.deepcopy(model)
    _two_convs(model)
    masked, physical, failure = prune_both_ways(model, shape, ignored, ratio)
    stock.load_state_dict(merged_state(masked))
    return stock, physical, failure


def _export_yolo(model: nn.Module, exporter: str) -> nn.Module:
    """As Ultralytics' exporter prepares a model for ONNX: BatchNorm fused, the head in export mode (the raw
    decoded output, no NMS), C2f through `forward_split`. Anchors are computed at run time for dynamo (its
    tracer refuses the shape comparison Ultralytics caches them by), cached as constants for TorchScript."""
    from ultralytics.nn.modules import C2f, Detect

    model = copy.deepcopy(model).eval().float().fuse()
    for module in model.modules():
        if isinstance(module, Detect):
            module.dynamic, module.export, module.format, module.shape = exporter == "dynamo", True, "onnx", None
        elif isinstance(module, C2f):
            module.forward = module.forward_split
    return model


# ------------------------------------------------------------------------------------------------ segmentation
def _smp(kind: str) -> Callable[[], tuple[nn.Module, list[nn.Module]]]:
    def build() -> tuple[nn.Module, list[nn.Module]]:
        import segmentation_models_pytorch as smp

        factory = {"smp-unet": smp.Unet, "fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus}[kind]
        model = factory(encoder_name="resnet18", encoder_weights=None, classes=3).eval()
        trained_like_batchnorm(model)
        return model, [model.segmentation_head]

    return build


FAMILIES: dict[str, Family] = {
    **{
        f: Family(f, what, size, _timm(f), layernorm=f in _MLP_ONLY, source=f"timm {name}")
        for f, (name, size, what) in TIMM.items()
    },
    "shufflenet": Family(
        "shufflenet",
        "chunk, Concat, channel shuffle (Reshape → Transpose → Reshape)",
        128,
        _plain(ShuffleNet, lambda m: m.fc),
    ),
    "unet": Family("unet", "ConvTranspose decoder, skip Concat", 128, _plain(UNet, lambda m: m.head)),
    "yolov8n": Family(
        "yolov8n",
        "C2f split halves, SPPF, Detect head (DFL)",
        320,
        _yolo("yolov8n"),
        _prune_yolo,
        _export_yolo,
        source="ultralytics yolov8n.yaml",
    ),
    "yolo11n": Family(
        "yolo11n",
        "C3k2 split halves, C2PSA attention, SPPF, Detect head",
        320,
        _yolo("yolo11n"),
        _prune_yolo,
        _export_yolo,
        source="ultralytics yolo11n.yaml",
    ),
    "smp-unet": Family(
        "smp-unet",
        "ResNet-18 encoder, U-Net decoder: Resize to the skip's size, Concat",
        128,
        _smp("smp-unet"),
        source="segmentation_models_pytorch Unet",
    ),
    "fpn": Family(
        "fpn",
        "FPN decoder: GroupNorm, bilinear Resize, sums",
        128,
        _smp("fpn"),
        source="segmentation_models_pytorch FPN",
    ),
    "deeplabv3plus": Family(
        "deeplabv3plus",
        "ASPP (atrous, pooled branch resized back), decoder Concat",
        128,
        _smp("deeplabv3plus"),
        source="segmentation_models_pytorch DeepLabV3Plus",
    ),
}
