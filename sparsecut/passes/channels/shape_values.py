"""Shape arithmetic, entry by entry: what a computed shape tensor (a Reshape target, a Resize's sizes, a Pad's
pads) holds, as far as channel removal is concerned.

Exporters compute shapes at run time: the TorchScript exporter writes `x.view(B, C, -1)` as Shape → Gather →
Unsqueeze → Concat, `F.pad`'s pads as arithmetic on Shape(x)[2:] reshaped, reversed and transposed into ONNX's
order, `F.interpolate(x, size=skip.shape[2:])` as a Concat of two Shape slices. A channel rule must know which
entries of such a tensor are fixed numbers, which are exactly the channel count of some tensor (and so follow
that count when channels go), and which were computed from channel counts in a way that removal would change.

Every entry of a *shape value* — a tensor of rank ≤ 1 with at most `MAX_ENTRIES` elements, computed from Shape or
Size outputs and constants only — is one of:

- a number: fixed whatever channels go (a constant, a static spatial size, arithmetic on those);
- `Dim(t, a)`: exactly t's channel count (`Shape(t)[a]`, a being t's channel axis), moved around unchanged;
- `Computed(dims)`: anything else, computed from the channel counts `dims` (none: from a symbolic size such as
  the batch, or from ops this module does not evaluate).

Values are evaluated on demand and remembered: the walk asks about a node's shape inputs when it reaches the node,
when the channel axes of everything upstream are known.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from sparsecut.passes.nodes import attr_int, attr_ints, constant_array

__all__ = ["MAX_ENTRIES", "Computed", "Dim", "ShapeValues", "is_shape_value"]

MAX_ENTRIES = 64


@dataclasses.dataclass(frozen=True)
class Dim:
    """Exactly the channel count of `value` (its axis `axis`)."""

    value: ir.Value
    axis: int


@dataclasses.dataclass(frozen=True)
class Computed:
    """A number computed from the channel counts `dims` (or from nothing this module can name)."""

    dims: frozenset[Dim] = frozenset()


UNKNOWN = Computed()
Entries = np.ndarray  # dtype object: int | float | Dim | Computed per element, shaped as the value

# computed elementwise on known numbers; an unknown operand makes the entry Computed
_ARITHMETIC: dict[str, Callable[..., object]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": lambda a, b: np.trunc(np.divide(a, b)) if _integral(a, b) else np.divide(a, b),
    "Mod": np.mod,
    "Max": np.maximum,
    "Min": np.minimum,
    "Pow": np.power,
    "Neg": np.negative,
    "Abs": np.abs,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Sqrt": np.sqrt,
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "Not": np.logical_not,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Where": np.where,
}


_REDUCTIONS: dict[str, Callable[..., Any]] = {
    "ReduceProd": np.prod,
    "ReduceSum": np.sum,
    "ReduceMax": np.max,
    "ReduceMin": np.min,
}


def _integral(*values: object) -> bool:
    return all(isinstance(v, (int, np.integer)) for v in values)


def is_shape_value(value: ir.Value) -> bool:
    """Whether `value` is small enough to be a shape value: rank ≤ 1, at most MAX_ENTRIES elements, both static."""
    shape = value.shape
    if shape is None or len(shape) > 1:
        return False
    return len(shape) == 0 or (isinstance(shape[0], int) and shape[0] <= MAX_ENTRIES)


class ShapeValues:
    """Entries of shape values. `channel_axis(t)` is t's channel axis, or None where t carries no channels the
    analysis may remove (its static sizes are then fixed numbers)."""

    def __init__(self, channel_axis: Callable[[ir.Value], int | None]) -> None:
        self._channel_axis = channel_axis
        self._memo: dict[ir.Value, Entries | Computed] = {}

    def of(self, value: ir.Value) -> Entries | Computed:
        """The entries of `value` (an object array of its shape), or one Computed where they cannot be told apart."""
        found = self._memo.get(value)
        if found is None:
            found = self._memo[value] = self._evaluate(value)
        return found

    def dims(self, value: ir.Value) -> frozenset[Dim]:
        """Every channel count `value` was computed from."""
        return _dims(self.of(value))

    def entry(self, value: ir.Value, position: int) -> int | float | Dim | Computed:
        """Entry `position` of a 1-D shape value."""
        found = self.of(value)
        if isinstance(found, Computed) or found.ndim != 1 or not -len(found) <= position < len(found):
            return Computed(_dims(found))
        entry: int | float | Dim | Computed = found[position]
        return entry

    # ------------------------------------------------------------------------------------------ evaluation
    def _evaluate(self, value: ir.Value) -> Entries | Computed:
        array = constant_array(value)
        if array is not None:
            return _known(array) if array.size <= MAX_ENTRIES and array.ndim <= 1 else UNKNOWN
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx"):
            return UNKNOWN
        try:
            found = self._node(node, value)
        except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError):
            found = None  # arithmetic the exporter never writes (empty slices, bad axes): not evaluated
        if found is None:
            inputs = [self.of(v) for v in node.inputs if v is not None and is_shape_value(v)]
            return Computed(frozenset().union(*(_dims(i) for i in inputs)))
        if not isinstance(found, Computed) and (value.shape is None or found.shape != tuple(value.shape)):
            return Computed(_dims(found))  # not the shape inference says: trust neither
        return found

    def _inputs(self, node: ir.Node) -> list[Entries | Computed | None]:
        return [self.of(v) if v is not None else None for v in node.inputs]

    def _node(self, node: ir.Node, value: ir.Value) -> Entries | Computed | None:
        op = node.op_type
        if op == "Shape":
            return self._shape(node)
        if op == "Size":
            return self._size(node)
        ins = self._inputs(node)
        if op in _ARITHMETIC:
            return _elementwise(op, [i for i in ins if i is not None])
        if any(isinstance(i, Computed) for i in ins):
            return None  # a movement op on entries that cannot be told apart
        arrays: list[Entries] = [i for i in ins if isinstance(i, np.ndarray)]
        data = arrays[0] if arrays else None
        if op == "ConstantOfShape":
            fill = node.attributes.get("value")
            number = fill.as_tensor().numpy().reshape(-1)[0].item() if fill is not None else 0
            return np.full(tuple(_ints(data).tolist()), number, dtype=object)
        if op == "Range":
            start, limit, delta = (_ints(i).item() for i in ins[:3])
            return _known(np.arange(start, limit, delta))
        if data is None:
            return None
        if op == "Identity":
            return data
        if op == "Cast":
            return _cast(data, ir.DataType(attr_int(node, "to", 1)))
        if op == "Concat":
            return np.concatenate(arrays, axis=attr_int(node, "axis", 0))
        if op == "Gather":  # (a 0-d index hands back the entry itself: kept as a 0-d array of entries)
            return np.asarray(np.take(data, _ints(ins[1]), axis=attr_int(node, "axis", 0)), dtype=object)
        if op == "Unsqueeze":
            return np.expand_dims(data, tuple(_ints(ins[1]).reshape(-1).tolist()))
        if op == "Squeeze":
            axes = tuple(_ints(ins[1]).reshape(-1).tolist()) if len(ins) > 1 and ins[1] is not None else None
            return np.squeeze(data, axes)
        if op == "Reshape":
            target = [int(d) if d != 0 else data.shape[i] for i, d in enumerate(_ints(ins[1]).tolist())]
            return data.reshape(target)
        if op == "Transpose":
            return np.transpose(data, attr_ints(node, "perm"))
        if op == "Slice":
            return _slice(data, ins)
        if op in _REDUCTIONS:
            return _reduce(op, data, node)
        return None

    def _shape(self, node: ir.Node) -> Entries | Computed:
        x = node.inputs[0]
        if x is None or x.shape is None:
            return UNKNOWN
        rank = len(x.shape)
        start, end = attr_int(node, "start", 0), attr_int(node, "end", rank)
        start, end = max(0, start + rank if start < 0 else start), min(rank, end + rank if end < 0 else end)
        channel = self._channel_axis(x)
        entries: list[int | Dim | Computed] = []
        for axis in range(start, end):
            dim = x.shape[axis]
            if axis == channel:
                entries.append(Dim(x, axis))
            else:
                entries.append(dim if isinstance(dim, int) else UNKNOWN)
        out = np.empty(len(entries), dtype=object)
        out[:] = entries
        return out

    def _size(self, node: ir.Node) -> Entries | Computed:
        x = node.inputs[0]
        if x is None or x.shape is None:
            return UNKNOWN
        channel = self._channel_axis(x)
        if channel is not None:
            return _scalar(Computed(frozenset({Dim(x, channel)})))
        if all(isinstance(d, int) for d in x.shape):
            return _scalar(math.prod(d for d in x.shape if isinstance(d, int)))
        return UNKNOWN


def _known(array: np.ndarray) -> Entries:
    out = np.empty(array.shape, dtype=object)
    out[...] = array.tolist() if array.ndim else array.item()
    return out


def _scalar(entry: object) -> Entries:
    out = np.empty((), dtype=object)
    out[()] = entry
    return out


def _dims(found: Entries | Computed) -> frozenset[Dim]:
    if isinstance(found, Computed):
        return found.dims
    dims: set[Dim] = set()
    for entry in found.reshape(-1):
        if isinstance(entry, Dim):
            dims.add(entry)
        elif isinstance(entry, Computed):
            dims |= entry.dims
    return frozenset(dims)


def _is_number(entry: object) -> bool:
    return isinstance(entry, (int, float, bool, np.number, np.bool_))


def _ints(found: Entries | Computed | None) -> np.ndarray:
    """Known integer entries as an int64 array (raises ValueError where one is not known)."""
    if found is None or isinstance(found, Computed) or not all(_is_number(e) for e in found.reshape(-1)):
        raise ValueError("not known")
    return np.asarray(found.tolist(), dtype=np.int64)


def _cast(data: Entries, to: ir.DataType) -> Entries:
    out = data.copy()
    flat = out.reshape(-1)
    for i, entry in enumerate(flat):
        if _is_number(entry):
            flat[i] = np.asarray(entry).astype(to.numpy()).item()
    return out


def _elementwise(op: str, operands: list[Entries | Computed]) -> Entries | Computed:
    if any(isinstance(o, Computed) for o in operands):
        return Computed(frozenset().union(*(_dims(o) for o in operands)))
    arrays = np.broadcast_arrays(*operands)  # type: ignore[arg-type]
    out = np.empty(arrays[0].shape, dtype=object)
    fn = _ARITHMETIC[op]
    for index in np.ndindex(out.shape):
        entries = [a[index] for a in arrays]
        if all(_is_number(e) for e in entries):
            out[index] = np.asarray(fn(*entries)).item()
        else:
            out[index] = Computed(frozenset().union(*(_dims(_scalar(e)) for e in entries)))
    return out


def _slice(data: Entries, ins: list[Entries | Computed | None]) -> Entries:
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else np.arange(len(starts))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist(), strict=True):
        size = data.shape[axis]
        # ONNX clamps out-of-range bounds (INT64_MAX as "to the end", INT64_MIN as "before the start")
        start, end = max(-size - 1, min(size, start)), max(-size - 1, min(size, end))
        index[axis] = slice(start, None if step < 0 and end < -size else end, step)
    return data[tuple(index)]


def _reduce(op: str, data: Entries, node: ir.Node) -> Entries | Computed:
    if not all(_is_number(e) for e in data.reshape(-1)) or node.inputs[1:] or attr_ints(node, "axes"):
        return Computed(_dims(data))
    result = _REDUCTIONS[op](np.asarray(data.tolist()))
    return _known(np.asarray(result).reshape((1,) * data.ndim) if attr_int(node, "keepdims", 1) else result)
