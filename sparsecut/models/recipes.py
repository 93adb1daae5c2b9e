"""Recipes that turn a reference model into an example pruned checkpoint, the way pruning tools leave them.

- `l1-filter`: `torch.nn.utils.prune.ln_structured` (L1, dim 0) on each independently prunable layer; the same
  channel mask on its BatchNorm γ/β and followers, so a removed filter outputs exactly zero. Masks stay in the
  model (`weight_orig` + `weight_mask` in the state_dict), as `prune` leaves them.
- `slimming`: network slimming (Liu et al. 2017): the smallest-|γ| BatchNorm channels get γ = 0 while β stays, so
  those channels output the constant β — not zero.
- `2:4`: magnitude 2:4 masks along the reduction axis of every conv/linear whose reduction length is a multiple of 4.
- `torch-pruning`: physical structured pruning with Torch-Pruning (optional extra): a smaller model, whose
  state_dict is *smaller* than the architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from sparsecut.errors import ExportError
from sparsecut.models.blocks import ChannelGroup
from sparsecut.models.registry import build_model, get_architecture

__all__ = ["RECIPES", "Recipe", "make_pruned_model", "save_state_dict"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    apply: Callable[[nn.Module, float, tuple[int, ...]], nn.Module]
    description: str


def _channel_groups(model: nn.Module) -> list[ChannelGroup]:
    groups = getattr(model, "channel_groups", None)
    if groups is None:
        raise ExportError(f"{type(model).__name__} does not list its channel groups; recipes need a reference model")
    return list(groups())


def _mask_channels(module: nn.Module, keep: torch.Tensor, names: tuple[str, ...] = ("weight", "bias")) -> None:
    """Zero output channels (axis 0) of `module`'s parameters `names` with a saved prune mask."""
    for name in names:
        param = getattr(module, name, None)
        if param is not None:
            mask = keep.view(-1, *[1] * (param.dim() - 1)).expand_as(param).to(param.dtype).clone()
            prune.custom_from_mask(module, name, mask)


def l1_filter(model: nn.Module, amount: float, input_shape: tuple[int, ...]) -> nn.Module:
    for group in _channel_groups(model):
        prune.ln_structured(group.layer, "weight", amount=amount, n=1, dim=0)
        mask: torch.Tensor = getattr(group.layer, "weight_mask")  # noqa: B009 (a buffer prune adds)
        keep = mask.flatten(1).amax(dim=1) > 0
        _mask_channels(group.layer, keep, names=("bias",))
        for module in group.modules[1:]:
            _mask_channels(module, keep)
    return model


def slimming(model: nn.Module, amount: float, input_shape: tuple[int, ...]) -> nn.Module:
    with torch.no_grad():
        for group in _channel_groups(model):
            if group.norm is None:
                continue
            gamma = group.norm.weight
            count = round(amount * gamma.numel())
            if count == 0:
                continue
            gamma[gamma.abs().argsort()[:count]] = 0.0
    return model


def two_four(model: nn.Module, amount: float, input_shape: tuple[int, ...]) -> nn.Module:
    """2 of every 4 consecutive weights along the reduction axis are zeroed (`amount` is fixed by 2:4)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and (module.in_channels // module.groups) % 4 == 0:
            weight = module.weight.detach()  # [K, C/g, R, S]: groups of 4 along C/g for each (k, r, s)
            mask = _two_four_mask(weight.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            prune.custom_from_mask(module, "weight", mask.contiguous())
        elif isinstance(module, nn.Linear) and module.in_features % 4 == 0:
            prune.custom_from_mask(module, "weight", _two_four_mask(module.weight.detach()))
    return model


def _two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of each group of 4 along the last axis."""
    blocks = weight.abs().reshape(-1, 4)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(1, blocks.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape).to(weight.dtype)


def physical(model: nn.Module, amount: float, input_shape: tuple[int, ...]) -> nn.Module:
    """Remove the channels of each channel group for real with Torch-Pruning (L1 magnitude importance)."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise ExportError(
            "the torch-pruning recipe needs Torch-Pruning: pip install 'sparsecut[torch-pruning]'"
        ) from exc
    prunable = {id(m) for g in _channel_groups(model) for m in g.modules}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in prunable]
    example = torch.randn(*input_shape)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=amount, ignored_layers=ignored
    )
    pruner.step()
    return model


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "l1-filter", l1_filter, "torch.nn.utils.prune.ln_structured L1 filters + BN channel masks (zero channels)"
        ),
        Recipe("slimming", slimming, "network slimming: BatchNorm γ = 0, β kept (constant channels)"),
        Recipe("2:4", two_four, "2:4 magnitude masks along the reduction axis (semi-structured)"),
        Recipe("torch-pruning", physical, "physical pruning with Torch-Pruning: a smaller state_dict (optional extra)"),
    ]
}


def make_pruned_model(arch: str, recipe: str, amount: float = 0.5, seed: int = 0) -> nn.Module:
    """Build reference model `arch` and prune it with `recipe`; masks (if any) stay on the modules."""
    if recipe not in RECIPES:
        raise ExportError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if not 0.0 <= amount < 1.0:
        raise ExportError(f"amount must be in [0, 1), got {amount}")
    model = build_model(arch, seed)
    return RECIPES[recipe].apply(model, amount, get_architecture(arch).input_shape).eval()


def save_state_dict(model: nn.Module, path: Path) -> None:
    """Save the model's state_dict (with prune masks, as a pruning script would) atomically."""
    from sparsecut.modelfile import check_output_path

    path = Path(path)
    check_output_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
