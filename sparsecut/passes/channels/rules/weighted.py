"""Ops that reduce over their input's channels with a constant weight: Conv (also grouped and depthwise),
ConvTranspose, Gemm, MatMul.

Output channel j is CONST(b_j + Σ_k ΣW[j,k]·c_k) when every weight reading a LIVE input is zero (and, for a padded
conv, every weight reading a nonzero constant — border pixels see a different sum). The rewrite keeps producer
rows W[kept], b[kept] and reader columns W[:, kept], after folding a removed channel's constant c into the bias —
conv without padding: b_j += Σ_rs W[j,k,r,s]·c; Gemm: C_j += α·Σ_k B[k,j]·c_k / β; MatMul: the following bias Add
gets Σ_k B[k,j]·c_k.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules.base import ChannelRule, Decline, Keep, Kind, P, Plan, channel_input, register
from sparsecut.passes.channels.spaces import FLOATING, ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import attr_float, attr_int, bias_array, constant_array, conv_padded, single_bias_add

if TYPE_CHECKING:
    from sparsecut.passes.channels.constraints import Coupling
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["ConvRule", "ConvTransposeRule", "GemmRule", "MatMulPlan", "MatMulRule"]

CONV = Plan(Kind.CONV)
DEPTHWISE = Plan(Kind.DEPTHWISE)
CONV_TRANSPOSE = Plan(Kind.CONV_TRANSPOSE)
GEMM = Plan(Kind.GEMM)


@dataclasses.dataclass(frozen=True, slots=True)
class MatMulPlan(Plan):
    bias_add: ir.Node | None  # the Add of a bias right after it, which absorbs constant input channels


class _WeightedRule(ChannelRule[P]):
    """Ops that reduce over their input's channels with a constant weight."""

    def reads(self, node: ir.Node, plan: P, walk: ChannelWalk) -> np.ndarray:
        """[input channel, output channel]: whether any weight of the pair is nonzero."""
        raise NotImplementedError

    def backward(self, node: ir.Node, plan: P, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        x = node.inputs[0]
        if x is None or x not in needed:
            return
        needed[x] |= self.reads(node, plan, walk) @ needed[node.outputs[0]]  # bool: any read by a needed output


def _reading(node: ir.Node, spaces: ChannelSpaces, reads: int, writes: int) -> ir.Value | Decline:
    """The input of a conv whose weight reads `reads` channels and writes `writes`, or why it cannot be read."""
    x = channel_input(node, spaces, 1)
    if isinstance(x, Decline):
        return x
    if spaces.count_of(x) != reads:
        return Decline(f"input has {spaces.count_of(x)} channels, the weight reads {reads}")
    if spaces.static_count(node.outputs[0], 1) != writes:
        return Decline("output channel count unknown")
    return x


@register
class ConvRule(_WeightedRule[Plan]):
    """Conv, weight [K, C/g, kH, kW]. Depthwise (groups = C = K): input k ↔ output k, one space. Otherwise output
    k is its own channel, read from the input's channels of its group; grouped convs lose equal counts per group."""

    op_types = ("Conv",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        w_value, y = node.inputs[1], node.outputs[0]
        kernel = spaces.kernel(w_value) if w_value is not None else None
        if kernel is None:
            return Decline("weight computed at run time")
        nonzero = kernel.nonzero  # [K, C/g]
        out_ch, per_group = nonzero.shape
        groups = attr_int(node, "group", 1)
        x = _reading(node, spaces, per_group * groups, out_ch)
        if isinstance(x, Decline):
            return x
        bias = bias_array(node, 2, out_ch)
        if bias is None:
            return Decline("bias computed at run time")
        padded = conv_padded(node)
        in_live, in_const = spaces.live[x], spaces.const[x]
        if groups > 1 and groups == out_ch and per_group == 1:  # depthwise, multiplier 1: input k ↔ output k
            spaces.register(y, 1, out_ch, like=x)
            w_nonzero = nonzero[:, 0]
            live = (in_live & w_nonzero) | (padded & (in_const != 0) & w_nonzero)
            spaces.set_state(y, live, bias + kernel.sums[:, 0] * in_const)
            spaces.gate(node, [~w_nonzero])  # an all-zero filter does not need its input channel
            return DEPTHWISE
        spaces.register(y, 1, out_ch)
        spaces.sink(x, node, f"constant read by padded conv {node.name!r}" if padded else None)
        if groups == 1:
            live = nonzero @ (in_live | (in_const != 0)) if padded else nonzero @ in_live  # bool: any of the ands
            spaces.set_state(y, live, bias + kernel.sums @ in_const if np.count_nonzero(in_const) else bias)
            return CONV
        live = np.zeros(out_ch, bool)
        out_per_group = out_ch // groups
        for g in range(groups):
            rows = slice(g * out_per_group, (g + 1) * out_per_group)
            cols = slice(g * per_group, (g + 1) * per_group)
            reaching = in_live[cols] | (in_const[cols] != 0) if padded else in_live[cols]
            live[rows] = nonzero[rows] @ reaching
            bias[rows] += kernel.sums[rows] @ in_const[cols]
        spaces.set_state(y, live, bias)
        return CONV

    def backward(self, node: ir.Node, plan: Plan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        if plan.kind is Kind.DEPTHWISE:
            ChannelRule.backward(self, node, plan, walk, needed)
        else:
            super().backward(node, plan, walk, needed)

    def constrain(self, node: ir.Node, plan: Plan, coupling: Coupling, removable: np.ndarray, keep: Keep) -> bool:
        """A grouped conv loses channels in equal numbers per group, on both sides."""
        groups = attr_int(node, "group", 1)
        if plan.kind is not Kind.CONV or groups == 1:
            return False
        changed = False
        for value in (node.inputs[0], node.outputs[0]):
            assert value is not None
            span = coupling.span(value)
            mask = removable[span].reshape(groups, -1)
            fewest = int(mask.sum(axis=1).min())
            for g in range(groups):
                extra = np.flatnonzero(mask[g])[fewest:]
                if len(extra):
                    reason = f"grouped conv {node.name!r} needs equal counts per group"
                    keep(removable, span.start + g * mask.shape[1] + extra, reason)
                    changed = True
        return changed

    def reads(self, node: ir.Node, plan: Plan, walk: ChannelWalk) -> np.ndarray:
        kernel = walk.kernel(node.inputs[1])  # type: ignore[arg-type]
        assert kernel is not None
        groups = attr_int(node, "group", 1)
        if groups == 1:
            return kernel.nonzero.T
        out_ch, per_group = kernel.nonzero.shape
        rows = out_ch // groups
        reads = np.zeros((per_group * groups, out_ch), bool)
        for g in range(groups):
            reads[g * per_group : (g + 1) * per_group, g * rows : (g + 1) * rows] = kernel.nonzero[
                g * rows : (g + 1) * rows
            ].T
        return reads

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = rw.weight(node.inputs[1])
        bias = rw.bias(node, 2, weight.shape[0])
        kept = rw.kept(y)
        if plan.kind is Kind.DEPTHWISE:
            rw.set_constant(node, 1, weight[kept])
            rw.set_bias(node, 2, bias[kept], weight.dtype)
            node.attributes["group"] = ir.AttrInt64("group", len(kept))
            return
        groups = attr_int(node, "group", 1)
        if groups == 1:
            weight = weight[kept]
            correction = None
            if rw.has_removals(x):
                removed = rw.removed(x)
                const = rw.constants(x)[removed]
                if const.any():  # removed constant channels: their share goes into the bias
                    kernel = rw.kernel(node.inputs[1])
                    assert kernel is not None
                    correction = kernel.sums[:, removed] @ const
            if rw.changed(x):
                weight = weight[:, rw.kept(x)]  # in the new order
            rw.set_constant(node, 1, weight)
            if correction is not None or (len(node.inputs) > 2 and node.inputs[2] is not None):
                bias = bias if correction is None else bias + correction
                rw.set_bias(node, 2, bias[kept], weight.dtype)
            return
        out_ch, per_group = weight.shape[:2]
        if rw.has_removals(x):
            removed = rw.removed(x).reshape(groups, per_group)
            const = rw.constants(x).reshape(groups, per_group)
            kernel = rw.kernel(node.inputs[1])
            assert kernel is not None
            rows_per_group = out_ch // groups
            for g in range(groups):
                rows = slice(g * rows_per_group, (g + 1) * rows_per_group)
                bias[rows] += kernel.sums[rows][:, removed[g]] @ const[g][removed[g]]
            weight = np.concatenate(
                [weight[g * rows_per_group : (g + 1) * rows_per_group][:, ~removed[g]] for g in range(groups)]
            )
        weight = weight[kept]  # (a grouped conv's channels are never reordered)
        rw.set_constant(node, 1, weight)
        rw.set_bias(node, 2, bias[kept], weight.dtype)


@register
class ConvTransposeRule(_WeightedRule[Plan]):
    """ConvTranspose (decoders, U-Nets, GANs), weight [C_in, C_out/g, kH, kW] — the reverse of Conv's. Output
    channel k is bias_k + Σ_c W[c, k] ⊛ x_c: dead when no live input reaches it through a nonzero filter. A
    constant input channel reaches each output pixel a position-dependent number of times (stride, padding), so it
    is never absorbed into the bias: only ZERO input channels go (the bias needs no correction). Groups other
    than 1: no rule."""

    op_types = ("ConvTranspose",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        w_value, y = node.inputs[1], node.outputs[0]
        weight = spaces.weight(w_value) if w_value is not None else None
        if weight is None or weight.ndim < 3:
            return Decline("weight computed at run time")
        if attr_int(node, "group", 1) != 1:
            return Decline(f"group={attr_int(node, 'group', 1)}")
        in_ch, out_ch = weight.shape[:2]
        x = _reading(node, spaces, in_ch, out_ch)
        if isinstance(x, Decline):
            return x
        bias = bias_array(node, 2, out_ch)
        if bias is None:
            return Decline("bias computed at run time")
        spaces.register(y, 1, out_ch)
        spaces.sink(x, node, f"constant read by ConvTranspose {node.name!r}")
        reads = np.any(weight != 0, axis=tuple(range(2, weight.ndim)))  # [C_in, C_out]
        reaching = spaces.live[x] | (spaces.const[x] != 0)
        spaces.set_state(y, np.any(reads & reaching[:, None], axis=0), bias.astype(np.float64))
        return CONV_TRANSPOSE

    def reads(self, node: ir.Node, plan: Plan, walk: ChannelWalk) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return np.any(weight != 0, axis=tuple(range(2, weight.ndim)))

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = rw.weight(node.inputs[1])
        bias = rw.bias(node, 2, weight.shape[1])
        if rw.changed(x):
            weight = weight[rw.kept(x)]
        kept = rw.kept(y)
        rw.set_constant(node, 1, weight[:, kept])
        rw.set_bias(node, 2, bias[kept], weight.dtype)


@register
class GemmRule(_WeightedRule[Plan]):
    """Gemm y = α·A·B + β·C (B [K, N], or [N, K] with transB); transA: no rule. β = 0 ignores C, so a constant
    input channel cannot be absorbed: no rule either (kept whole)."""

    op_types = ("Gemm",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        a, y = node.inputs[0], node.outputs[0]
        if a is None or len(node.inputs) < 2 or node.inputs[1] is None:
            return Decline("fewer than two inputs")
        if attr_int(node, "transA", 0):
            return Decline("transA=1 (its input is read transposed)")
        b = spaces.weight(node.inputs[1])
        if b is None or b.ndim != 2:
            return Decline("B computed at run time")
        why = spaces.ensure(a, 1)
        if why:
            return Decline(why)
        b = b.T if attr_int(node, "transB", 0) else b  # [K, N]
        alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
        if beta == 0:
            return Decline("beta=0 (C is ignored: no bias to absorb a constant)")
        n = b.shape[1]
        c = bias_array(node, 2, n)
        if c is None:
            return Decline("C computed at run time")
        if spaces.count_of(a) != b.shape[0]:
            return Decline(f"input has {spaces.count_of(a)} channels, B reads {b.shape[0]}")
        spaces.register(y, 1, n)
        spaces.sink(a, node, None)
        live = np.any((b != 0) & spaces.live[a][:, None], axis=0)
        spaces.set_state(y, live, alpha * (spaces.const[a] @ b) + beta * c)
        return GEMM

    def reads(self, node: ir.Node, plan: Plan, walk: ChannelWalk) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return (weight.T if attr_int(node, "transB", 0) else weight) != 0

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        trans_b = attr_int(node, "transB", 0)
        b = rw.weight(node.inputs[1])
        b = b.T if trans_b else b  # [K, N]
        alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
        c = rw.bias(node, 2, b.shape[1])
        if rw.has_removals(a):
            removed = rw.removed(a)
            c += alpha * (rw.constants(a)[removed] @ b[removed].astype(np.float64)) / beta
        b = b[rw.kept(a)] if rw.changed(a) else b
        kept = rw.kept(y)
        b = b[:, kept]
        rw.set_constant(node, 1, b.T if trans_b else b)
        rw.set_bias(node, 2, c[kept], b.dtype)


@register
class MatMulRule(_WeightedRule[MatMulPlan]):
    """MatMul by a constant B [K, N] on the last axis (transformer MLPs as dynamo exports nn.Linear). A constant
    input channel is absorbed only by the bias Add that follows (`single_bias_add`). An input no rule knows the
    channels of and of no static size (an attention's output, reshaped at run time) is opaque: every channel of it
    stays, and the output's channels are still B's columns — a zero column is a zero channel (o_proj's dead rows
    in a decoder's residual stream)."""

    op_types = ("MatMul",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> MatMulPlan | Decline:
        a, b_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if a is None or b_value is None or y.shape is None or a.shape is None:
            return Decline("an input or output of unknown rank")
        b = spaces.weight(b_value)
        if b is None or b.ndim != 2:
            return Decline("B is not a constant matrix (a product of two activations)")
        if constant_array(a) is not None:
            return Decline("A is a constant")
        why = spaces.ensure(a, -1)
        if why and a not in spaces.axis and spaces.static_count(y, -1) == b.shape[1] and a.dtype in FLOATING:
            spaces.register(y, len(y.shape) - 1, b.shape[1])  # opaque input: all of its channels LIVE and kept
            spaces.set_state(y, np.any(b != 0, axis=0), np.zeros(b.shape[1]))
            return MatMulPlan(Kind.MATMUL, single_bias_add(y, b.shape[1]))
        if why:
            return Decline(why)
        if spaces.count_of(a) != b.shape[0]:
            return Decline(f"A has {spaces.count_of(a)} channels, B reads {b.shape[0]}")
        if spaces.static_count(y, -1) != b.shape[1]:
            return Decline("output feature count unknown")
        spaces.register(y, len(y.shape) - 1, b.shape[1])
        bias_add = single_bias_add(y, b.shape[1])
        spaces.sink(a, node, None if bias_add is not None else f"constant read by MatMul {node.name!r} with no bias")
        live = np.any((b != 0) & spaces.live[a][:, None], axis=0)
        spaces.set_state(y, live, spaces.const[a] @ b)
        return MatMulPlan(Kind.MATMUL, bias_add)

    def reads(self, node: ir.Node, plan: MatMulPlan, walk: ChannelWalk) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return weight != 0

    def rewrite(self, node: ir.Node, plan: MatMulPlan, rw: ChannelRewrite) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        b = rw.weight(node.inputs[1])
        if rw.has_removals(a):
            removed = rw.removed(a)
            shift = rw.constants(a)[removed] @ b[removed].astype(np.float64)
            if np.any(shift != 0):
                add = plan.bias_add
                assert add is not None  # without one, the analysis kept every constant channel (its sink refused)
                index = 1 if add.inputs[0] is y else 0
                bias = constant_array(add.inputs[index])
                assert bias is not None
                rw.set_constant(add, index, (bias.astype(np.float64) + shift).astype(bias.dtype))
        b = b[rw.kept(a)] if rw.changed(a) else b
        rw.set_constant(node, 1, b[:, rw.kept(y)])
