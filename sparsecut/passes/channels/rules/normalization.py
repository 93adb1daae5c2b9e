"""Normalizations: BatchNorm maps each channel on its own; LayerNorm over the channel axis ties every channel to
the statistics of all of them."""

from __future__ import annotations

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
    register,
)
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_float, attr_int, constant_array

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["BatchNormRule", "LayerNormRule"]

BATCHNORM = Plan(Kind.BATCHNORM)
LAYERNORM = Plan(Kind.LAYERNORM)


@register
class BatchNormRule(ChannelRule[Plan]):
    """y_k = γ_k(x_k − μ_k)/σ_k + β_k: a constant c maps to γ(c − μ)/σ + β; γ_k = 0 makes channel k CONST(β_k)
    whatever the input (the input channel is then not needed)."""

    op_types = ("BatchNormalization",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        params = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        if len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
            return Decline("training-mode statistics are read")
        if any(p is None for p in params):
            return Decline("scale, bias, mean or variance computed at run time")
        x, y = channel_input(node, walk, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        eps = attr_float(node, "epsilon", 1e-5)
        walk.register(y, 1, walk.count_of(x), like=x)
        scale = gamma / np.sqrt(var + eps)
        walk.set_state(y, walk.live[x] & (gamma != 0), scale * (walk.const[x] - mean) + beta)
        walk.gates[node] = [gamma == 0]
        return BATCHNORM

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        kept = rw.kept(node.outputs[0])
        for index in range(1, 5):
            array = constant_array(node.inputs[index])
            assert array is not None
            rw.set_constant(node, index, array.reshape(-1)[kept])


@register
class LayerNormRule(NoConstants[Plan]):
    """LayerNormalization over the channel axis (the last, as ConvNeXt and transformers normalize): its output
    carries the input's channels, but none of them can go — a dead channel still counts in the mean and the
    variance of the others, and γ, β are laid out over all of them. Both sides keep every channel, and the
    channel axis is known past it (a Transpose back to channels-first reads it right)."""

    op_types = ("LayerNormalization",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Plan | Decline:
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        rank = len(shape) if shape is not None else 0
        if rank < 2 or attr_int(node, "axis", -1) % rank != rank - 1:
            return Decline(f"normalizes from axis {attr_int(node, 'axis', -1)}, not over the last axis alone")
        x, y = channel_input(node, walk, rank - 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        count = walk.count_of(x)
        walk.register(y, rank - 1, count)
        walk.set_state(y, np.ones(count, bool), np.zeros(count))
        reason = f"normalized by LayerNormalization {node.name!r} (a dead channel still counts in its statistics)"
        walk.veto(x, reason)
        walk.veto(y, reason)
        return LAYERNORM
