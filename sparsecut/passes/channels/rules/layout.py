"""Layout ops: the channel axis moves (Transpose, Squeeze/Unsqueeze of other axes) or stays while other axes are
broadcast (Expand); Shape reads no values."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from sparsecut.passes.channels.shape_values import Dim
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_ints, constant_array, shape_element

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["ExpandRule", "ShapeRule", "SqueezeRule", "TransposeRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)
SHAPE = Plan(Kind.SHAPE)


@register
class TransposeRule(NoConstants[Plan]):
    """The channel axis moves to where `perm` puts it."""

    op_types = ("Transpose",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        assert x.shape is not None
        perm = attr_ints(node, "perm") or list(reversed(range(len(x.shape))))
        spaces.register(y, list(perm).index(spaces.axis[x]), spaces.count_of(x), like=x)
        spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
        return PASSTHROUGH


@register
class ExpandRule(ChannelRule[Plan]):
    """Expand broadcasts the other axes: channel k stays channel k (the target's channel entry is 1, a constant
    the rewrite sets, or computed from this tensor's own channel count, which follows)."""

    op_types = ("Expand",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, shape_value, y = channel_input(node, spaces), node.inputs[1], node.outputs[0]
        if isinstance(x, Decline):
            return x
        if shape_value is None or x.shape is None or y.shape is None:
            return Decline("output of unknown rank")
        axis = spaces.axis[x] + len(y.shape) - len(x.shape)
        if spaces.static_count(y, axis) != spaces.count_of(x):
            return Decline("expands the channel axis")
        entry = spaces.shapes.entry(shape_value, axis)
        if entry != 1 and shape_element(shape_value, axis) is None and self.followed_count(node, spaces) is None:
            return Decline("the target's channel entry is computed at run time, not from this tensor's channels")
        spaces.register(y, axis, spaces.count_of(x), like=x)
        spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
        return PASSTHROUGH

    def followed_count(self, node: ir.Node, spaces: ChannelSpaces) -> Dim | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x not in spaces.axis or x.shape is None or y.shape is None:
            return None
        return count_followed(spaces, node, node.inputs[1], spaces.axis[x] + len(y.shape) - len(x.shape))

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        y = node.outputs[0]
        axis = rw.analysis.walk.axis[y]
        element = shape_element(node.inputs[1], axis) if node.inputs[1] is not None else None
        if element is None or not rw.changed(y):
            return  # computed from this tensor's channel count: it follows
        holder, entry = element[1]
        array = constant_array(holder)
        if array is not None and int(array.reshape(-1)[entry]) != 1:  # (1 broadcasts any count)
            rw.set_shape_element(node, axis, len(rw.kept(y)))


@register
class SqueezeRule(NoConstants[Plan]):
    """Squeeze/Unsqueeze of other axes: the channel axis shifts."""

    op_types = ("Squeeze", "Unsqueeze")

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        if x.shape is None or y.shape is None:
            return Decline("output of unknown rank")
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes_array = constant_array(axes_value) if axes_value is not None else None
        if axes_array is None:
            return Decline("axes not given as a constant")
        axis = spaces.axis[x]
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
        spaces.register(y, new_axis, spaces.count_of(x), like=x)
        spaces.set_state(y, spaces.live[x].copy(), spaces.const[x].copy())
        return PASSTHROUGH


@register
class ShapeRule(NoConstants[Plan]):
    """Shape and Size read no values. Where their output goes, the channel count it may hold is read: the walk
    follows it through shape arithmetic (`shape_values.py`) to the nodes that use it, and keeps the channels
    there unless the count follows by itself (a Reshape back to the tensor's own channel count) — a Shape read
    only for H and W, or the batch, keeps nothing."""

    op_types = ("Shape", "Size")

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        return SHAPE
