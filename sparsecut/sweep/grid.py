"""What a sweep measures: inputs × precisions × channel modes, each timed on every device named — from a small
TOML file or the command line, checked whole before anything runs.

    inputs = [{path = "r18.pt", arch = "resnet18"}, {path = "yolo.onnx"}]
    precisions = ["fp32", "int8"]
    modes = ["align 8", "measured"]
    devices = ["onnxruntime@local", "openvino@local", "onnxruntime@epyc-avx512"]
    rounds = 10
    iterations = 50

A device is `TARGET@CLASS`: the backend, and the class of machine it runs on — `local` for this machine, or the
name a Ray node gives its device (`sparsecut ray-node`). Every device of one class is one machine's: a class's
cells are timed one at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import tomllib

from sparsecut.errors import InputError
from sparsecut.modelfile import sha256_of
from sparsecut.precision import Precision
from sparsecut.targets.base import TARGETS

__all__ = ["LOCAL", "Device", "Grid", "SweepInput", "load_grid"]

LOCAL = "local"
KEYS = ("inputs", "precisions", "modes", "devices", "rounds", "iterations", "batch", "calibration")
INPUT_KEYS = ("path", "arch", "name")
_MODE = re.compile(r"^(align (\d+)|measured)$")
_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class SweepInput:
    path: Path  # an ONNX file, or a checkpoint with `arch`
    arch: str | None = None
    name: str = ""  # how the table names it (default: the file's stem)

    @property
    def label(self) -> str:
        return self.name or self.path.stem

    @property
    def checkpoint(self) -> bool:
        return self.path.suffix != ".onnx"


@dataclasses.dataclass(frozen=True)
class Device:
    target: str
    device: str  # the machine class: LOCAL, or a Ray node's device name

    def __str__(self) -> str:
        return f"{self.target}@{self.device}"

    @classmethod
    def parse(cls, text: str, where: str) -> Device:
        target, _, device = text.partition("@")
        device = device or LOCAL
        if target not in TARGETS or target == "onnxruntime-genai":
            known = ", ".join(t for t in TARGETS if t != "onnxruntime-genai")
            raise InputError(f"{where}: device {text!r}: unknown target {target!r} (known: {known})")
        if not _CLASS.match(device):
            raise InputError(f"{where}: device {text!r}: a device class is letters, digits, '.', '_' and '-'")
        return cls(target, device)


@dataclasses.dataclass(frozen=True)
class Grid:
    inputs: tuple[SweepInput, ...]
    precisions: tuple[Precision, ...] = (Precision("fp32"),)
    modes: tuple[str, ...] = ("align 8",)
    devices: tuple[Device, ...] = (Device("onnxruntime", LOCAL),)
    rounds: int = 10
    iterations: int = 50
    batch: int = 1
    calibration: Path | None = None  # int8's samples (an .npz by input name); None: random data, said loudly

    def __post_init__(self) -> None:
        if not self.inputs:
            raise InputError("sweep: no inputs (give ONNX files or checkpoints with --arch)")
        for item in self.inputs:
            if not item.path.is_file():
                raise InputError(f"{item.path}: no such file")
            if item.checkpoint and item.arch is None:
                raise InputError(f'{item.path}: a checkpoint needs its architecture (arch = "NAME")')
        labels = [i.label for i in self.inputs]
        if len(set(labels)) != len(labels):
            raise InputError(f"sweep: two inputs are named {sorted(x for x in labels if labels.count(x) > 1)[0]!r}")
        for mode in self.modes:
            match = _MODE.match(mode)
            if match is None or (match.group(2) is not None and int(match.group(2)) < 1):
                raise InputError(f"sweep: mode {mode!r}: 'align N' (N ≥ 1) or 'measured'")
        for precision in self.precisions:
            if precision.kind == "int4":
                raise InputError("sweep: int4 is for decoders; the sweep's precisions are fp32, fp16 and int8")
        if self.rounds < 3:
            raise InputError(f"sweep: rounds {self.rounds}: an interval needs at least 3 interleaved rounds")
        if self.iterations < 1 or self.batch < 1:
            raise InputError("sweep: iterations and batch are positive")
        if self.calibration is not None and not self.calibration.is_file():
            raise InputError(f"{self.calibration}: no such file")

    @property
    def classes(self) -> list[str]:
        return sorted({d.device for d in self.devices})

    def digest(self) -> str:
        """What identifies this grid (its settings and each input's bytes): `--resume` continues only the same."""
        content = {
            "inputs": [[str(i.path), i.arch, i.label, sha256_of(i.path)] for i in self.inputs],
            "precisions": [str(p) for p in self.precisions],
            "modes": list(self.modes),
            "devices": [str(d) for d in self.devices],
            "rounds": self.rounds,
            "iterations": self.iterations,
            "batch": self.batch,
            "calibration": sha256_of(self.calibration) if self.calibration else None,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def load_grid(path: Path) -> Grid:
    """A grid from a TOML file; input paths are relative to it. Unknown keys are refused, naming the key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable TOML file ({str(exc).splitlines()[0]})") from exc
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    inputs = []
    for item in _list(data.get("inputs", []), "inputs", path):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise InputError(f"{path}: each input is a path or {{path = ..., arch = ...}}")
        extra = sorted(set(item) - set(INPUT_KEYS))
        if extra:
            raise InputError(f"{path}: unknown key {extra[0]!r} in an input (known: {', '.join(INPUT_KEYS)})")
        inputs.append(SweepInput((path.parent / str(item["path"])), item.get("arch"), str(item.get("name", ""))))
    return Grid(
        inputs=tuple(inputs),
        precisions=tuple(Precision.parse(str(p)) for p in _list(data.get("precisions", ["fp32"]), "precisions", path)),
        modes=tuple(str(m) for m in _list(data.get("modes", ["align 8"]), "modes", path)),
        devices=tuple(
            Device.parse(str(d), str(path)) for d in _list(data.get("devices", ["onnxruntime"]), "devices", path)
        ),
        rounds=_int(data.get("rounds", 10), "rounds", path),
        iterations=_int(data.get("iterations", 50), "iterations", path),
        batch=_int(data.get("batch", 1), "batch", path),
        calibration=path.parent / str(data["calibration"]) if "calibration" in data else None,
    )


def _list(value: object, key: str, path: Path) -> list[object]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{path}: {key} is a non-empty list")
    return value


def _int(value: object, key: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{path}: {key} is a whole number")
    return value
