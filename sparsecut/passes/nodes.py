"""Reading onnx-ir nodes: their attributes with ONNX's defaults, and the constants their inputs hold.

One small module that every pass uses, so that "is this input a constant, and what is it" has one answer."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = [
    "attr_float",
    "attr_int",
    "attr_ints",
    "bias_array",
    "constant_array",
    "conv_padded",
    "is_constant",
    "per_channel",
    "reduce_axes",
    "same_dim",
    "shape_element",
    "single_bias_add",
    "slice_bounds",
    "source_name",
    "tensor_array",
    "weight_array",
]


# `name in node.attributes` first: the mapping's `get` finds a missing name by catching a KeyError (0.7 µs, and
# most attributes asked for are absent, their defaults in use).


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attributes = node.attributes
    return attributes[name].as_int() if name in attributes else default


def attr_float(node: ir.Node, name: str, default: float) -> float:
    attributes = node.attributes
    return attributes[name].as_float() if name in attributes else default


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attributes = node.attributes
    return list(attributes[name].as_ints()) if name in attributes else None


_ARRAY = "sparsecut.array"  # a small file-backed tensor's array, kept in its (unsaved) meta
_CACHED_BYTES = 64 << 10


def tensor_array(tensor: ir.TensorProtocol) -> np.ndarray:
    """`tensor.numpy()`; for a small tensor read from a file, converted once (each conversion copies its bytes out
    of the protobuf: ~6 µs, paid by every pass that reads it — 15k weights, several passes). The array is read-only
    (numpy's view of immutable bytes), so sharing it is safe."""
    cls = type(tensor)
    if cls is ir.Tensor or (cls is not ir.TensorProtoTensor and not isinstance(tensor, ir.TensorProtoTensor)):
        return tensor.numpy()  # (the type first: a failing isinstance against onnx-ir's classes costs 0.5 µs)
    meta = tensor.meta
    if _ARRAY in meta:  # (not `meta.get`: the store's `get` finds a missing key by catching a KeyError)
        return meta[_ARRAY]
    array = tensor.numpy()
    if array.nbytes <= _CACHED_BYTES and not array.flags.writeable:
        meta[_ARRAY] = array
    return array


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's tensor when it is an initializer or a Constant node's output; None when it is computed."""
    if value is None:
        return None
    if value.const_value is not None:
        return tensor_array(value.const_value)
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        for name, attr in producer.attributes.items():
            if name == "value":
                return attr.as_tensor().numpy()
            if name in ("value_float", "value_int"):
                return np.asarray(attr.value)
            if name in ("value_floats", "value_ints"):
                return np.asarray(list(attr.value))
    return None


def is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def weight_array(value: ir.Value) -> np.ndarray | None:
    """A constant weight, looking through a Transpose of an initializer (how dynamo exports nn.Linear)."""
    array = constant_array(value)
    if array is not None:
        return array
    producer = value.producer()
    if producer is not None and producer.op_type == "Transpose":
        inner = constant_array(producer.inputs[0])
        if inner is not None:
            perm = attr_ints(producer, "perm") or list(reversed(range(inner.ndim)))
            return np.transpose(inner, perm)
    return None


def source_name(value: ir.Value) -> str:
    """The name a user knows a weight by: the initializer's, also behind dynamo's Transpose of a Linear weight."""
    producer = value.producer()
    if (
        value.const_value is None
        and producer is not None
        and producer.op_type == "Transpose"
        and producer.inputs[0] is not None
    ):
        return producer.inputs[0].name or "?"
    return value.name or "?"


def bias_array(node: ir.Node, index: int, count: int) -> np.ndarray | None:
    """The node's bias input as `count` float64 values (zeros when absent); None when computed or oddly shaped."""
    if len(node.inputs) <= index or node.inputs[index] is None:
        return np.zeros(count)
    array = constant_array(node.inputs[index])
    if array is None or array.size not in (1, count):
        return None
    return np.broadcast_to(np.asarray(array, np.float64).reshape(-1), (count,)).copy()


def per_channel(array: np.ndarray, axis: int, count: int) -> np.ndarray | None:
    """A constant operand as one value per channel, or None when it also varies along other axes."""
    array = np.asarray(array, np.float64)
    if array.size == 1:
        return np.full(count, float(array.reshape(-1)[0]))
    if axis < 0 or array.shape[axis] not in (1, count):
        return None
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    if not np.all(moved == moved[:, :1]):
        return None
    return np.broadcast_to(moved[:, 0], (count,)).copy()


def conv_padded(node: ir.Node) -> bool:
    """Whether a Conv or pool pads its input (explicitly or by auto_pad)."""
    attributes = node.attributes
    if "auto_pad" in attributes and attributes["auto_pad"].as_string() not in ("NOTSET", "VALID"):
        return True
    return "pads" in attributes and any(attributes["pads"].as_ints())


def reduce_axes(node: ir.Node, rank: int) -> set[int] | None:
    """The axes a Reduce* node reduces (input at opset 18, attribute before); None when computed or none."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        if array is None:
            return None
        axes = [int(a) for a in array.reshape(-1)]
    else:
        axes = list(attr_ints(node, "axes") or [])
    if not axes:
        return None if attr_int(node, "noop_with_empty_axes", 0) else set(range(rank))
    return {a % rank for a in axes}


def slice_bounds(node: ir.Node, rank: int, axis: int) -> tuple[int, int] | str | None:
    """(start, end) of a step-1 Slice on `axis`, "untouched" when it slices other axes only, None otherwise."""
    arrays = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
    if len(arrays) < 2 or arrays[0] is None or arrays[1] is None:
        return None
    if any(v is not None and a is None for v, a in zip(node.inputs[3:5], arrays[2:4], strict=False)):
        return None
    starts, ends = arrays[0].reshape(-1), arrays[1].reshape(-1)
    axes_array = arrays[2] if len(arrays) > 2 else None
    steps_array = arrays[3] if len(arrays) > 3 else None
    axes = [int(a) % rank for a in (axes_array.reshape(-1) if axes_array is not None else range(len(starts)))]
    if axis not in axes:
        return "untouched"
    i = axes.index(axis)
    if steps_array is not None and int(steps_array.reshape(-1)[i]) != 1:
        return None
    start, end = int(starts[i]), int(ends[i])
    if start < 0 or end < 0:
        return None  # counted from the end: fine to compute, but not worth the risk of an off-by-one
    return start, min(end, 2**62)


def single_bias_add(y: ir.Value, n: int) -> ir.Node | None:
    """The `Add(y, b)` right after a MatMul whose constant b is a per-column bias (nn.Linear as dynamo exports it)."""
    uses = list(y.uses())
    if len(uses) != 1 or y.is_graph_output():
        return None
    node = uses[0].node
    if node.op_type != "Add":
        return None
    other = node.inputs[1 - uses[0].idx]
    array = constant_array(other)
    if array is None or array.ndim != 1 or array.shape[0] != n:
        return None
    return node


def shape_element(shape_value: ir.Value, position: int) -> tuple[str, Any] | None:
    """Where element `position` of a Reshape's shape comes from: a constant we can edit ("const", (value, index)).
    None when it cannot be followed, or when it is a piece of a Concat whose result another node shares."""
    array = constant_array(shape_value)
    if array is not None:  # a shared constant is fine: the rewrite gives the node a copy of its own
        return ("const", (shape_value, position))
    if len(shape_value.uses()) != 1:
        return None
    producer = shape_value.producer()
    if producer is not None and producer.op_type == "Identity" and producer.inputs[0] is not None:
        return shape_element(producer.inputs[0], position)  # (the shape the Identity copies)
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for piece in producer.inputs:
        if piece is None or piece.shape is None or len(piece.shape) != 1 or not isinstance(piece.shape[0], int):
            return None
        length = piece.shape[0]
        if offset <= position < offset + length:
            return ("const", (piece, position - offset)) if constant_array(piece) is not None else None
        offset += length
    return None


def same_dim(a: object, b: object) -> bool:
    """Equal sizes, or two symbolic ones (a batch that a Reshape's -1 or 0 carries over gets a fresh name)."""
    return a == b if isinstance(a, int) or isinstance(b, int) else True
