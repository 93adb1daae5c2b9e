"""Layout ops: the channel axis moves (Transpose, Squeeze/Unsqueeze of other axes); Shape reads no values."""

from __future__ import annotations

import onnx_ir as ir

from sparsecut.passes.channels.rules.base import Decline, Kind, NoConstants, Plan, channel_input, register
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_int, attr_ints, constant_array

__all__ = ["ShapeRule", "SqueezeRule", "TransposeRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)
SHAPE = Plan(Kind.SHAPE)


@register
class TransposeRule(NoConstants[Plan]):
    """The channel axis moves to where `perm` puts it."""

    op_types = ("Transpose",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, walk), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        perm = attr_ints(node, "perm") or list(reversed(range(len(x.shape))))
        walk.register(y, list(perm).index(walk.axis[x]), walk.count_of(x), like=x)
        walk.set_state(y, walk.live[x].copy(), walk.const[x].copy())
        return PASSTHROUGH


@register
class SqueezeRule(NoConstants[Plan]):
    """Squeeze/Unsqueeze of other axes: the channel axis shifts."""

    op_types = ("Squeeze", "Unsqueeze")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, walk), node.outputs[0]
        if isinstance(x, Decline):
            return x
        if x.shape is None or y.shape is None:
            return Decline("output of unknown rank")
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes_array = constant_array(axes_value) if axes_value is not None else None
        if axes_array is None:
            return Decline("axes not given as a constant")
        axis = walk.axis[x]
        if node.op_type == "Squeeze":
            axes = {int(a) % len(x.shape) for a in axes_array.reshape(-1)}
            if axis in axes:
                return Decline("squeezes the channel axis")
            new_axis = axis - sum(1 for a in axes if a < axis)
        else:
            axes = {int(a) % len(y.shape) for a in axes_array.reshape(-1)}
            new_axis = axis
            for a in sorted(axes):
                if a <= new_axis:
                    new_axis += 1
        walk.register(y, new_axis, walk.count_of(x), like=x)
        walk.set_state(y, walk.live[x].copy(), walk.const[x].copy())
        return PASSTHROUGH


@register
class ShapeRule(NoConstants[Plan]):
    """Shape reads no values; if it reads the channel dim, the channel count is part of what it computes."""

    op_types = ("Shape",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        x = node.inputs[0]
        if x is None or x not in walk.axis or x.shape is None:
            return SHAPE
        rank = len(x.shape)
        start, end = attr_int(node, "start", 0), attr_int(node, "end", rank)
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else min(end, rank))
        if start <= walk.axis[x] < end:
            walk.veto(x, "its shape is read by a Shape node")
        return SHAPE
