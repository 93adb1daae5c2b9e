"""Inputs to run a model on: what the model declares, seeded synthetic arrays, and the user's `.npz`/`.npy`
arrays — checked, not trusted: names, dtypes, shapes, finite values and a size that can be allocated."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from sparsecut.errors import InputError

__all__ = ["MAX_INPUT_ELEMENTS", "InputSpec", "input_specs", "model_input_specs", "read_arrays", "synthetic_inputs"]

MAX_INPUT_ELEMENTS = 1 << 30  # 4 GiB of float32 for one input: beyond that a declared shape is a mistake


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input of a model: two models are comparable only when their inputs agree (batch aside)."""

    name: str
    dtype: str  # numpy's name: float32, int64, …
    shape: tuple[int | str, ...]  # a str is a symbolic dimension

    def same_as(self, other: InputSpec) -> bool:
        return (self.name, self.dtype, self.shape[1:]) == (other.name, other.dtype, other.shape[1:])

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(map(str, self.shape))}]"

    def expected(self) -> str:
        return "×".join("N" if i == 0 or isinstance(d, str) else str(d) for i, d in enumerate(self.shape))


def input_specs(model: onnx.ModelProto | Path) -> list[InputSpec]:
    """The graph inputs a caller feeds (an initializer listed as an input, IR < 4, has a value already)."""
    if isinstance(model, Path):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise InputError(f"{model}: not a readable ONNX model ({type(exc).__name__})") from exc
    weights = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        except Exception:  # an undefined or exotic element type
            dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def model_input_specs(model: ir.Model) -> list[InputSpec]:
    """`input_specs` of a model already in memory."""
    specs = []
    for value in model.graph.inputs:
        if value.name is None or value.is_initializer():
            continue
        if value.shape is None or value.dtype is None:
            raise InputError(f"input {value.name!r} has no declared shape or type; pass real inputs (--data FILE.npz)")
        dims = tuple(d if isinstance(d, int) else (str(d.value) if d.value else "?") for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(value.dtype.numpy()).name, dims))
    return specs


def synthetic_inputs(specs: Sequence[InputSpec], batch: int, seed: int, source: Path) -> dict[str, np.ndarray]:
    """Seeded inputs for every spec (the first axis, symbolic or not, is the batch): normal floats, small ints."""
    if not specs:
        raise InputError(f"{source}: the model has no inputs; there is nothing to feed it")
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dims = [batch, *_fixed(spec, source)]
        if isinstance(spec.shape[0], int) and spec.shape[0] != batch:
            raise InputError(
                f"{source}: input {spec.name!r} has a fixed batch of {spec.shape[0]}; batch {batch} does not fit"
            )
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 8, dims).astype(dtype)
    return feeds


def _fixed(spec: InputSpec, source: Path) -> list[int]:
    """The non-batch dims, refused when symbolic or too large to allocate."""
    dims = []
    for axis, dim in enumerate(spec.shape[1:], start=1):
        if not isinstance(dim, int) or dim <= 0:
            raise InputError(
                f"{source}: input {spec.name!r} has symbolic dimension {dim!r} at axis {axis}; pass real inputs "
                "(--data FILE.npz)"
            )
        dims.append(dim)
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise InputError(
            f"{source}: input {spec.name!r} declares {spec.expected()} = {math.prod(dims):,} elements per sample, "
            f"more than sparsecut allocates ({MAX_INPUT_ELEMENTS:,})"
        )
    return dims


def read_arrays(path: Path, specs: Sequence[InputSpec], option: str) -> dict[str, np.ndarray]:
    """Arrays for every input from an `.npz` (by input name; one array for one input) or an `.npy` (one input),
    first axis = samples; each checked against its spec."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file ({option})")
    try:
        if path.suffix == ".npy":
            arrays = {"": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "Object arrays cannot be loaded" in str(exc):  # numpy refuses them without pickles: say why
            raise InputError(
                f"{path}: holds Python objects (a pickled object array), and loading them would run code from the "
                f"file; {option} takes plain numeric arrays only (numpy.savez of float/int arrays)"
            ) from exc
        raise InputError(f"{path}: not a readable .npz/.npy file (ValueError; {option})") from exc
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz/.npy file ({type(exc).__name__}; {option})") from exc
    if not specs:
        raise InputError(f"{path}: the model has no inputs to feed ({option})")
    if len(specs) == 1 and len(arrays) == 1:
        chosen = {specs[0].name: next(iter(arrays.values()))}
    else:
        missing = [s.name for s in specs if s.name not in arrays]
        if missing:
            raise InputError(
                f"{path}: no array for input(s) {', '.join(missing)} (it holds: {', '.join(arrays) or 'nothing'})"
            )
        chosen = {s.name: arrays[s.name] for s in specs}
    for spec in specs:
        _check_array(path, spec, chosen[spec.name])
    return chosen


def _check_array(path: Path, spec: InputSpec, array: np.ndarray) -> None:
    where = f"{path}: array {spec.name!r}"
    if array.dtype.name != spec.dtype:
        raise InputError(f"{where} is {array.dtype.name}; the model expects {spec.dtype} {spec.expected()}")
    if array.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != a for d, a in zip(spec.shape[1:], array.shape[1:], strict=False)
    ):
        raise InputError(f"{where} has shape {'×'.join(map(str, array.shape))}; the model expects {spec.expected()}")
    if array.shape[0] == 0:
        raise InputError(f"{where} holds no samples (its first axis is 0)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{where} holds NaN or infinity; inputs must be finite")
