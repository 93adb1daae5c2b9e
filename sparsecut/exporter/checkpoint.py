"""Loading checkpoints safely: state_dicts (.pt/.pth, .safetensors), torch.export programs (.pt2), and — only
when the user trusts the file — whole pickled modules."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsecut.errors import CheckpointError
from sparsecut.exporter.ultralytics import image_size, trainer_module
from sparsecut.logs import quieted
from sparsecut.modelfile import sha256_of

__all__ = ["Checkpoint", "load_checkpoint"]

# Where training scripts nest the weights inside a saved dict, in the order we look.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: exactly one of `state_dict`, `module`, `program` is set."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor] | None = None
    module: nn.Module | None = None
    program: torch.export.ExportedProgram | None = None
    input_shape: tuple[int, ...] | None = None  # what the checkpoint records (Ultralytics' training image size)

    @property
    def form(self) -> str:
        if self.program is not None:
            return "torch.export program"
        return "pickled module" if self.module is not None else "state_dict"


def load_checkpoint(path: Path, *, trust: bool = False) -> Checkpoint:
    """Load `path` without running code from it unless `trust` is set. Raises `CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint")
    sha = sha256_of(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return Checkpoint(path, sha, state_dict=_load_safetensors(path))
    if suffix == ".pt2":
        return Checkpoint(path, sha, program=_load_program(path))
    obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        return Checkpoint(path, sha, module=obj)
    trained = trainer_module(obj)  # a training checkpoint (Ultralytics'): the model pickled inside
    if trained is not None:
        return Checkpoint(path, sha, module=trained, input_shape=image_size(obj))
    return Checkpoint(path, sha, state_dict=_find_state_dict(obj, path))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # SafetensorError is not importable as a stable name across versions
        raise CheckpointError(
            f"{path}: not a readable safetensors file, truncated or corrupt ({_one_line(exc)})"
        ) from exc


def _load_program(path: Path) -> torch.export.ExportedProgram:
    # torch's loader logs and warns at length about a file it cannot read: keep that out of the one-line error
    with warnings.catch_warnings(), quieted("torch", logging.CRITICAL), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return torch.export.load(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"{path}: not a readable torch.export program, truncated or corrupt ({_one_line(exc)})"
            ) from exc


def _plain_pickle(path: Path) -> bool:
    """Whether the file is a bare pickle stream (protocol 2 or later), not torch.save's zip archive."""
    with open(path, "rb") as file:
        head = file.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "pickle protocol 5 …" on garbage: the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # only a real pickle refused for the Python objects it names deserves the advice to trust it
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused is None and not _plain_pickle(path):
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (truncated, corrupt or another format)") from exc
        if not trust:  # a real pickle, refused for what it holds: the advice to trust it, and why it is needed
            what = (
                f"holds Python objects ({refused.group(1)}) that only unpickling can restore"
                if refused is not None
                else "is a plain pickle, not torch.save's format, that only unpickling can read"
            )
            raise CheckpointError(
                f"{path}: {what}, and unpickling runs code from the file; if you trust its source, pass "
                "--trust-checkpoint (or save a state_dict with torch.save or safetensors instead)"
            ) from exc
    except Exception as exc:  # zip reader errors, EOF: a truncated or foreign file
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({_one_line(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: unpickling failed ({_one_line(exc)})") from exc


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        return _strip_wrapper_prefix(dict(obj))
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            inner: Any = obj.get(key)
            if _is_tensor_dict(inner):
                return _strip_wrapper_prefix(dict(inner))
            if isinstance(inner, nn.Module):
                return _strip_wrapper_prefix(dict(inner.state_dict()))
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(
            f"{path}: no state_dict found (looked at the top level and under {', '.join(_NESTED_KEYS)}); "
            f"top-level keys: {keys}"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict or a module")


def _strip_wrapper_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel/DistributedDataParallel save every key as `module.<name>`."""
    if all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]
