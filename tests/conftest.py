"""Shared fixtures: example pruned checkpoints made once per session by the reference recipes."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hypothesis import settings

from sparsecut.models import make_pruned_model, save_state_dict

# measured decisions keep their latency table in the user cache folder: the tests keep theirs to themselves, and
# remove it when the run ends
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="sparsecut-test-cache-")
atexit.register(functools.partial(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True))

# CI (CI=true) runs every property test derandomized: the same examples on every run, no flaky reds
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`checkpoint_factory(arch, recipe, amount)` → path of a saved state_dict, cached for the session."""
    cache: dict[tuple[str, str, float], Path] = {}
    root = tmp_path_factory.mktemp("checkpoints")

    def make(arch: str, recipe: str = "l1-filter", amount: float = 0.5) -> Path:
        key = (arch, recipe, amount)
        if key not in cache:
            path = root / f"{arch}-{recipe.replace(':', '')}-{amount}.pt"
            save_state_dict(make_pruned_model(arch, recipe, amount), path)
            cache[key] = path
        return cache[key]

    return make


def run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def torch_outputs(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()
