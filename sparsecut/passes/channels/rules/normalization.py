"""Normalizations: BatchNorm maps each channel on its own; LayerNorm over the channel axis ties every channel to
the statistics of all of them; GroupNorm ties the channels of each group (found by the Reshape rule, where its
pattern starts)."""

from __future__ import annotations

import dataclasses
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
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import attr_float, attr_int, constant_array, same_dim, shape_element

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = [
    "BatchNormRule",
    "GroupNormPlan",
    "LayerNormRule",
    "group_norm",
    "group_norm_backward",
    "last_axis_rank",
    "rewrite_group_norm",
]

BATCHNORM = Plan(Kind.BATCHNORM)
LAYERNORM = Plan(Kind.LAYERNORM)


@register
class BatchNormRule(ChannelRule[Plan]):
    """y_k = γ_k(x_k − μ_k)/σ_k + β_k: a constant c maps to γ(c − μ)/σ + β; γ_k = 0 makes channel k CONST(β_k)
    whatever the input (the input channel is then not needed)."""

    op_types = ("BatchNormalization",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        params = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        if len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:]):
            return Decline("training-mode statistics are read")
        if any(p is None for p in params):
            return Decline("scale, bias, mean or variance computed at run time")
        x, y = channel_input(node, spaces, 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        eps = attr_float(node, "epsilon", 1e-5)
        spaces.register(y, 1, spaces.count_of(x), like=x)
        scale = gamma / np.sqrt(var + eps)
        spaces.set_state(y, spaces.live[x] & (gamma != 0), scale * (spaces.const[x] - mean) + beta)
        spaces.gate(node, [gamma == 0])
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

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        rank = last_axis_rank(node, 2)
        if isinstance(rank, Decline):
            return rank
        x, y = channel_input(node, spaces, rank - 1), node.outputs[0]
        if isinstance(x, Decline):
            return x
        count = spaces.count_of(x)
        spaces.register(y, rank - 1, count)
        spaces.set_state(y, np.ones(count, bool), np.zeros(count))
        reason = f"normalized by LayerNormalization {node.name!r} (a dead channel still counts in its statistics)"
        spaces.veto(x, reason)
        spaces.veto(y, reason)
        return LAYERNORM


def last_axis_rank(node: ir.Node, least: int = 1) -> int | Decline:
    """The rank of a normalization's input, where it normalizes over the last axis alone (its `axis`)."""
    shape = node.inputs[0].shape if node.inputs[0] is not None else None
    rank = len(shape) if shape is not None else 0
    if rank < least or attr_int(node, "axis", -1) % rank != rank - 1:
        return Decline(f"normalizes from axis {attr_int(node, 'axis', -1)}, not over the last axis alone")
    return rank


@dataclasses.dataclass(frozen=True, slots=True)
class GroupNormPlan(Plan):
    norm: ir.Node  # the InstanceNormalization over [B, G, (C/G)·S]
    back: ir.Node  # the Reshape back to [B, C, S…]
    groups: int


def group_norm(node: ir.Node, spaces: ChannelSpaces, x: ir.Value, y: ir.Value) -> GroupNormPlan | Decline | None:
    """GroupNorm as both exporters write it: Reshape x [B, C, S…] → [B, G, (C/G)·S] (this node), then
    InstanceNormalization over the last axis (scale and bias per group), then a Reshape back to x's shape. None
    where `node` does not start that pattern.

    Per group g of C/G channels, μ_g and σ_g are taken over all its channels and positions, so a dead channel
    still counts in the statistics of the live ones: a group goes only when all its channels are dead. Then its
    channels hold constants c_k, and z_k = (c_k − μ)/√(σ² + ε)·s_g + b_g with μ, σ² over the group's constants.
    The rewrite keeps whole groups: G and the channel count in both targets, s and b sliced by group."""
    if spaces.axis[x] != 1 or x.shape is None or y.shape is None or len(y.shape) != 3:
        return None
    groups, count = y.shape[1], spaces.count_of(x)
    uses = list(y.uses())
    if not isinstance(groups, int) or groups < 1 or count % groups or len(uses) != 1 or y.is_graph_output():
        return None
    norm = uses[0].node
    if norm.op_type != "InstanceNormalization" or uses[0].idx != 0 or len(norm.outputs[0].uses()) != 1:
        return None
    back = next(iter(norm.outputs[0].uses())).node
    z = back.outputs[0]
    if back.op_type != "Reshape" or back.inputs[0] is not norm.outputs[0] or z.shape is None:
        return None
    if len(z.shape) != len(x.shape) or not all(map(same_dim, z.shape, x.shape)):
        return None
    scale, bias = (constant_array(v) if v is not None else None for v in norm.inputs[1:3])
    if scale is None or bias is None or scale.size != groups or bias.size != groups:
        return Decline("GroupNorm with scale or bias computed at run time")
    if shape_element(node.inputs[1], 1) is None or shape_element(back.inputs[1], 1) is None:  # type: ignore[arg-type]
        return Decline("GroupNorm whose group count or channel count is computed at run time")
    per = count // groups
    live = spaces.live[x].reshape(groups, per)
    const = spaces.const[x].reshape(groups, per)
    live_group = np.asarray(live.any(axis=1), bool)
    mean = const.mean(axis=1, keepdims=True)
    var = ((const - mean) ** 2).mean(axis=1, keepdims=True)
    eps = attr_float(norm, "epsilon", 1e-5)
    normalized = (const - mean) / np.sqrt(var + eps) * scale.reshape(-1, 1) + bias.reshape(-1, 1)
    # A dead group of one nonzero constant c (its variance nothing but c's rounding) is exactly its bias b_g, but
    # the input graph computes b_g + s_g·(c − μ)/√ε with μ summed in float32: rounding amplified by 1/√ε (c = 0.9,
    # ε = 1e-5: ±3e-5). Folding it would differ from what the input computes by that: its channels stay.
    largest = np.abs(const).max(axis=1)
    noisy = ~live_group & (largest > 0) & (var[:, 0] <= (8 * np.finfo(np.float32).eps * largest) ** 2)
    if noisy.any():
        spaces.veto(
            x,
            f"one nonzero constant per group normalized by GroupNorm {norm.name!r} (the input computes its float32 "
            "rounding divided by √ε there, not the exact value a fold would write)",
            np.repeat(noisy, per),
        )
    partly = np.repeat(live_group, per) & ~spaces.live[x]
    live_group = live_group | noisy
    spaces.register(z, 1, count)
    channels = np.arange(count)
    spaces.add_map(node, x, channels, z, channels)
    spaces.tie(z, channels, z, channels // per * per)  # a group's channels go together
    spaces.set_state(z, np.repeat(live_group, per), np.where(live_group[:, None], 0.0, normalized).reshape(-1))
    if partly.any():
        spaces.veto(
            x,
            f"normalized by GroupNorm {norm.name!r} with live channels in its group (a dead channel still "
            "counts in the group's statistics)",
            partly,
        )
    spaces.claim(norm, node)
    spaces.claim(back, node)
    return GroupNormPlan(Kind.GROUPNORM, norm, back, groups)


def group_norm_backward(
    node: ir.Node, plan: GroupNormPlan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]
) -> None:
    """Every input channel of a group counts in the statistics each of the group's outputs is normalized by."""
    x, z = node.inputs[0], plan.back.outputs[0]
    if x is None or x not in needed or z not in needed:
        return
    groups = needed[z].reshape(plan.groups, -1).any(axis=1)
    needed[x] |= np.repeat(groups, needed[x].size // plan.groups)


def rewrite_group_norm(node: ir.Node, plan: GroupNormPlan, rw: ChannelRewrite) -> None:
    """Whole groups go: G in the first target, the channel count in the second, s and b by group."""
    x = node.inputs[0]
    assert x is not None
    kept = rw.kept(x)
    per = rw.count(x) // plan.groups
    groups = np.unique(kept // per)
    assert len(kept) == len(groups) * per, "GroupNorm lost part of a group"
    rw.set_shape_element(node, 1, len(groups))
    rw.set_shape_element(plan.back, 1, len(kept))
    for index in (1, 2):
        array = constant_array(plan.norm.inputs[index])
        assert array is not None
        rw.set_constant(plan.norm, index, array.reshape(-1)[groups])
    for value in (node.outputs[0], plan.norm.outputs[0]):
        if value.shape is not None:
            dims = list(value.shape)
            dims[1] = len(groups)
            value.shape = ir.Shape(dims)
