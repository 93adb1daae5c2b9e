"""Ops over spatial axes that keep channel k as channel k: pooling, reductions over other axes, resizing."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import onnx_ir as ir

from sparsecut.passes.channels.rules.base import (
    ChannelRule,
    Decline,
    Kind,
    NoConstants,
    Plan,
    channel_input,
    register,
)
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_int, constant_array, conv_padded, reduce_axes

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["PoolRule", "ReduceRule", "ResizeRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)


@register
class PoolRule(NoConstants[Plan]):
    """Pooling keeps channel k as channel k, and a constant as that constant — unless the window averages in
    padding zeros (count_include_pad) or takes an Lp norm."""

    op_types = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        if len(node.outputs) > 1 and node.outputs[1].uses():
            return Decline("its indices are read")
        x, y = channel_input(node, walk, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        walk.register(y, 1, walk.count_of(x), like=x)
        live, const = walk.live[x].copy(), walk.const[x].copy()
        counts_padding = node.op_type == "AveragePool" and attr_int(node, "count_include_pad", 0) == 1
        if (counts_padding and conv_padded(node)) or node.op_type in ("LpPool", "GlobalLpPool"):
            live |= const != 0
        walk.set_state(y, live, const)
        return PASSTHROUGH


@register
class ReduceRule(NoConstants[Plan]):
    """Reductions over axes other than the channel axis (SE's ReduceMean): channels pass; ReduceSum multiplies a
    constant by the number of elements summed."""

    op_types = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, walk), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        rank = len(x.shape)
        axes = reduce_axes(node, rank)
        if axes is None:
            return Decline("axes computed at run time")
        if walk.axis[x] in axes:
            return Decline("reduces over the channel axis")
        keep = attr_int(node, "keepdims", 1)
        new_axis = walk.axis[x] if keep else walk.axis[x] - sum(1 for a in axes if a < walk.axis[x])
        walk.register(y, new_axis, walk.count_of(x), like=x)
        const, live = walk.const[x].copy(), walk.live[x].copy()
        if node.op_type == "ReduceSum":
            sizes = [x.shape[a] for a in axes]
            if all(isinstance(s, int) for s in sizes):
                const = const * math.prod(sizes)
            else:
                live |= const != 0
        walk.set_state(y, live, const)
        return PASSTHROUGH


@register
class ResizeRule(ChannelRule[Plan]):
    """Resize/Upsample: interpolation weights sum to 1, so channels and constants pass. A `sizes` input names the
    channel count: the rewrite sets it."""

    op_types = ("Resize", "Upsample")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, walk, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        if walk.static_count(y, 1) != walk.count_of(x):
            return Decline("output channel count unknown or different")
        sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
        if sizes is not None and constant_array(sizes) is None:
            return Decline("sizes computed at run time")
        if sizes is not None and len(sizes.uses()) != 1:
            return Decline("sizes shared with another node")
        walk.same_state(y, x)
        return PASSTHROUGH

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
        y = node.outputs[0]
        if constant_array(sizes) is not None and rw.changed(y):
            rw.set_shape_element(node, rw.analysis.walk.axis[y], len(rw.kept(y)), index=3)
