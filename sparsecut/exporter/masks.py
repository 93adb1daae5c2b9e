"""Folding prune masks into weights: `w = w_orig · w_mask`, as `torch.nn.utils.prune` computes it in forward."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["fold_mask_keys", "remove_prune_reparametrizations"]


def fold_mask_keys(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Replace every `<p>_orig` / `<p>_mask` pair by `<p> = orig · mask` under the original parameter name.

    Returns the new state_dict and the folded parameter names. A `_orig` without its `_mask` (or the reverse) is
    left alone, so the architecture's key check reports it.
    """
    folded: dict[str, torch.Tensor] = {}
    names: list[str] = []
    for key, value in state_dict.items():
        if key.endswith("_orig") and f"{key[:-5]}_mask" in state_dict:
            name = key[:-5]
            folded[name] = value * state_dict[f"{name}_mask"].to(value.dtype)
            names.append(name)
        elif key.endswith("_mask") and f"{key[:-5]}_orig" in state_dict:
            continue
        else:
            folded[key] = value
    return folded, names


def remove_prune_reparametrizations(model: nn.Module) -> list[str]:
    """Make pruning permanent on a live module (`prune.remove`): the parameter becomes `orig · mask`."""
    names: list[str] = []
    for module_name, module in model.named_modules():
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        for hook in hooks:
            prune.remove(module, hook._tensor_name)
            names.append(f"{module_name}.{hook._tensor_name}" if module_name else hook._tensor_name)
    return names
