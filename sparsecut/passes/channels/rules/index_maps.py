"""Ops that move channels by position: Concat, Split, Slice, Flatten, Reshape (and the channel shuffle). Each
records an *index map* (channel ia[i] of one tensor is channel ib[i] of another) and, where channels go, the
rewrite writes the new sizes into the node's constants."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules.base import (
    ChannelRule,
    Decline,
    Kind,
    NoConstants,
    Plan,
    channel_input,
    count_followed,
    register,
)
from sparsecut.passes.channels.rules.normalization import (
    GroupNormPlan,
    group_norm,
    group_norm_backward,
    rewrite_group_norm,
)
from sparsecut.passes.channels.shape_values import Dim
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import attr_int, attr_ints, constant_array, same_dim, shape_element, slice_bounds

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["ConcatRule", "FlattenRule", "GatherRule", "ReshapeRule", "ShufflePlan", "SliceRule", "SplitRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)
CONCAT = Plan(Kind.CONCAT)
SPLIT = Plan(Kind.SPLIT)
SLICE = Plan(Kind.SLICE)
FLATTEN = Plan(Kind.FLATTEN)
EMBEDDING = Plan(Kind.EMBEDDING)
TIED_EMBEDDING = Plan(Kind.TIED_EMBEDDING)
RESHAPE = Plan(Kind.RESHAPE)


@dataclasses.dataclass(frozen=True, slots=True)
class ShufflePlan(Plan):
    transpose: ir.Node  # Reshape [B, g, C/g, …] → this Transpose → `back`, a Reshape to [B, C, …]
    back: ir.Node
    groups: int


@register
class ConcatRule(NoConstants[Plan]):
    """Along the channel axis: in_i[k] ↔ out[offset_i + k]. Along another axis: channel k is channel k in every
    input and the output (one space), constant only where all inputs hold the same constant."""

    op_types = ("Concat",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        y = node.outputs[0]
        if y.shape is None:
            return Decline("output of unknown rank")
        rank = len(y.shape)
        axis = attr_int(node, "axis", 0) % rank
        inputs = [v for v in node.inputs if v is not None]
        if any(constant_array(v) is not None for v in inputs):
            return Decline("a constant is concatenated")
        channel_axis = next((spaces.axis[v] for v in inputs if v in spaces.axis), 1 if rank > 1 else 0)
        for v in inputs:
            why = spaces.ensure(v, channel_axis)
            if why:
                return Decline(why)
        if axis != channel_axis:
            count = spaces.static_count(y, channel_axis)
            if count is None or any(spaces.count_of(v) != count for v in inputs):
                return Decline("inputs with different channel counts")
            spaces.register(y, channel_axis, count, like=inputs[0])
            for v in inputs[1:]:
                spaces.link(v, y)
            live = np.any([spaces.live[v] for v in inputs], axis=0)
            consts = np.array([spaces.const[v] for v in inputs])
            live |= np.any(consts != consts[0], axis=0)
            spaces.set_state(y, live, consts[0])
            return PASSTHROUGH
        total = sum(spaces.count_of(v) for v in inputs)
        if spaces.static_count(y, axis) != total:
            return Decline("output channel count is not the inputs' sum")
        spaces.register(y, axis, total)
        offset = 0
        for v in inputs:
            n = spaces.count_of(v)
            spaces.add_map(node, v, np.arange(n), y, np.arange(offset, offset + n))
            offset += n
        spaces.set_state(
            y, np.concatenate([spaces.live[v] for v in inputs]), np.concatenate([spaces.const[v] for v in inputs])
        )
        return CONCAT


@register
class SplitRule(ChannelRule[Plan]):
    """Along the channel axis (equal or uneven parts, sizes as input or `num_outputs`): x[offset_i + k] ↔
    out_i[k]; the rewrite writes the new sizes (each part keeps its own live channels: parts may end unequal).
    Along another axis: channels pass to every part."""

    op_types = ("Split",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x = channel_input(node, spaces)
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        rank = len(x.shape)
        axis = attr_int(node, "axis", 0) % rank
        counts = [spaces.static_count(o, axis) for o in node.outputs]
        if any(c is None for c in counts):
            return Decline("part sizes unknown")
        if axis != spaces.axis[x]:
            for out in node.outputs:
                spaces.same_state(out, x)
            return PASSTHROUGH
        sizes_value = node.inputs[1] if len(node.inputs) > 1 else None
        if sizes_value is not None and constant_array(sizes_value) is None:
            return Decline("sizes computed at run time")
        if sum(c for c in counts if c is not None) != spaces.count_of(x):
            return Decline("parts do not add up to the input's channels")
        offset = 0
        for out, n in zip(node.outputs, counts, strict=True):
            assert n is not None
            spaces.register(out, axis, n)
            spaces.add_map(node, x, np.arange(offset, offset + n), out, np.arange(n))
            spaces.set_state(
                out, spaces.live[x][offset : offset + n].copy(), spaces.const[x][offset : offset + n].copy()
            )
            offset += n
        return SPLIT

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        if plan.kind is not Kind.SPLIT:
            return
        sizes = np.array([len(rw.kept(out)) for out in node.outputs], np.int64)
        if len(node.inputs) < 2 or node.inputs[1] is None:
            node.attributes.pop("num_outputs", None)
            node.attributes.pop("split", None)  # opset < 13 kept sizes as an attribute
            node.resize_inputs(2)
        rw.set_constant(node, 1, sizes)  # (a fresh constant where the sizes were shared with another Split)


@register
class SliceRule(ChannelRule[Plan]):
    """Slice with step 1 on the channel axis: out[k] ↔ x[start + k]; on other axes channels pass through."""

    op_types = ("Slice",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        bounds = slice_bounds(node, len(x.shape), spaces.axis[x])
        if bounds is None:
            return Decline("bounds, axes or steps computed at run time, or a step other than 1 on the channel axis")
        count = spaces.count_of(x)
        if not isinstance(bounds, tuple):  # "untouched": sliced along other axes only
            spaces.same_state(y, x)
            return PASSTHROUGH
        start, end = max(0, min(bounds[0], count)), max(0, min(bounds[1], count))
        if end <= start or spaces.static_count(y, spaces.axis[x]) != end - start:
            return Decline("an empty slice of channels")
        spaces.register(y, spaces.axis[x], end - start)
        spaces.add_map(node, x, np.arange(start, end), y, np.arange(end - start))
        spaces.set_state(y, spaces.live[x][start:end].copy(), spaces.const[x][start:end].copy())
        return SLICE

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        if plan.kind is not Kind.SLICE:
            return
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        axis, count, rank = rw.analysis.walk.axis[x], rw.count(x), len(x.shape or ())
        bounds = slice_bounds(node, rank, axis)
        assert isinstance(bounds, tuple)
        start, end = max(0, min(bounds[0], count)), max(0, min(bounds[1], count))
        kept = ~rw.removed(x)
        new_start = int(kept[:start].sum())
        new_end = new_start + int(kept[start:end].sum())
        assert new_end - new_start == len(rw.kept(y))
        axes = constant_array(node.inputs[3]) if len(node.inputs) > 3 else None
        position = [int(a) % rank for a in axes.reshape(-1)].index(axis) if axes is not None else axis
        for index, value in ((1, new_start), (2, new_end)):
            array = constant_array(node.inputs[index])
            assert array is not None
            array = array.reshape(-1).copy()
            array[position] = value
            rw.set_constant(node, index, array)  # (a fresh constant where the bounds were shared)


def _expand(spaces: ChannelSpaces, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, inner: int) -> None:
    """y's channel axis holds x's channel k as `inner` consecutive features: y[k·inner + i] ↔ x[k]."""
    count = spaces.count_of(x)
    if inner == 1:
        spaces.register(y, axis, count, like=x)
        spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
        return
    spaces.register(y, axis, count * inner)
    spaces.add_map(node, x, np.repeat(np.arange(count), inner), y, np.arange(count * inner))
    spaces.set_state(y, np.repeat(spaces.live[x], inner), np.repeat(spaces.const[x], inner))


def _merge(
    spaces: ChannelSpaces, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, channels: int, inner: int
) -> None:
    """x's channel axis holds y's channel k as `inner` consecutive features: x[k·inner + i] ↔ y[k] (a Linear's
    output reshaped to (C, H, W)). A channel is constant only when all its features are the same constant."""
    spaces.register(y, axis, channels)
    spaces.add_map(node, x, np.arange(channels * inner), y, np.repeat(np.arange(channels), inner))
    live_x = spaces.live[x].reshape(channels, inner)
    const_x = spaces.const[x].reshape(channels, inner)
    live = live_x.any(axis=1) | ~np.all(const_x == const_x[:, :1], axis=1)
    spaces.set_state(y, live, const_x[:, 0].copy())


@register
class GatherRule(ChannelRule[Plan]):
    """An embedding — rows of a constant table [V, N] gathered by token ids along axis 0 — has the table's columns
    as its channels, on its last axis: a column that is zero everywhere is ZERO, one constant down the column is
    CONST; the rewrite keeps the table's kept columns. A table another node reads too (tied with lm_head) is kept
    whole: slicing it for one reader would store it twice. From a computed tensor along another axis than the
    channels' (`x[:, 0]`, a class token): channels pass, the axis moving as the indices' rank says."""

    op_types = ("Gather",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if data is None or indices is None or data.shape is None or indices.shape is None:
            return Decline("data or indices of unknown rank")
        axis = attr_int(node, "axis", 0) % len(data.shape)
        table = constant_array(data)
        if table is not None:
            if table.ndim != 2 or axis != 0 or constant_array(indices) is not None:
                return Decline("gathers from a constant that is no [tokens, channels] table read by index")
            count = table.shape[1]
            spaces.register(y, len(indices.shape), count)
            zero = ~np.any(table != 0, axis=0)
            constant = np.all(table == table[:1], axis=0)
            spaces.set_state(y, ~(zero | constant), np.where(constant, table[0], 0.0).astype(np.float64))
            if len(list(data.uses())) > 1 or data.is_graph_output():
                spaces.veto(y, f"its embedding table {data.name!r} is read by another node too (tied with lm_head?)")
                return TIED_EMBEDDING
            return EMBEDDING
        x = channel_input(node, spaces)
        if isinstance(x, Decline):
            return x
        channels = spaces.axis[x]
        if channels == axis:
            return Decline("gathers along the channel axis")
        moved = channels if channels < axis else channels + len(indices.shape) - 1
        spaces.register(y, moved, spaces.count_of(x), like=x)
        spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
        return PASSTHROUGH

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        if plan is EMBEDDING:
            table = constant_array(node.inputs[0])
            assert table is not None
            rw.set_constant(node, 0, table[:, rw.kept(node.outputs[0])])


@register
class FlattenRule(NoConstants[Plan]):
    """Flatten at the channel axis: channel k becomes the H·W features k·HW … (k+1)·HW − 1."""

    op_types = ("Flatten",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        rank = len(x.shape)
        axis = attr_int(node, "axis", 1) % (rank + 1) if rank else 0
        trailing = [d for d in list(x.shape)[axis + 1 :] if isinstance(d, int)]
        if axis != spaces.axis[x]:
            return Decline(f"flattens from axis {axis}, the channels are on axis {spaces.axis[x]}")
        if len(trailing) != rank - axis - 1:
            return Decline("axes after the channels of unknown size")
        _expand(spaces, node, x, y, 1, math.prod(trailing))  # Flatten's output is 2-D: the channels start axis 1
        return FLATTEN


@register
class ReshapeRule(ChannelRule[Plan]):
    """Reshapes that carry the channel axis over whole, or map it by index. The forms:

    - the channel axis untouched ([B,C,H,W] → [B,C,HW]): one space;
    - the axes before the channels regrouped ([B·N, C] ↔ [B, N, C], BatchNorm1d on flattened tokens): one space,
      the channel axis at the same place from the right;
    - channels merged with the axes after them ([B,C,H,W] → [B,C·H,W] or [B,C·H·W]): x[k] ↔ y[k·inner + i];
    - features split into channels and axes after them ([B,C·H·W] → [B,C,H,W]): y[k] ↔ x[k·inner + i];
    - channel shuffle, Reshape [B,C,…] → [B,g,C/g,…] → Transpose of those two axes → Reshape back [B,C,…]
      (ShuffleNet): z[j·g + i] = x[i·C/g + j]. The rewrite keeps equal counts per group and the same j in every
      group (channel j of all groups goes together), so that the shuffle of the kept channels is the kept
      channels of the shuffle;
    - GroupNorm, Reshape [B,C,S…] → [B,G,(C/G)·S] → InstanceNormalization → Reshape back (normalization.py).

    The rewrite edits the channel entry of each shape constant (a -1 or 0 there follows by itself, and so does a
    target computed from this tensor's own channel count: `x.view(B, C, -1)` as the TorchScript exporter writes
    it, Shape(x)[1] in a Concat)."""

    op_types = ("Reshape",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, shape_value, y = channel_input(node, spaces), node.inputs[1], node.outputs[0]
        if isinstance(x, Decline):
            return x
        if shape_value is None or x.shape is None or y.shape is None:
            return Decline("output of unknown rank")
        axis = spaces.axis[x]
        in_dims, out_dims = list(x.shape), list(y.shape)
        position = _carried_axis(in_dims, out_dims, axis, spaces.count_of(x))
        if position is None:
            return Decline(f"{_dims(in_dims)} → {_dims(out_dims)} changes the axes before the channels")
        editable = shape_element(shape_value, position) is not None
        if not editable and self.followed_count(node, spaces) is None:
            return Decline("the target's channel entry is computed at run time, not from this tensor's channels")
        if position == axis and editable:
            pattern = group_norm(node, spaces, x, y) or self._shuffle(node, spaces, x, y, axis)
            if pattern is not None:
                return pattern
        count, channels = spaces.count_of(x), out_dims[position]
        after_in, after_out = in_dims[axis + 1 :], out_dims[position + 1 :]
        if channels == count and (after_out or not after_in) and (position == axis or after_in == after_out):
            if position != axis and not self._names_count(shape_value, position, count):
                return Decline("a 0 in the target copies another axis than the channels")
            spaces.register(y, position, count, like=x)
            spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
            return RESHAPE
        if not editable or position != axis:
            return Decline("a target computed from the channel count that also moves the channels")
        sizes_in = [d for d in after_in if isinstance(d, int)]
        sizes_out = [d for d in after_out if isinstance(d, int)]
        if not isinstance(channels, int) or len(sizes_in) != len(after_in) or len(sizes_out) != len(after_out):
            return Decline("axes after the channels of unknown size")
        for m in range(len(sizes_in) + 1):  # y's channel axis = x's channels · the next m axes of x
            if channels == count * math.prod(sizes_in[:m]) and sizes_in[m:] == sizes_out:
                _expand(spaces, node, x, y, axis, math.prod(sizes_in[:m]))
                return RESHAPE
        for m in range(1, len(sizes_out) + 1):  # x's channel axis = y's channels · the next m axes of y
            inner = math.prod(sizes_out[:m])
            if channels * inner == count and sizes_in == sizes_out[m:]:
                _merge(spaces, node, x, y, axis, channels, inner)
                return RESHAPE
        return Decline(f"{_dims(in_dims)} → {_dims(out_dims)} mixes channels with other axes")

    def followed_count(self, node: ir.Node, spaces: ChannelSpaces) -> Dim | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x not in spaces.axis or x.shape is None or y.shape is None:
            return None
        position = _carried_axis(list(x.shape), list(y.shape), spaces.axis[x], spaces.count_of(x))
        return None if position is None else count_followed(spaces, node, node.inputs[1], position)

    @staticmethod
    def _names_count(shape_value: ir.Value, position: int, count: int) -> bool:
        """Whether the target's entry at `position` says the channel count (not a 0 copying another input axis)."""
        element = shape_element(shape_value, position)
        if element is None:
            return True  # computed from the channel count (followed_count)
        holder, entry = element[1]
        array = constant_array(holder)
        return array is not None and int(array.reshape(-1)[entry]) in (count, -1)

    def _shuffle(self, node: ir.Node, spaces: ChannelSpaces, x: ir.Value, y: ir.Value, axis: int) -> ShufflePlan | None:
        assert x.shape is not None and y.shape is not None
        in_dims, out_dims, count = list(x.shape), list(y.shape), spaces.count_of(x)
        if len(out_dims) != len(in_dims) + 1 or not _same_tail(out_dims[axis + 2 :], in_dims[axis + 1 :]):
            return None
        groups, per_group = out_dims[axis], out_dims[axis + 1]
        if not isinstance(groups, int) or not isinstance(per_group, int) or groups * per_group != count:
            return None
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output() or uses[0].node.op_type != "Transpose":
            return None
        transpose = uses[0].node
        swap = list(range(len(out_dims)))
        swap[axis], swap[axis + 1] = axis + 1, axis
        t = transpose.outputs[0]
        if attr_ints(transpose, "perm") != swap or len(t.uses()) != 1 or t.is_graph_output():
            return None
        back = next(iter(t.uses())).node
        z = back.outputs[0]
        if back.op_type != "Reshape" or back.inputs[1] is None or z.shape is None or back.inputs[0] is not t:
            return None
        if len(z.shape) != len(in_dims) or not all(map(same_dim, z.shape, in_dims)):
            return None
        assert node.inputs[1] is not None
        if shape_element(node.inputs[1], axis + 1) is None or shape_element(back.inputs[1], axis) is None:
            return None
        source = np.arange(count).reshape(groups, per_group).T.reshape(-1)  # z[k] = x[source[k]]
        spaces.register(z, axis, count)
        spaces.add_map(node, x, source, z, np.arange(count))
        spaces.tie(z, np.arange(count), z, (np.arange(count) // groups) * groups)  # channel j of every group
        spaces.set_state(z, spaces.live[x][source].copy(), spaces.const[x][source].copy())
        spaces.claim(transpose, node)
        spaces.claim(back, node)
        return ShufflePlan(Kind.SHUFFLE, transpose, back, groups)

    def backward(self, node: ir.Node, plan: Plan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        if isinstance(plan, GroupNormPlan):
            group_norm_backward(node, plan, walk, needed)
        else:
            super().backward(node, plan, walk, needed)

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        axis = rw.analysis.walk.axis[x]
        if isinstance(plan, GroupNormPlan):
            rewrite_group_norm(node, plan, rw)
            return
        if isinstance(plan, ShufflePlan):
            kept = len(rw.kept(x))
            rw.set_shape_element(node, axis + 1, kept // plan.groups)
            rw.set_shape_element(plan.back, axis, kept)
            for value, position in ((y, axis + 1), (plan.transpose.outputs[0], axis)):
                if value.shape is not None:
                    dims = list(value.shape)
                    dims[position] = kept // plan.groups
                    value.shape = ir.Shape(dims)
            return
        position = rw.analysis.walk.axis[y]
        if shape_element(node.inputs[1], position) is not None:  # else computed from x's channel count: it follows
            rw.set_shape_element(node, position, len(rw.kept(y)))


def _carried_axis(in_dims: list, out_dims: list, axis: int, count: int) -> int | None:
    """Where the output holds the input's `count` channels on `axis`: at the same place when the axes before it
    are the same, or at the same place from the right when only the axes before it were regrouped ([B·N, C] ↔
    [B, N, C]); None when neither holds. (Two symbolic sizes compare equal, so [B·N, C] → [B, N, C] also seems
    to keep "the axes before": the elements from the channel axis on, and the count at the place, decide.)"""
    before_same = len(out_dims) > axis and all(map(same_dim, in_dims[:axis], out_dims[:axis]))
    after_in, after_out = in_dims[axis:], out_dims[axis:]
    if all(isinstance(d, int) for d in after_in + after_out) and math.prod(after_in) != math.prod(after_out):
        before_same = False  # the elements from the channels on differ: the axes before cannot be the same
    if before_same and out_dims[axis] == count:
        return axis
    position = len(out_dims) - (len(in_dims) - axis)
    if 0 <= position != axis and out_dims[position] == count and _same_tail(in_dims[axis:], out_dims[position:]):
        return position
    return axis if before_same else None


def _dims(dims: list) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _same_tail(a: list, b: list) -> bool:
    return len(a) == len(b) and all(map(same_dim, a, b))
