"""Ops over spatial axes that keep channel k as channel k: pooling, reductions over other axes, resizing,
padding."""

from __future__ import annotations

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
from sparsecut.passes.channels.rules.rms import RmsStatisticPlan, rewrite_rms_statistic, rms_statistic
from sparsecut.passes.channels.shape_values import Dim
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_int, attr_ints, constant_array, conv_padded, reduce_axes, shape_element

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["PadRule", "PoolRule", "ReduceRule", "ResizeRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)


@register
class PoolRule(NoConstants[Plan]):
    """Pooling keeps channel k as channel k, and a constant as that constant — unless the window averages in
    padding zeros (count_include_pad) or takes an Lp norm."""

    op_types = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        if len(node.outputs) > 1 and node.outputs[1].uses():
            return Decline("its indices are read")
        x, y = channel_input(node, spaces, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        spaces.register(y, 1, spaces.count_of(x), like=x)
        live, const = spaces.live[x].copy(), spaces.const[x].copy()
        counts_padding = node.op_type == "AveragePool" and attr_int(node, "count_include_pad", 0) == 1
        if (counts_padding and conv_padded(node)) or node.op_type in ("LpPool", "GlobalLpPool"):
            live |= const != 0
        spaces.set_state(y, live, const)
        return PASSTHROUGH


@register
class ReduceRule(ChannelRule[Plan]):
    """Reductions over axes other than the channel axis (SE's ReduceMean): channels pass; ReduceSum multiplies a
    constant by the number of elements summed. Over the channel axis, only an RMSNorm's mean square (rms.py)."""

    op_types = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        rank = len(x.shape)
        axes = reduce_axes(node, rank)
        if axes is None:
            return Decline("axes computed at run time")
        if spaces.axis[x] in axes:
            return (
                rms_statistic(node, spaces, x, axes)
                if node.op_type == "ReduceMean"
                else Decline("reduces over the channel axis")
            )
        keep = attr_int(node, "keepdims", 1)
        new_axis = spaces.axis[x] if keep else spaces.axis[x] - sum(1 for a in axes if a < spaces.axis[x])
        spaces.register(y, new_axis, spaces.count_of(x), like=x)
        const, live = spaces.const[x].copy(), spaces.live[x].copy()
        if node.op_type == "ReduceSum":
            sizes = [x.shape[a] for a in axes]
            if all(isinstance(s, int) for s in sizes):
                const = const * math.prod(sizes)
            else:
                live |= const != 0
        spaces.set_state(y, live, const)
        return PASSTHROUGH

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        if isinstance(plan, RmsStatisticPlan):
            rewrite_rms_statistic(node, plan, rw)


@register
class ResizeRule(ChannelRule[Plan]):
    """Resize/Upsample: interpolation weights sum to 1, so channels and constants pass. `sizes` names the channel
    count: a constant entry is rewritten; one computed from this tensor's own channel count follows (TorchScript's
    `F.interpolate(x, size=skip.shape[2:])` writes Concat(Shape(x)[:2], Shape(skip)[2:])); anything else
    declines. Scales computed at run time must hold 1 for the channel axis."""

    op_types = ("Resize", "Upsample")

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        if spaces.static_count(y, 1) != spaces.count_of(x):
            return Decline("output channel count unknown or different")
        position = _channel_position(node, 1)
        if position is None:  # the channel axis is not resized
            spaces.same_state(y, x)
            return PASSTHROUGH
        scales, sizes = _scales(node), _sizes(node)
        if sizes is not None:
            editable = shape_element(sizes, position) is not None
            if not editable and self.followed_count(node, spaces) is None:
                return Decline("sizes' channel entry is computed at run time, not from this tensor's channels")
        elif scales is not None:
            entry = spaces.shapes.entry(scales, position)
            if not (isinstance(entry, (int, float)) and entry == 1):
                return Decline("scales' channel entry is computed at run time")
        spaces.same_state(y, x)
        return PASSTHROUGH

    def followed_count(self, node: ir.Node, spaces: ChannelSpaces) -> Dim | None:
        position = _channel_position(node, 1)
        return None if position is None else count_followed(spaces, node, _sizes(node), position)

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        sizes, position, y = _sizes(node), _channel_position(node, 1), node.outputs[0]
        if sizes is not None and position is not None and rw.changed(y) and shape_element(sizes, position):
            rw.set_shape_element(node, position, len(rw.kept(y)), index=3)


def _sizes(node: ir.Node) -> ir.Value | None:
    return node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None


def _scales(node: ir.Node) -> ir.Value | None:
    index = 2 if node.op_type == "Resize" and len(node.inputs) > 2 else 1
    scales = node.inputs[index] if len(node.inputs) > index else None
    empty = scales is not None and scales.shape is not None and list(scales.shape) == [0]
    return None if scales is None or empty else scales  # (an empty initializer: no scales given)


def _channel_position(node: ir.Node, axis: int) -> int | None:
    """Where `axis` sits among the entries of a Resize's scales/sizes or a Pad's pads (opset 18's `axes`: only the
    axes listed; None where the channel axis is not among them)."""
    listed = attr_ints(node, "axes") if node.op_type == "Resize" else None
    if node.op_type == "Pad" and len(node.inputs) > 3 and node.inputs[3] is not None:
        array = constant_array(node.inputs[3])
        listed = array.reshape(-1).tolist() if array is not None else None
    if listed is None:
        return axis
    rank = len(node.inputs[0].shape) if node.inputs[0] is not None and node.inputs[0].shape is not None else 0
    normalized = [a % rank if rank else a for a in listed]
    return normalized.index(axis) if axis in normalized else None


@register
class PadRule(NoConstants[Plan]):
    """Pad of axes other than the channel axis (a "same" padding, whose pads the TorchScript exporter computes at
    run time from H and W): channel k stays channel k. A constant channel stays constant where the border repeats
    it (reflect, edge, wrap) or pads with its own value; elsewhere it becomes LIVE."""

    op_types = ("Pad",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        pads = node.inputs[1] if len(node.inputs) > 1 else None
        if pads is None:
            return Decline("pads given as an attribute (opset < 11)")
        axes = node.inputs[3] if len(node.inputs) > 3 else None
        listed = constant_array(axes) if axes is not None else np.arange(len(x.shape))
        if listed is None:
            return Decline("axes computed at run time")
        position = _channel_position(node, spaces.axis[x])
        if position is not None:  # pads hold the begins of the padded axes, then their ends
            for index in (position, position + listed.size):
                entry = spaces.shapes.entry(pads, index)
                if not isinstance(entry, (int, float)):
                    return Decline("the channel axis' pads are computed at run time")
                if entry != 0:
                    return Decline("pads the channel axis")
        mode = node.attributes["mode"].as_string() if "mode" in node.attributes else "constant"
        fill = 0.0
        if mode == "constant" and len(node.inputs) > 2 and node.inputs[2] is not None:
            value = constant_array(node.inputs[2])
            if value is None or value.size != 1:
                return Decline("padding value computed at run time")
            fill = float(value.reshape(-1)[0])
        spaces.register(y, spaces.axis[x], spaces.count_of(x), like=x)
        live, const = spaces.live[x], spaces.const[x]
        spaces.set_state(y, live | (const != fill) if mode == "constant" else live, const)
        return PASSTHROUGH
