"""Reading and writing ONNX files safely: atomic writes, external data, and output-path checks.

Every file sparsecut writes goes through here: it is written under a temporary name in the destination folder
and renamed into place, so a failure never leaves a partial file and never touches the input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from sparsecut.errors import GraphError, OutputPathError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD_BYTES",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "initializer_bytes",
    "load_model",
    "publish",
    "reads_external_data",
    "save_model",
]

log = logging.getLogger(__name__)

INFER_AT_LOAD_BYTES = 256 << 20

# protobuf cannot serialize a message over 2 GiB; stay clear of it with some headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


def check_output_path(output: Path, *inputs: Path) -> None:
    """Refuse an output that cannot be written or would overwrite an input. Raises `OutputPathError`."""
    output = Path(output)
    if output.exists() and output.is_dir():
        raise OutputPathError(f"{output}: is a directory; give a file name")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{output}: folder {parent} is not writable")
    for source in inputs:
        if Path(source).exists() and output.resolve() == Path(source).resolve():
            raise OutputPathError(f"{output}: output is the input file; sparsecut never overwrites its input")


@contextlib.contextmanager
def _staging_dir(destination: Path) -> Iterator[Path]:
    """A temporary folder beside `destination` (same filesystem, so the final rename is atomic)."""
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}.", dir=destination.parent) as tmp:
        yield Path(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    check_output_path(path)
    with _staging_dir(path) as tmp:
        staged = tmp / path.name
        staged.write_bytes(payload)
        os.replace(staged, path)


def reads_external_data(model: ir.Model) -> bool:
    """Whether any weight of the model lives in an external data file (so its output should too)."""
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save_model(
    model: ir.Model,
    path: Path,
    *,
    external_data: bool | None = None,
    check: Callable[[Path], None] | None = None,
) -> bool:
    """Write `model` to `path` atomically; returns whether weights went to `<name>.data` beside it.

    `external_data=None` decides by size: models whose weights approach protobuf's 2 GiB limit get external data.
    `check`, when given, is called with the staged file before it is moved into place; if it raises, nothing is
    written (this is how verification gates every output).
    """
    path = Path(path)
    check_output_path(path)
    if external_data is None:  # near protobuf's limit, weights go to a file of their own
        external_data = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES
    data_name = f"{path.name}.data"
    with _staging_dir(path) as tmp:
        staged = tmp / path.name
        # a small in-flight budget: tensors are written one after another instead of being held all at once
        ir.save(model, staged, external_data=data_name if external_data else None, max_in_flight_bytes=64 << 20)
        if external_data:
            _restore_tensor_labels(model, staged)
        if check is not None:
            check(staged)
        if external_data:
            os.replace(tmp / data_name, path.parent / data_name)
        os.replace(staged, path)
    return external_data


def publish(staged: Path, output: Path) -> None:
    """Move a staged model (and its `.data` file) into place: the data first, so the model never points at
    nothing. The staged file bears the output's name, so its external data reference stays right."""
    staged, output = Path(staged), Path(output)
    if staged.name != output.name:
        raise ValueError(f"staged file {staged.name} must bear the output's name {output.name}")
    data = staged.with_name(f"{staged.name}.data")
    if data.exists():
        os.replace(data, output.with_name(f"{output.name}.data"))
    os.replace(staged, output)


def _restore_tensor_labels(model: ir.Model, path: Path) -> None:
    """onnx-ir drops a tensor's doc string and metadata when it moves the data to an external file; put back the
    ones we set (the 2:4 labels), editing only the small graph file."""

    labels = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is not None and (tensor.doc_string or tensor.metadata_props):
            labels[name] = (tensor.doc_string, dict(tensor.metadata_props))
    if not labels:
        return
    proto = onnx.load(str(path), load_external_data=False)
    for initializer in proto.graph.initializer:
        if initializer.name in labels:
            doc, metadata = labels[initializer.name]
            initializer.doc_string = doc or ""
            del initializer.metadata_props[:]
            for key, text in metadata.items():
                entry = initializer.metadata_props.add()
                entry.key, entry.value = key, text
    onnx.save(proto, str(path))


def load_model(path: Path, infer_shapes: bool = False) -> ir.Model:
    """Load an ONNX file (external data memory-mapped). Raises `GraphError` naming the file and the problem.

    With `infer_shapes`, onnx's C++ shape inference runs on the protobuf as read, before onnx-ir builds its graph:
    the same shapes as `shapes.infer_shapes` later, without serializing the graph back out of Python (0.9 s of
    the 15k-node benchmark). Not for a file whose weights are inside it and big: the C++ call copies the whole
    message; `shapes.infer_shapes` (which leaves weights out) does it later instead."""
    path = Path(path)
    if not path.exists():
        raise GraphError(f"{path}: no such file")
    if path.is_dir():
        raise GraphError(f"{path}: is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)  # external data stays on disk, memory-mapped later
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise GraphError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    if infer_shapes and path.stat().st_size <= INFER_AT_LOAD_BYTES:
        try:
            proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
        except Exception as exc:
            log.warning("%s: shape inference failed (%s); shapes left as they are", path, _first_line(exc))
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise GraphError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    ir.external_data.set_base_dir(model.graph, path.parent)
    _check_external_data(model, path)
    return model


def _check_external_data(model: ir.Model, path: Path) -> None:
    base = path.resolve().parent
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            location = (base / tensor.location).resolve()
            if not location.is_relative_to(base):
                raise GraphError(
                    f"{path}: initializer {value.name!r} points to external data {tensor.location!r} "
                    "outside the model's folder; refusing to read it"
                )
            if not location.exists():
                raise GraphError(f"{path}: external data file {tensor.location!r} is missing")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
