"""What the benchmarks on real models share: loading timm on these machines, and a random model that looks
trained where pruning cares."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

TVSHIM = Path(__file__).resolve().parents[2] / "shared" / "tvshim.py"


def model_arguments(parser: argparse.ArgumentParser, models: list[str], iterations: int) -> None:
    """The options every real-model benchmark takes: which models, how long to time, where timm's shim is, JSON."""
    parser.add_argument("--models", nargs="+", default=models, choices=models)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--tvshim", type=Path, default=TVSHIM)
    parser.add_argument("--json", type=Path)


def load_tvshim(path: Path = TVSHIM) -> None:
    """timm needs torchvision, which does not load beside the CPU torch wheel here: ../shared/tvshim.py defines its
    operator schemas first. Imported by path, never by the package; once per process."""
    if "tvshim" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("tvshim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tvshim"] = module  # kept alive: its torch.library definitions go with it
    spec.loader.exec_module(module)


def trained_like_batchnorm(model: torch.nn.Module) -> None:
    """timm zero-initializes the last γ of residual blocks, which makes whole branches dead in a random model —
    not what pruning did. Give every BatchNorm statistics and affine parameters of a trained-looking size."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)


def prune_both_ways(
    model: nn.Module, shape: tuple[int, ...], ignored: list[nn.Module], ratio: float
) -> tuple[nn.Module, nn.Module | None, str]:
    """(masked, physically pruned, why Torch-Pruning failed or ""). The masked copy has the output channels of
    every pruned layer (weights, biases, BatchNorm γ and β) zeroed: what a pruning run leaves before removal."""
    import torch_pruning as tp

    masked = copy.deepcopy(model)
    masked_modules = dict(masked.named_modules())
    names = {id(m): n for n, m in model.named_modules()}
    example = torch.randn(shape)
    try:
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
            ignored_layers=ignored, round_to=None,
        )  # fmt: skip
        with torch.no_grad():
            for group in pruner.step(interactive=True):
                for item in group:
                    dep, idxs = item.dep, item.idxs
                    if getattr(dep.handler, "__name__", "") != "prune_out_channels":
                        continue
                    target = masked_modules.get(names.get(id(dep.target.module), ""))
                    if target is None:
                        continue
                    out_axis = 1 if isinstance(target, nn.ConvTranspose2d) else 0
                    for param in ("weight", "bias"):
                        tensor = getattr(target, param, None)
                        if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1:
                            axis = out_axis if param == "weight" else 0
                            if tensor.shape[axis] > max(idxs):
                                tensor.index_fill_(axis, torch.as_tensor(idxs), 0.0)
                group.prune()
        with torch.no_grad():
            model(example)  # the pruned model must still run
    except Exception as exc:  # Torch-Pruning's own failure is a finding, not a benchmark crash
        masked = copy.deepcopy(model)
        _mask_per_layer(masked, ratio, {names[id(m)] for m in ignored})
        return masked, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    return masked, model, ""


def _mask_per_layer(model: nn.Module, ratio: float, ignored: set[str]) -> None:
    """Without Torch-Pruning's groups: each conv (not depthwise, not ignored) gets its `ratio` lowest-L1 filters
    zeroed, independently — magnitude masking as `torch.nn.utils.prune.ln_structured` does it."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, nn.Conv2d) or name in ignored or module.groups == module.in_channels > 1:
                continue
            norms = module.weight.abs().flatten(1).sum(1)
            weakest = torch.argsort(norms)[: int(ratio * len(norms))]
            module.weight[weakest] = 0.0
            if module.bias is not None:
                module.bias[weakest] = 0.0


def masked_model(name: str, ratio: float) -> tuple[nn.Module, tuple[int, ...]]:
    """A timm model by its timm name (seeded random init, trained-like BatchNorm, its default input size) whose
    channels Torch-Pruning would remove at `ratio` are zeroed; ViT and ConvNeXt: only the MLP hidden neurons
    (their block channels pass a LayerNorm)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    trained_like_batchnorm(model)
    shape = (1, *model.default_cfg["input_size"])
    if name.startswith(("vit", "convnext")):
        layers = (nn.Linear, nn.Conv2d)
        ignored = [m for n, m in model.named_modules() if isinstance(m, layers) and not n.endswith("mlp.fc1")]
    else:
        ignored = [model.get_classifier()]
    masked, _, failure = prune_both_ways(model, shape, ignored, ratio)
    assert not failure, failure
    return masked, shape
