"""Fitting an architecture to a *smaller* state_dict: a model already shrunk physically (e.g. by Torch-Pruning).

Each tensor whose shape differs is replaced by an empty one of the checkpoint's shape, then the layer's own
bookkeeping (`out_channels`, `in_features`, `num_features`, `groups`, …) is set from the new weights so that
`forward` computes with the smaller shapes. Keys must match exactly; only shapes may differ.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparsecut.errors import CheckpointError

__all__ = ["fit_to_state_dict"]


def fit_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Path, arch: str) -> list[str]:
    """Load `state_dict` into `model`, resizing layers where the checkpoint is smaller; returns what was resized."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        raise CheckpointError(f"{source}: does not fit architecture {arch}: {'; '.join(parts)}")

    changed = {k: v for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)}
    resized: list[str] = []
    touched: dict[str, nn.Module] = {}
    for key, tensor in changed.items():
        if tensor.dim() != expected[key].dim():
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)} but architecture {arch} expects "
                f"{tuple(expected[key].shape)} (a different rank cannot be a pruned layer)"
            )
        module_name, _, attr = key.rpartition(".")
        module = model.get_submodule(module_name)
        _replace_tensor(module, attr, tensor)
        touched[module_name] = module
        resized.append(f"{key}: {tuple(expected[key].shape)} → {tuple(tensor.shape)}")
    for name, module in touched.items():
        _update_layer_attributes(module, name, source)
    model.load_state_dict(state_dict, strict=True)
    return resized


def _replace_tensor(module: nn.Module, attr: str, like: torch.Tensor) -> None:
    fresh = torch.empty(like.shape, dtype=like.dtype)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(fresh, requires_grad=old.requires_grad if old is not None else True)
    else:
        module._buffers[attr] = fresh


def _update_layer_attributes(module: nn.Module, name: str, source: Path) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        _update_conv(module, name, source)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        module.num_features = _first_tensor(module).shape[0]
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = tuple(_first_tensor(module).shape)
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = _first_tensor(module).shape[0]
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = module.weight.shape


def _update_conv(conv: nn.modules.conv._ConvNd, name: str, source: Path) -> None:
    """Conv weight is [out, in/groups, *k]. A depthwise conv (groups == in) stays depthwise with fewer channels;
    other grouped convs keep their group count (pruners remove channels equally per group)."""
    out_ch, in_per_group = conv.weight.shape[:2]
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if depthwise:
        multiplier = conv.out_channels // conv.groups
        conv.groups = out_ch // multiplier
        conv.in_channels = conv.groups * in_per_group
    else:
        conv.in_channels = in_per_group * conv.groups
    if out_ch % conv.groups:
        raise CheckpointError(
            f"{source}: {name}.weight has {out_ch} output channels, not divisible by the conv's {conv.groups} groups"
        )
    conv.out_channels = out_ch


def _first_tensor(module: nn.Module) -> torch.Tensor:
    for tensor in [*module._parameters.values(), *module._buffers.values()]:
        if tensor is not None and tensor.dim() > 0:
            return tensor
    raise CheckpointError(f"{type(module).__name__} has no tensors to size it from")


def _first(keys: list[str], count: int = 4) -> str:
    shown = ", ".join(keys[:count])
    return shown + (", …" if len(keys) > count else "")
