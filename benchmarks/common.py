"""What the benchmarks on real models share: loading timm on these machines, and a random model that looks
trained where pruning cares."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

TVSHIM = Path(__file__).resolve().parents[2] / "shared" / "tvshim.py"


def load_tvshim(path: Path = TVSHIM) -> None:
    """timm needs torchvision, which does not load beside the CPU torch wheel here: ../shared/tvshim.py defines its
    operator schemas first. Imported by path, never by the package."""
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
