"""Reading and writing ONNX files safely: atomic writes, external data, and output-path checks.

Every file sparsecut writes goes through here: it is written under a temporary name in the destination folder
and renamed into place, so a failure never leaves a partial file and never touches the input.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeGuard

import numpy as np
import onnx
import onnx_ir as ir

from sparsecut import shapes
from sparsecut.errors import GraphError, OutputPathError
from sparsecut.precision import FP32, Precision

__all__ = [
    "EXTERNAL_DATA_THRESHOLD_BYTES",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "edit_model_file",
    "elements_of_type",
    "graph_digest",
    "graph_precision",
    "initializer_bytes",
    "input_sidecars",
    "is_external",
    "load_model",
    "publish",
    "reads_external_data",
    "same_file",
    "save_model",
    "tensor_bytes",
    "tensor_elements",
    "tensor_rank",
    "without_added_shapes",
]

log = logging.getLogger(__name__)

INFER_AT_LOAD_BYTES = 256 << 20

# protobuf cannot serialize a message over 2 GiB; stay clear of it with some headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_digest(path: Path) -> str:
    """The SHA-256 of an ONNX file's computation: its graph and weights (external data read in), its metadata (the
    options that built it) left out. Equal digests, the same graph."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def check_output_path(output: Path, *inputs: Path) -> None:
    """Refuse an output that cannot be written, is not a plain file, or shares a file with an input or with a
    file an input reads (its external data). Raises `OutputPathError`."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.exists():
        raise OutputPathError(f"{output}: folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"{output}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"{output}: folder {parent} is not writable")
    # an ONNX file may put its weights into `<name>.data` beside it: that file is written too
    written = [output, *([output.with_name(f"{output.name}.data")] if output.suffix == ".onnx" else [])]
    for path in written:
        if path.is_symlink():
            raise OutputPathError(f"{path}: is a symbolic link; sparsecut replaces only regular files")
        if path.exists():
            if path.is_dir():
                raise OutputPathError(f"{path}: is a directory; give a file name")
            if not stat.S_ISREG(path.stat().st_mode):
                raise OutputPathError(f"{path}: is not a regular file (a device, FIFO or socket); give a file name")
        for source in inputs:
            for used in (Path(source), *input_sidecars(Path(source))):
                if same_file(path, used):
                    what = "the input" if used == Path(source) else f"external data of the input {source}"
                    raise OutputPathError(f"{path}: is {what}; sparsecut never overwrites its input")


def same_file(a: Path, b: Path) -> bool:
    """The same file: one real path, or one inode (hard links)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        sa, sb = Path(a).stat(), Path(b).stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def input_sidecars(path: Path) -> list[Path]:
    """The files an ONNX input reads besides itself (external data), as its own header names them."""
    if path.suffix != ".onnx" or not path.is_file():
        return []
    version = path.stat()
    names = _sidecar_names(str(path.resolve()), version.st_ino, version.st_size, version.st_mtime_ns)
    return [path.parent / location for location in names]


@functools.lru_cache(maxsize=16)
def _sidecar_names(path: str, inode: int, size: int, mtime_ns: int) -> tuple[str, ...]:
    """The external data locations the file names, read once per version of the file (its inode, size and time
    of change in the key): every output path checked against one input — `advise`'s 60 probes of ResNet-18 —
    parsed its 46 MB anew (3 s)."""
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not readable: the command reading it will say so
        return ()
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return tuple(sorted(locations))


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


_IN_MEMORY = (ir.Tensor, ir.TensorProtoTensor)


def is_external(tensor: ir.TensorProtocol | None) -> TypeGuard[ir.ExternalTensor]:
    """Whether `tensor` reads its data from an external file. The usual in-memory classes are ruled out by their
    type: `isinstance` against onnx-ir's tensor classes goes through typing's protocol check when it fails
    (0.5 µs; every weight of a 15k-node graph is asked several times)."""
    return type(tensor) not in _IN_MEMORY and isinstance(tensor, ir.ExternalTensor)


def reads_external_data(model: ir.Model) -> bool:
    """Whether any tensor of the model (a weight, a Constant node's value) lives in an external data file (so its
    output should too)."""
    return any(is_external(tensor) for tensor in _all_tensors(model.graph))


def initializer_bytes(model: ir.Model) -> int:
    return sum(tensor_bytes(v.const_value) for v in model.graph.initializers.values() if v.const_value is not None)


def tensor_elements(tensor: ir.TensorProtocol) -> int:
    """A tensor's element count, read from its storage where it has one: a tensor read from a file builds a new
    `ir.Shape` each time its shape is asked (15k weights asked four times: 0.3 s)."""
    raw = getattr(tensor, "raw", None)
    if isinstance(raw, np.ndarray):
        return int(raw.size)
    if isinstance(raw, onnx.TensorProto):
        return math.prod(raw.dims)
    return int(tensor.size)


def elements_of_type(tensor: ir.TensorProtocol, dtypes: frozenset[ir.DataType], min_rank: int = 0) -> int:
    """`tensor_elements` when the tensor's type is one of `dtypes` and its rank at least `min_rank`, else 0 — read
    from the storage where there is one (a tensor read from a file makes its `dtype` anew on every ask too)."""
    raw = getattr(tensor, "raw", None)
    if isinstance(raw, onnx.TensorProto):
        ok = raw.data_type in dtypes and len(raw.dims) >= min_rank  # (DataType is an IntEnum: codes compare)
        return math.prod(raw.dims) if ok else 0
    if tensor.dtype not in dtypes or tensor_rank(tensor) < min_rank:
        return 0
    return tensor_elements(tensor)


def tensor_rank(tensor: ir.TensorProtocol) -> int:
    raw = getattr(tensor, "raw", None)
    if isinstance(raw, np.ndarray):
        return raw.ndim
    if isinstance(raw, onnx.TensorProto):
        return len(raw.dims)
    return len(tensor.shape)


def tensor_bytes(tensor: ir.TensorProtocol) -> int:
    return math.ceil(tensor.dtype.itemsize * tensor_elements(tensor))


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
    _raise_ir_version_for_initializers(model)
    data_name = f"{path.name}.data"
    with _staging_dir(path) as tmp:
        staged = tmp / path.name
        if model.meta.get(EXTERNAL_ATTRIBUTES, True):  # (a model not loaded here is looked at)
            _inline_attribute_tensors(model.graph)
        if external_data:
            # a small in-flight budget: tensors are written one after another instead of being held all at once
            ir.save(model, staged, external_data=data_name, max_in_flight_bytes=64 << 20)
            _restore_tensor_labels(model, staged)
        elif path.suffix == ".onnx":
            # what ir.save does here, less onnx.save's look at every tensor for data to move out to a file (there
            # is none: onnx-ir writes no such tensor) — 30 ms at 15k weights, a seventh of the whole write
            staged.write_bytes(ir.to_proto(model).SerializeToString())
        else:  # onnx chooses the format by the suffix (.json, .textproto, …)
            ir.save(model, staged)
        if check is not None:
            check(staged)
        if external_data:
            os.replace(tmp / data_name, path.parent / data_name)
        os.replace(staged, path)
    return external_data


def _raise_ir_version_for_initializers(model: ir.Model) -> None:
    """IR 3 required every initializer to be a graph input too; IR 4 lifted that. A model read as IR 3 whose
    initializers stopped being inputs (read as constants, or new ones added by a pass) is written as IR 4, the
    first version whose checker accepts it — onnxruntime ran it either way, the ONNX checker did not."""
    if model.ir_version is not None and model.ir_version < 4:
        inputs = set(model.graph.inputs)
        if any(value not in inputs for value in model.graph.initializers.values()):
            model.ir_version = 4


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


def edit_model_file(path: Path, edit: Callable[[onnx.ModelProto], None]) -> None:
    """Apply `edit` to the graph file at `path` in place, leaving its external data file as it is (for small
    edits to a staged file: metadata, doc strings)."""
    proto = onnx.load(str(path), load_external_data=False)
    edit(proto)
    onnx.save(proto, str(path))


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

    def relabel(proto: onnx.ModelProto) -> None:
        for initializer in proto.graph.initializer:
            if initializer.name in labels:
                doc, metadata = labels[initializer.name]
                initializer.doc_string = doc or ""
                del initializer.metadata_props[:]
                for key, text in metadata.items():
                    entry = initializer.metadata_props.add()
                    entry.key, entry.value = key, text

    edit_model_file(path, relabel)


INTERMEDIATE_SHAPES = "sparsecut.intermediate_shapes"  # model.meta: whether its file stored intermediate shapes
EXTERNAL_ATTRIBUTES = "sparsecut.external_attributes"  # model.meta: a tensor attribute is read from external data


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
    had_shapes = len(proto.graph.value_info) > 0
    inferred: shapes.Shapes = {}
    if infer_shapes and path.stat().st_size <= INFER_AT_LOAD_BYTES:
        try:
            proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
            inferred = shapes.take_shapes(proto.graph)  # set below, faster than onnx-ir would read them
        except Exception as exc:
            log.warning("%s: shape inference failed (%s); shapes left as they are", path, _first_line(exc))
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise GraphError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    shapes.apply_shapes(model.graph, inferred, force=True)
    tensors, attributes = _tensors_and_attributes(model.graph)
    model.meta[EXTERNAL_ATTRIBUTES] = _set_base_dir(tensors, attributes, path.parent)
    _check_external_data(tensors, attributes, path)
    model.meta[INTERMEDIATE_SHAPES] = had_shapes
    return model


@contextlib.contextmanager
def without_added_shapes(model: ir.Model) -> Iterator[None]:
    """Inside the block, the model has no shapes its file would not store: none of intermediate tensors when the
    input file stored none (an output keeps the input's style), and never the value info onnx-ir would write for
    every initializer (it restates the tensor's own type and shape). Put back on leaving. Faster to write and to
    load: 15k value infos cost a third of a second to write, and onnxruntime a tenth to read."""
    kept = set(model.graph.outputs) | set(model.graph.inputs)
    values = list(model.graph.initializers.values())
    if not model.meta.get(INTERMEDIATE_SHAPES, True):
        values += [value for node in model.graph for value in node.outputs]
    taken = [(value, value.shape, value.type) for value in values if value not in kept]
    for value, _, _ in taken:
        value.shape = None
        value.type = None
    try:
        yield
    finally:
        for value, shape, type_ in taken:
            value.type = type_
            value.shape = shape


def _all_tensors(graph: ir.Graph) -> list[ir.TensorProtocol]:
    """Every tensor of the graph and its subgraphs: initializers and tensor attributes (Constant nodes)."""
    tensors, attributes = _tensors_and_attributes(graph)
    return tensors + [tensor for _, attr in attributes for tensor in _values(attr)]


def _tensors_and_attributes(graph: ir.Graph) -> tuple[list[ir.TensorProtocol], list[tuple[ir.Node, ir.Attr]]]:
    """The initializers' tensors of the graph and its subgraphs, and every (node, tensor attribute) in them."""
    tensors = [value.const_value for value in graph.initializers.values() if value.const_value is not None]
    attributes = []
    for node in graph:
        if not node.attributes:  # most nodes: a plain check is cheaper than onnx-ir's generic walk (15k nodes)
            continue
        for attr in node.attributes.values():
            if attr.is_ref() or attr.value is None:
                continue
            if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
                attributes.append((node, attr))
            elif attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                for subgraph in [attr.value] if attr.type is ir.AttributeType.GRAPH else attr.value:
                    inner_tensors, inner_attributes = _tensors_and_attributes(subgraph)
                    tensors += inner_tensors
                    attributes += inner_attributes
    return tensors, attributes


def _values(attr: ir.Attr) -> list[ir.TensorProtocol]:
    return [attr.value] if attr.type is ir.AttributeType.TENSOR else list(attr.value)


def _inline_attribute_tensors(graph: ir.Graph) -> None:
    """Tensor attributes read from an external data file are written into the graph: onnx-ir moves only
    initializers to the output's data file, and the reference would point at the input's file."""
    for node, attr in _tensors_and_attributes(graph)[1]:
        values = _values(attr)
        if not any(is_external(t) for t in values):
            continue
        inline = [ir.Tensor(t.numpy(), name=t.name) if is_external(t) else t for t in values]
        node.attributes[attr.name] = (
            ir.AttrTensor(attr.name, inline[0])
            if attr.type is ir.AttributeType.TENSOR
            else ir.AttrTensors(attr.name, inline)
        )


def _set_base_dir(tensors: list[ir.TensorProtocol], attributes: list[tuple[ir.Node, ir.Attr]], base: Path) -> bool:
    """onnx-ir's `set_base_dir` for a graph's `_tensors_and_attributes`: external tensors find their files from the
    model's folder. Returns whether a tensor attribute is one (see `_inline_attribute_tensors`)."""
    in_attributes = [tensor for _, attr in attributes for tensor in _values(attr)]
    for tensor in tensors + in_attributes:
        if is_external(tensor):
            tensor.base_dir = base
    return any(is_external(tensor) for tensor in in_attributes)


def _check_external_data(
    tensors: list[ir.TensorProtocol], attributes: list[tuple[ir.Node, ir.Attr]], path: Path
) -> None:
    """Every tensor read from an external file — a weight, or a Constant node's value (a graph's
    `_tensors_and_attributes`) — reads inside the model's folder, from a file that exists and is long enough.
    Raises `GraphError`."""
    base = path.resolve().parent
    sizes: dict[Path, int] = {}
    named = [(f"initializer {t.name!r}", t) for t in tensors]
    named += [(f"tensor {t.name!r} of {node.op_type} {node.name!r}", t) for node, a in attributes for t in _values(a)]
    for what, tensor in named:
        if is_external(tensor):
            location = (base / tensor.location).resolve()
            if not location.is_relative_to(base):
                raise GraphError(
                    f"{path}: {what} points to external data {tensor.location!r} "
                    "outside the model's folder; refusing to read it"
                )
            if not location.exists():
                raise GraphError(f"{path}: external data file {tensor.location!r} is missing")
            end = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
            if (tensor.offset or 0) < 0 or end > sizes.setdefault(location, location.stat().st_size):
                raise GraphError(
                    f"{path}: external data file {tensor.location!r} is truncated or does not match the model "
                    f"({what} needs bytes up to {end:,}, the file has {sizes[location]:,})"
                )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def graph_precision(path: Path) -> Precision:
    """What the graph computes in: int8 when it has Q/DQ, fp16 when its weights are half, else fp32 (an int8
    graph's format is not read back: the precision is said by its kind)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise GraphError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops or any(o.startswith("QLinear") for o in ops):
        return Precision("int8")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return Precision("fp16")
    return FP32
