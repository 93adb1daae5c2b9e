"""Ultralytics checkpoints: the trained model pickled under `ema` or `model` (read only with
--trust-checkpoint: unpickling runs code), prepared for ONNX as Ultralytics' own exporter prepares it — float, eval,
Conv and BatchNorm fused, the detection head in export mode (its decoded output, no NMS), C2f and C3k2 through
`forward_split` (a Split of cv1's output instead of `chunk`) — so that sparsecut exports what `yolo export
format=onnx` would, and reads its split halves. Anchors are computed from the input's size (`dynamic`): the
exporter traces a dynamic batch. Needs the ultralytics package, as unpickling the checkpoint does anyway."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["export_ready", "image_size", "is_ultralytics", "trainer_module"]


def is_ultralytics(model: nn.Module) -> bool:
    return type(model).__module__.startswith("ultralytics.")


def trainer_module(obj: Any) -> nn.Module | None:
    """The model a training checkpoint dict holds, as Ultralytics loads it (its EMA weights where saved)."""
    if not isinstance(obj, dict):
        return None
    for key in ("ema", "model"):
        if isinstance(obj.get(key), nn.Module):
            return obj[key]
    return None


def image_size(obj: Any) -> tuple[int, ...] | None:
    """The input shape Ultralytics trained at (`train_args.imgsz`), as a batch of one."""
    args = obj.get("train_args") if isinstance(obj, dict) else None
    size = args.get("imgsz") if isinstance(args, dict) else None
    if isinstance(size, int) and size > 0:
        return (1, 3, size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return (1, 3, *size)
    return None


def export_ready(model: nn.Module) -> nn.Module:
    from ultralytics.nn.modules import C2f, Detect

    model = model.float().eval()
    fuse = getattr(model, "fuse", None)
    if callable(fuse):
        model = fuse(verbose=False)
    for module in model.modules():  # (attributes set as its exporter sets them)
        if isinstance(module, Detect):
            head: Any = module
            head.export, head.format, head.dynamic, head.shape = True, "onnx", True, None
        elif isinstance(module, C2f):
            block: Any = module
            block.forward = block.forward_split
    return model
