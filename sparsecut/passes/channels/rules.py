"""Channel rules: one class per op family — how channels flow through it, which constants it absorbs, and how it
is rewritten when channels go. Registered by op type; a class without a rewrite cannot be registered.

Channel states (see `spaces.py`) propagate forward in topological order. Conv/Gemm/MatMul output j is
CONST(b_j + Σ_k ΣW[j,k]·c_k) when every weight reading a LIVE input is zero (and, for a padded conv, every weight
reading a nonzero constant — border pixels see a different sum); BatchNorm maps c to γ(c − μ)/σ + β (γ = 0 gives
β); elementwise ops are evaluated on the constants (Sigmoid(0) = 0.5, not zero); Mul by ZERO gives ZERO.

The rewrite, per node: producers keep output rows W[kept], b[kept]; reducing consumers keep input columns
W[:, kept], after folding a removed channel's constant c into the bias — conv without padding:
b_j += Σ_rs W[j,k,r,s]·c; Gemm: C_j += α·Σ_k B[k,j]·c_k / β; MatMul: the following bias Add gets Σ_k B[k,j]·c_k.
Per-channel parameters (BatchNorm, constant operands) and shape constants (Reshape, Split, Slice, Resize) follow.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, cast

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.spaces import FLOATING, ChannelSpaces
from sparsecut.passes.nodes import (
    attr_float,
    attr_int,
    attr_ints,
    bias_array,
    constant_array,
    conv_padded,
    per_channel,
    reduce_axes,
    same_dim,
    shape_element,
    single_bias_add,
    slice_bounds,
)

if TYPE_CHECKING:
    from sparsecut.passes.channels.analysis import DeadChannelAnalysis
    from sparsecut.passes.channels.rewrite import ChannelRewrite

Keep = Callable[[np.ndarray, np.ndarray, str], None]  # keep(removable, channels (global index), reason)

__all__ = ["ORDER_FREE", "READERS", "RULES", "ChannelRule", "Keep", "Kind", "register", "rule_for"]


class Kind(enum.Enum):
    """What a rule made of a node."""

    CONSTANT = "constant"  # computes on constants only (a Transpose of a weight, a Constant)
    SHAPE = "shape"  # reads a shape, not values
    PASSTHROUGH = "passthrough"  # carries its input's channels unchanged
    ELEMENTWISE = "elementwise"
    BATCHNORM = "batchnorm"
    LAYERNORM = "layernorm"
    CONV = "conv"
    DEPTHWISE = "depthwise"
    CONV_TRANSPOSE = "convtranspose"
    GEMM = "gemm"
    MATMUL = "matmul"
    CONCAT = "concat"
    SPLIT = "split"
    SLICE = "slice"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    SHUFFLE = "shuffle"  # Reshape (groups, C/g) → Transpose → Reshape: a channel permutation
    ATTENTION = "attention"  # the first node of a multi-head attention block (attention.py)
    CLAIMED = "claimed"  # part of a pattern whose first node's rule covers it


# kinds whose result does not depend on the order of the channels they carry (when the rewrite follows it)
ORDER_FREE = frozenset(
    {
        Kind.PASSTHROUGH,
        Kind.ELEMENTWISE,
        Kind.BATCHNORM,
        Kind.DEPTHWISE,
        Kind.SHAPE,
        Kind.RESHAPE,
        Kind.FLATTEN,
        Kind.CONV,
        Kind.GEMM,
        Kind.MATMUL,
    }
)
READERS = frozenset({Kind.CONV, Kind.GEMM, Kind.MATMUL})  # reduce over their input's channels with a weight


class ChannelRule:
    """How channels flow through the ops in `op_types`. `analyze` registers the outputs' channel spaces and states
    (returns None when the node is outside what the rule understands: it becomes a barrier); `backward` says which
    input channels can reach a needed output channel; `rewrite` edits the node for the channels that go."""

    op_types: ClassVar[tuple[str, ...]] = ()
    holds_constants: ClassVar[bool] = True  # False: nothing in the node depends on the channel count

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        raise NotImplementedError

    def backward(self, node: ir.Node, kind: Kind, walk: ChannelSpaces, needed: dict[ir.Value, np.ndarray]) -> None:
        """Input channels that can influence a needed output channel become needed. By default through the node's
        index maps, or channel k to channel k (minus gated channels); an input broadcast over channels is needed
        whole."""
        maps = walk.node_maps.get(node)
        if maps is not None:
            for a, ia, b, ib in maps:
                np.logical_or.at(needed[a], ia, needed[b][ib])
            return
        outputs = [needed[o] for o in node.outputs if o in needed]
        if not outputs:
            return  # nothing of this node is needed
        out = outputs[0] if len(outputs) == 1 else np.any(outputs, axis=0)
        gates = walk.gates.get(node)
        space = walk.space_of[node.outputs[0]]
        for i, v in enumerate(node.inputs):
            mine = needed.get(v) if v is not None else None
            if v is None or mine is None:
                continue
            if walk.space_of[v] == space:
                mine |= out & ~gates[i] if gates is not None else out
            elif out.any():
                mine[:] = True

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        raise NotImplementedError

    def touched(self, node: ir.Node, rw: ChannelRewrite) -> bool:
        """Whether the rewrite must visit `node`: some tensor it reads or writes changes."""
        return any(rw.changed(v) for v in (*node.inputs, *node.outputs))

    def constrain(self, node: ir.Node, a: DeadChannelAnalysis, removable: np.ndarray, keep: Keep) -> bool:
        """Keep channels (with `keep`) until the counts that go suit this node; True when it kept any. Called until
        no rule keeps more (see constraints.py)."""
        return False


RULES: dict[str, ChannelRule] = {}


def register(cls: type[ChannelRule]) -> type[ChannelRule]:
    """Register a rule for its op types. Its rewrite must be its own: analysis without a rewrite would let the
    node be skipped silently when channels go."""
    if cls.rewrite is ChannelRule.rewrite or cls.analyze is ChannelRule.analyze:
        raise TypeError(f"{cls.__name__}: a channel rule needs both analyze and rewrite")
    if not cls.op_types:
        raise TypeError(f"{cls.__name__}: a channel rule needs op_types")
    if not cls.holds_constants and cls.rewrite is not _NoConstants.rewrite:
        raise TypeError(f"{cls.__name__}: a rule whose rewrite edits the node holds constants; the rewrite skips it")
    taken = [op for op in cls.op_types if op in RULES]
    if taken:
        raise TypeError(f"{cls.__name__}: {taken[0]} already has a rule ({type(RULES[taken[0]]).__name__})")
    rule = cls()
    for op in cls.op_types:
        RULES[op] = rule
    return cls


def rule_for(node: ir.Node) -> ChannelRule | None:
    return RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None


class _NoConstants(ChannelRule):
    """Rules of ops that hold nothing depending on the channel count: the new shapes are all their rewrite is."""

    holds_constants = False

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        pass


# ---------------------------------------------------------------------------------------------- elementwise
_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Relu": lambda x: np.maximum(x, 0.0),
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": np.tanh,
    "Erf": lambda x: np.vectorize(math.erf)(x) if x.size else x,
    "Exp": np.exp,
    "Neg": np.negative,
    "Abs": np.abs,
    "Sqrt": np.sqrt,
    "Identity": lambda x: x,
    "Dropout": lambda x: x,  # inference: identity
    "Cast": lambda x: x,
    "Softplus": lambda x: np.log1p(np.exp(x)),
    "Softsign": lambda x: x / (1.0 + np.abs(x)),
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Reciprocal": lambda x: 1.0 / x,
}
_UNARY_WITH_ATTRS = ("LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu", "Celu", "Mish", "Clip")
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
    "PRelu": lambda x, slope: np.where(x < 0, slope * x, x),
}


@register
class UnaryRule(_NoConstants):
    """y_k = f(x_k): a constant channel maps to f(c), computed."""

    op_types = (*_UNARY, *_UNARY_WITH_ATTRS)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or not walk.ensure(x, walk.default_axis(x)):
            return None
        fn = _unary_function(node)
        if fn is None:
            return None
        walk.register(y, walk.axis[x], walk.count_of(x), like=x)
        live = walk.live[x]
        # (an all-LIVE input has no constant to map: a LIVE channel's constant is never read)
        walk.set_state(y, live, walk.const[x] if live.all() else fn(walk.const[x]))
        return Kind.PASSTHROUGH


@register
class ElementwiseRule(ChannelRule):
    """Broadcasting ops: operands with the output's channel count share its space; constant operands are per
    channel (sliced by the rewrite) or scalar; Mul by a ZERO channel makes it ZERO whatever the other factor."""

    op_types = (*_BINARY, "Sum", "Mean")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        y = node.outputs[0]
        if y.shape is None or (node.op_type in _BINARY and len(node.inputs) != 2):
            return None
        if node.op_type in _BINARY and self._same_channels(node, walk):
            return Kind.ELEMENTWISE
        rank = len(y.shape)
        arrays = [constant_array(v) for v in node.inputs]
        dynamic = [v for v, array in zip(node.inputs, arrays, strict=True) if v is not None and array is None]
        if not dynamic:
            return None
        # the output's channel axis: the first registered dynamic operand's, aligned from the right
        axis = next(
            (walk.axis[v] + rank - len(v.shape) for v in dynamic if v in walk.axis and v.shape is not None), None
        )
        if axis is None:  # no operand seen yet: the axis the first one's readers want
            first = dynamic[0]
            axis = walk.default_axis(first) + rank - len(first.shape) if first.shape is not None else 1
            axis = axis if 0 <= axis < rank else (1 if rank > 1 else 0)
        count = walk.static_count(y, axis)
        if count is None:
            return None
        walk.register(y, axis, count)
        lives, consts = [], []
        everywhere, nowhere, naught = np.ones(count, bool), np.zeros(count, bool), np.zeros(count)
        for v, array in zip(node.inputs, arrays, strict=True):
            if v is None or v.shape is None:
                return None
            operand_axis = axis - (rank - len(v.shape))
            extent = v.shape[operand_axis] if operand_axis >= 0 else 1
            if array is not None:
                values = per_channel(array, operand_axis, count)
                if values is None:  # varies along other axes: not a per-channel constant
                    lives.append(everywhere)
                    consts.append(naught)
                else:
                    lives.append(nowhere)
                    consts.append(values)
                continue
            if extent == count:
                if not walk.ensure(v, operand_axis) or walk.count_of(v) != count:
                    return None
                walk.link(v, y)
                lives.append(walk.live[v])
                consts.append(walk.const[v])
            elif extent == 1:  # a dynamic tensor broadcast over channels: LIVE for every channel
                lives.append(everywhere)
                consts.append(naught)
            else:
                return None
        zeros = (
            [~live & (const == 0) for live, const in zip(lives, consts, strict=True)] if node.op_type == "Mul" else []
        )
        live, const = _combine(node.op_type, lives, consts, zeros)
        walk.set_state(y, live, const)
        if node.op_type == "Mul":  # x · 0 = 0: a channel zeroed by one factor is not needed from the others
            walk.gates[node] = [np.any([z for j, z in enumerate(zeros) if j != i], axis=0) for i in range(len(zeros))]
        return Kind.ELEMENTWISE

    @staticmethod
    def _same_channels(node: ir.Node, walk: ChannelSpaces) -> bool:
        """The usual case in fewer steps (a residual Add, an SE Mul after its Expand): two dynamic operands of the
        output's rank that carry channels on the same axis, as many as the output. False: not this case, nothing
        registered."""
        a, b = node.inputs
        y = node.outputs[0]
        if a is None or b is None:
            return False
        axis = walk.axis.get(a)
        if axis is None or walk.axis.get(b) != axis or a.const_value is not None:
            return False
        rank = len(y.shape)  # type: ignore[arg-type]
        if a.shape is None or b.shape is None or len(a.shape) != rank or len(b.shape) != rank:
            return False
        count = walk.static_count(y, axis)
        if count is None or a.shape[axis] != count or b.shape[axis] != count or b.const_value is not None:
            return False
        if walk.count_of(a) != count or walk.count_of(b) != count:
            return False
        if (a.dtype is not None and a.dtype not in FLOATING) or (b.dtype is not None and b.dtype not in FLOATING):
            return False  # shapes, indices and masks carry no channels (as `ensure` says)
        walk.register(y, axis, count)
        walk.link(a, y)
        walk.link(b, y)
        lives, consts = [walk.live[a], walk.live[b]], [walk.const[a], walk.const[b]]
        mul = node.op_type == "Mul"
        zeros = [~live & (const == 0) for live, const in zip(lives, consts, strict=True)] if mul else []
        live, const = _combine(node.op_type, lives, consts, zeros)
        walk.set_state(y, live, const)
        if mul:
            walk.gates[node] = [zeros[1], zeros[0]]
        return True

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        y = node.outputs[0]
        if not rw.changed(y) or y.shape is None:
            return
        axis, count, kept = rw.analysis.axis[y], rw.count(y), rw.kept(y)
        rank = len(y.shape)
        for index, value in enumerate(node.inputs):
            array = constant_array(value)
            if array is None or value is None or value.shape is None:
                continue
            operand_axis = axis - (rank - len(value.shape))
            if operand_axis >= 0 and array.ndim > operand_axis and array.shape[operand_axis] == count:
                rw.set_constant(node, index, np.take(array, kept, axis=operand_axis))


def _combine(
    op: str, lives: list[np.ndarray], consts: list[np.ndarray], zeros: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    if op in ("Sum", "Mean"):
        const = np.sum(consts, axis=0) / (len(consts) if op == "Mean" else 1)
        return np.any(lives, axis=0), const
    a, b = consts
    const = _BINARY[op](a, b)
    live = lives[0] | lives[1]
    if op == "Mul":  # 0 · x = 0 whatever x is (x finite: activations are)
        zero = zeros[0] | zeros[1]
        return live & ~zero, np.where(zero, 0.0, const)
    return live, const


def _unary_function(node: ir.Node) -> Callable[[np.ndarray], np.ndarray] | None:
    op = node.op_type
    if op in _UNARY:
        return _UNARY[op]
    alpha = attr_float(node, "alpha", {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Elu": 1.0, "Celu": 1.0}.get(op, 1.67326))
    if op == "LeakyRelu":
        return lambda x: np.where(x < 0, alpha * x, x)
    if op == "HardSigmoid":
        beta = attr_float(node, "beta", 0.5)
        return lambda x: np.clip(alpha * x + beta, 0, 1)
    if op == "HardSwish":
        return lambda x: x * np.clip(x / 6 + 0.5, 0, 1)
    if op == "Elu":
        return lambda x: np.where(x < 0, alpha * (np.exp(x) - 1), x)
    if op == "Celu":
        return lambda x: np.maximum(0, x) + np.minimum(0, alpha * (np.exp(x / alpha) - 1))
    if op == "Selu":
        gamma = attr_float(node, "gamma", 1.0507)
        return lambda x: gamma * np.where(x <= 0, alpha * (np.exp(x) - 1), x)
    if op == "Mish":
        return lambda x: x * np.tanh(np.log1p(np.exp(x)))
    if op == "Gelu":
        approximate = node.attributes.get("approximate")
        if approximate is not None and approximate.as_string() == "tanh":
            return lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
        return lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    if op == "Clip":
        bounds = [constant_array(v) if v is not None else None for v in node.inputs[1:3]]
        if any(v is not None and b is None for v, b in zip(node.inputs[1:3], bounds, strict=False)):
            return None
        low = -np.inf if len(bounds) < 1 or bounds[0] is None else float(bounds[0])
        high = np.inf if len(bounds) < 2 or bounds[1] is None else float(bounds[1])
        if "min" in node.attributes:
            low = node.attributes["min"].as_float()
        if "max" in node.attributes:
            high = node.attributes["max"].as_float()
        return lambda x: np.clip(x, low, high)
    return None


# ---------------------------------------------------------------------------------------------- weighted ops
class _WeightedRule(ChannelRule):
    """Ops that reduce over their input's channels with a constant weight."""

    def reads(self, node: ir.Node, kind: Kind, walk: ChannelSpaces) -> np.ndarray:
        """[input channel, output channel]: whether any weight of the pair is nonzero."""
        raise NotImplementedError

    def backward(self, node: ir.Node, kind: Kind, walk: ChannelSpaces, needed: dict[ir.Value, np.ndarray]) -> None:
        x = node.inputs[0]
        if x is None or x not in needed:
            return
        needed[x] |= self.reads(node, kind, walk) @ needed[node.outputs[0]]  # bool: any read by a needed output


@register
class ConvRule(_WeightedRule):
    """Conv, weight [K, C/g, kH, kW]. Depthwise (groups = C = K): input k ↔ output k, one space. Otherwise output
    k is its own channel, read from the input's channels of its group; grouped convs lose equal counts per group."""

    op_types = ("Conv",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, w_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        kernel = walk.kernel(w_value) if w_value is not None else None
        if x is None or kernel is None or not walk.ensure(x, 1):
            return None
        nonzero = kernel.nonzero  # [K, C/g]
        out_ch, per_group = nonzero.shape
        bias = bias_array(node, 2, out_ch)
        if bias is None:
            return None
        groups = attr_int(node, "group", 1)
        padded = conv_padded(node)
        if walk.count_of(x) != per_group * groups or walk.static_count(y, 1) != out_ch:
            return None
        in_live, in_const = walk.live[x], walk.const[x]
        if groups > 1 and groups == out_ch and per_group == 1:  # depthwise, multiplier 1: input k ↔ output k
            walk.register(y, 1, out_ch, like=x)
            w_nonzero = nonzero[:, 0]
            live = (in_live & w_nonzero) | (padded & (in_const != 0) & w_nonzero)
            walk.set_state(y, live, bias + kernel.sums[:, 0] * in_const)
            walk.gates[node] = [~w_nonzero]  # an all-zero filter does not need its input channel
            return Kind.DEPTHWISE
        walk.register(y, 1, out_ch)
        walk.sink(x, node, f"constant read by padded conv {node.name!r}" if padded else None)
        if groups == 1:
            live = nonzero @ (in_live | (in_const != 0)) if padded else nonzero @ in_live  # bool: any of the ands
            walk.set_state(y, live, bias + kernel.sums @ in_const if np.count_nonzero(in_const) else bias)
            return Kind.CONV
        live = np.zeros(out_ch, bool)
        out_per_group = out_ch // groups
        for g in range(groups):
            rows = slice(g * out_per_group, (g + 1) * out_per_group)
            cols = slice(g * per_group, (g + 1) * per_group)
            reaching = in_live[cols] | (in_const[cols] != 0) if padded else in_live[cols]
            live[rows] = nonzero[rows] @ reaching
            bias[rows] += kernel.sums[rows] @ in_const[cols]
        walk.set_state(y, live, bias)
        return Kind.CONV

    def backward(self, node: ir.Node, kind: Kind, walk: ChannelSpaces, needed: dict[ir.Value, np.ndarray]) -> None:
        if kind is Kind.DEPTHWISE:
            ChannelRule.backward(self, node, kind, walk, needed)
        else:
            super().backward(node, kind, walk, needed)

    def constrain(self, node: ir.Node, a: DeadChannelAnalysis, removable: np.ndarray, keep: Keep) -> bool:
        """A grouped conv loses channels in equal numbers per group, on both sides."""
        groups = attr_int(node, "group", 1)
        if a.kinds.get(node) is not Kind.CONV or groups == 1:
            return False
        changed = False
        for value in (node.inputs[0], node.outputs[0]):
            assert value is not None
            s = a.space_of[value]
            mask = removable[a.offsets[s] : a.offsets[s + 1]].reshape(groups, -1)
            fewest = int(mask.sum(axis=1).min())
            for g in range(groups):
                extra = np.flatnonzero(mask[g])[fewest:]
                if len(extra):
                    reason = f"grouped conv {node.name!r} needs equal counts per group"
                    keep(removable, a.offsets[s] + g * mask.shape[1] + extra, reason)
                    changed = True
        return changed

    def reads(self, node: ir.Node, kind: Kind, walk: ChannelSpaces) -> np.ndarray:
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

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = rw.analysis.weight(node.inputs[1])
        assert weight is not None
        bias = rw.bias(node, 2, weight.shape[0])
        kept = rw.kept(y)
        if kind is Kind.DEPTHWISE:
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
                    kernel = rw.analysis.walk.kernel(node.inputs[1])
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
            kernel = rw.analysis.walk.kernel(node.inputs[1])
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
class ConvTransposeRule(_WeightedRule):
    """ConvTranspose (decoders, U-Nets, GANs), weight [C_in, C_out/g, kH, kW] — the reverse of Conv's. Output
    channel k is bias_k + Σ_c W[c, k] ⊛ x_c: dead when no live input reaches it through a nonzero filter. A
    constant input channel reaches each output pixel a position-dependent number of times (stride, padding), so it
    is never absorbed into the bias: only ZERO input channels go (the bias needs no correction). Groups other
    than 1: no rule."""

    op_types = ("ConvTranspose",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, w_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight = walk.weight(w_value) if w_value is not None else None
        if x is None or weight is None or weight.ndim < 3 or attr_int(node, "group", 1) != 1:
            return None
        if not walk.ensure(x, 1):
            return None
        in_ch, out_ch = weight.shape[:2]
        bias = bias_array(node, 2, out_ch)
        if bias is None or walk.count_of(x) != in_ch or walk.static_count(y, 1) != out_ch:
            return None
        walk.register(y, 1, out_ch)
        walk.sink(x, node, f"constant read by ConvTranspose {node.name!r}")
        reads = np.any(weight != 0, axis=tuple(range(2, weight.ndim)))  # [C_in, C_out]
        reaching = walk.live[x] | (walk.const[x] != 0)
        walk.set_state(y, np.any(reads & reaching[:, None], axis=0), bias.astype(np.float64))
        return Kind.CONV_TRANSPOSE

    def reads(self, node: ir.Node, kind: Kind, walk: ChannelSpaces) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return np.any(weight != 0, axis=tuple(range(2, weight.ndim)))

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        weight = rw.analysis.weight(node.inputs[1])
        assert weight is not None
        bias = rw.bias(node, 2, weight.shape[1])
        if rw.changed(x):
            weight = weight[rw.kept(x)]
        kept = rw.kept(y)
        rw.set_constant(node, 1, weight[:, kept])
        rw.set_bias(node, 2, bias[kept], weight.dtype)


@register
class GemmRule(_WeightedRule):
    """Gemm y = α·A·B + β·C (B [K, N], or [N, K] with transB); transA: no rule. β = 0 ignores C, so a constant
    input channel cannot be absorbed: no rule either (kept whole)."""

    op_types = ("Gemm",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        a, y = node.inputs[0], node.outputs[0]
        if a is None or len(node.inputs) < 2 or node.inputs[1] is None or attr_int(node, "transA", 0):
            return None
        b = walk.weight(node.inputs[1])
        if b is None or b.ndim != 2 or not walk.ensure(a, 1):
            return None
        b = b.T if attr_int(node, "transB", 0) else b  # [K, N]
        alpha, beta = attr_float(node, "alpha", 1.0), attr_float(node, "beta", 1.0)
        if beta == 0:
            return None
        n = b.shape[1]
        c = bias_array(node, 2, n)
        if c is None or walk.count_of(a) != b.shape[0]:
            return None
        walk.register(y, 1, n)
        walk.sink(a, node, None)
        live = np.any((b != 0) & walk.live[a][:, None], axis=0)
        walk.set_state(y, live, alpha * (walk.const[a] @ b) + beta * c)
        return Kind.GEMM

    def reads(self, node: ir.Node, kind: Kind, walk: ChannelSpaces) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return (weight.T if attr_int(node, "transB", 0) else weight) != 0

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        trans_b = attr_int(node, "transB", 0)
        b = rw.analysis.weight(node.inputs[1])
        assert b is not None
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
class MatMulRule(_WeightedRule):
    """MatMul by a constant B [K, N] on the last axis (transformer MLPs as dynamo exports nn.Linear). A constant
    input channel is absorbed only by the bias Add that follows (`single_bias_add`)."""

    op_types = ("MatMul",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        a, b_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if a is None or b_value is None or y.shape is None or a.shape is None:
            return None
        b = walk.weight(b_value)
        if b is None or b.ndim != 2 or constant_array(a) is not None or not walk.ensure(a, -1):
            return None
        if walk.count_of(a) != b.shape[0] or walk.static_count(y, -1) != b.shape[1]:
            return None
        walk.register(y, len(y.shape) - 1, b.shape[1])
        bias_add = single_bias_add(y, b.shape[1])
        if bias_add is not None:
            walk.facts[node] = bias_add
        walk.sink(a, node, None if bias_add is not None else f"constant read by MatMul {node.name!r} with no bias")
        live = np.any((b != 0) & walk.live[a][:, None], axis=0)
        walk.set_state(y, live, walk.const[a] @ b)
        return Kind.MATMUL

    def reads(self, node: ir.Node, kind: Kind, walk: ChannelSpaces) -> np.ndarray:
        weight = walk.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        return weight != 0

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        a, y = node.inputs[0], node.outputs[0]
        assert a is not None and node.inputs[1] is not None
        b = rw.analysis.weight(node.inputs[1])
        assert b is not None
        if rw.has_removals(a):
            removed = rw.removed(a)
            shift = rw.constants(a)[removed] @ b[removed].astype(np.float64)
            if np.any(shift != 0):
                add = rw.analysis.facts[node]
                assert isinstance(add, ir.Node)
                index = 1 if add.inputs[0] is y else 0
                bias = constant_array(add.inputs[index])
                assert bias is not None
                rw.set_constant(add, index, (bias.astype(np.float64) + shift).astype(bias.dtype))
        b = b[rw.kept(a)] if rw.changed(a) else b
        rw.set_constant(node, 1, b[:, rw.kept(y)])


# ---------------------------------------------------------------------------------------------- normalizations
@register
class BatchNormRule(ChannelRule):
    """y_k = γ_k(x_k − μ_k)/σ_k + β_k: a constant c maps to γ(c − μ)/σ + β; γ_k = 0 makes channel k CONST(β_k)
    whatever the input (the input channel is then not needed)."""

    op_types = ("BatchNormalization",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        params = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        if x is None or (len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:])):
            return None
        if any(p is None for p in params) or not walk.ensure(x, 1):
            return None
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        eps = attr_float(node, "epsilon", 1e-5)
        walk.register(y, 1, walk.count_of(x), like=x)
        scale = gamma / np.sqrt(var + eps)
        walk.set_state(y, walk.live[x] & (gamma != 0), scale * (walk.const[x] - mean) + beta)
        walk.gates[node] = [gamma == 0]
        return Kind.BATCHNORM

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        kept = rw.kept(node.outputs[0])
        for index in range(1, 5):
            array = constant_array(node.inputs[index])
            assert array is not None
            rw.set_constant(node, index, array.reshape(-1)[kept])


@register
class LayerNormRule(_NoConstants):
    """LayerNormalization over the channel axis (the last, as ConvNeXt and transformers normalize): its output
    carries the input's channels, but none of them can go — a dead channel still counts in the mean and the
    variance of the others, and γ, β are laid out over all of them. Both sides keep every channel, and the
    channel axis is known past it (a Transpose back to channels-first reads it right)."""

    op_types = ("LayerNormalization",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or constant_array(x) is not None:
            return None
        rank = len(x.shape)
        if rank < 2 or attr_int(node, "axis", -1) % rank != rank - 1 or not walk.ensure(x, rank - 1):
            return None
        count = walk.count_of(x)
        walk.register(y, rank - 1, count)
        walk.set_state(y, np.ones(count, bool), np.zeros(count))
        reason = f"normalized by LayerNormalization {node.name!r} (a dead channel still counts in its statistics)"
        walk.veto(x, reason)
        walk.veto(y, reason)
        return Kind.LAYERNORM


# ---------------------------------------------------------------------------------------------- spatial ops
@register
class PoolRule(_NoConstants):
    """Pooling keeps channel k as channel k, and a constant as that constant — unless the window averages in
    padding zeros (count_include_pad) or takes an Lp norm."""

    op_types = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or not walk.ensure(x, 1) or (len(node.outputs) > 1 and node.outputs[1].uses()):
            return None
        walk.register(y, 1, walk.count_of(x), like=x)
        live, const = walk.live[x].copy(), walk.const[x].copy()
        counts_padding = node.op_type == "AveragePool" and attr_int(node, "count_include_pad", 0) == 1
        if (counts_padding and conv_padded(node)) or node.op_type in ("LpPool", "GlobalLpPool"):
            live |= const != 0
        walk.set_state(y, live, const)
        return Kind.PASSTHROUGH


@register
class ReduceRule(_NoConstants):
    """Reductions over axes other than the channel axis (SE's ReduceMean): channels pass; ReduceSum multiplies a
    constant by the number of elements summed."""

    op_types = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not walk.ensure(x, walk.default_axis(x)):
            return None
        rank = len(x.shape)
        axes = reduce_axes(node, rank)
        if axes is None or walk.axis[x] in axes:
            return None
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
        return Kind.PASSTHROUGH


@register
class ResizeRule(ChannelRule):
    """Resize/Upsample: interpolation weights sum to 1, so channels and constants pass. A `sizes` input names the
    channel count: the rewrite sets it."""

    op_types = ("Resize", "Upsample")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or not walk.ensure(x, 1) or walk.static_count(y, 1) != walk.count_of(x):
            return None
        sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
        if sizes is not None and (constant_array(sizes) is None or len(sizes.uses()) != 1):
            return None  # computed or shared sizes: the channel count in them cannot be edited
        walk.same_state(y, x)
        return Kind.PASSTHROUGH

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
        y = node.outputs[0]
        if constant_array(sizes) is not None and rw.changed(y):
            rw.set_shape_element(node, rw.analysis.axis[y], len(rw.kept(y)), index=3)


# ---------------------------------------------------------------------------------------------- layout ops
@register
class TransposeRule(_NoConstants):
    """The channel axis moves to where `perm` puts it."""

    op_types = ("Transpose",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or x.shape is None:
            return None
        if not walk.ensure(x, walk.default_axis(x)):
            return None
        perm = attr_ints(node, "perm") or list(reversed(range(len(x.shape))))
        walk.register(y, list(perm).index(walk.axis[x]), walk.count_of(x), like=x)
        walk.set_state(y, walk.live[x].copy(), walk.const[x].copy())
        return Kind.PASSTHROUGH


@register
class SqueezeRule(_NoConstants):
    """Squeeze/Unsqueeze of other axes: the channel axis shifts."""

    op_types = ("Squeeze", "Unsqueeze")

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or x.shape is None or y.shape is None:
            return None
        if not walk.ensure(x, walk.default_axis(x)):
            return None
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes_array = constant_array(axes_value) if axes_value is not None else None
        if axes_array is None:
            return None
        axis = walk.axis[x]
        if node.op_type == "Squeeze":
            axes = {int(a) % len(x.shape) for a in axes_array.reshape(-1)}
            if axis in axes:
                return None
            new_axis = axis - sum(1 for a in axes if a < axis)
        else:
            axes = {int(a) % len(y.shape) for a in axes_array.reshape(-1)}
            new_axis = axis
            for a in sorted(axes):
                if a <= new_axis:
                    new_axis += 1
        walk.register(y, new_axis, walk.count_of(x), like=x)
        walk.set_state(y, walk.live[x].copy(), walk.const[x].copy())
        return Kind.PASSTHROUGH


@register
class ShapeRule(_NoConstants):
    """Shape reads no values; if it reads the channel dim, the channel count is part of what it computes."""

    op_types = ("Shape",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x = node.inputs[0]
        if x is None or x not in walk.axis or x.shape is None:
            return Kind.SHAPE
        rank = len(x.shape)
        start, end = attr_int(node, "start", 0), attr_int(node, "end", rank)
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else min(end, rank))
        if start <= walk.axis[x] < end:
            walk.veto(x, "its shape is read by a Shape node")
        return Kind.SHAPE


# ---------------------------------------------------------------------------------------------- index maps
@register
class ConcatRule(_NoConstants):
    """Along the channel axis: in_i[k] ↔ out[offset_i + k]. Along another axis: channel k is channel k in every
    input and the output (one space), constant only where all inputs hold the same constant."""

    op_types = ("Concat",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        y = node.outputs[0]
        if y.shape is None:
            return None
        rank = len(y.shape)
        axis = attr_int(node, "axis", 0) % rank
        inputs = [v for v in node.inputs if v is not None]
        if any(constant_array(v) is not None for v in inputs):
            return None
        channel_axis = next((walk.axis[v] for v in inputs if v in walk.axis), 1 if rank > 1 else 0)
        if not all(walk.ensure(v, channel_axis) for v in inputs):
            return None
        if axis != channel_axis:
            count = walk.static_count(y, channel_axis)
            if count is None or any(walk.count_of(v) != count for v in inputs):
                return None
            walk.register(y, channel_axis, count, like=inputs[0])
            for v in inputs[1:]:
                walk.link(v, y)
            live = np.any([walk.live[v] for v in inputs], axis=0)
            consts = np.array([walk.const[v] for v in inputs])
            live |= np.any(consts != consts[0], axis=0)
            walk.set_state(y, live, consts[0])
            return Kind.PASSTHROUGH
        total = sum(walk.count_of(v) for v in inputs)
        if walk.static_count(y, axis) != total:
            return None
        walk.register(y, axis, total)
        offset = 0
        for v in inputs:
            n = walk.count_of(v)
            walk.add_map(node, v, np.arange(n), y, np.arange(offset, offset + n))
            offset += n
        walk.set_state(
            y, np.concatenate([walk.live[v] for v in inputs]), np.concatenate([walk.const[v] for v in inputs])
        )
        return Kind.CONCAT


@register
class SplitRule(ChannelRule):
    """Along the channel axis (equal or uneven parts, sizes as input or `num_outputs`): x[offset_i + k] ↔
    out_i[k]; the rewrite writes the new sizes. Along another axis: channels pass to every part."""

    op_types = ("Split",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x = node.inputs[0]
        if x is None or x.shape is None or not walk.ensure(x, walk.default_axis(x)):
            return None
        rank = len(x.shape)
        axis = attr_int(node, "axis", 0) % rank
        counts = [walk.static_count(o, axis) for o in node.outputs]
        if any(c is None for c in counts):
            return None
        if axis != walk.axis[x]:
            for out in node.outputs:
                walk.same_state(out, x)
            return Kind.PASSTHROUGH
        sizes_value = node.inputs[1] if len(node.inputs) > 1 else None
        if sizes_value is not None and (constant_array(sizes_value) is None or len(sizes_value.uses()) != 1):
            return None
        if sum(c for c in counts if c is not None) != walk.count_of(x):
            return None
        offset = 0
        for out, n in zip(node.outputs, counts, strict=True):
            assert n is not None
            walk.register(out, axis, n)
            walk.add_map(node, x, np.arange(offset, offset + n), out, np.arange(n))
            walk.set_state(out, walk.live[x][offset : offset + n].copy(), walk.const[x][offset : offset + n].copy())
            offset += n
        return Kind.SPLIT

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        if kind is not Kind.SPLIT:
            return
        sizes = np.array([len(rw.kept(out)) for out in node.outputs], np.int64)
        if len(node.inputs) < 2 or node.inputs[1] is None:
            node.attributes.pop("num_outputs", None)
            node.attributes.pop("split", None)  # opset < 13 kept sizes as an attribute
            node.resize_inputs(2)
        rw.set_constant(node, 1, sizes)


@register
class SliceRule(ChannelRule):
    """Slice with step 1 on the channel axis: out[k] ↔ x[start + k]; on other axes channels pass through."""

    op_types = ("Slice",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not walk.ensure(x, walk.default_axis(x)):
            return None
        bounds = slice_bounds(node, len(x.shape), walk.axis[x])
        if bounds is None:
            return None
        count = walk.count_of(x)
        if not isinstance(bounds, tuple):  # "untouched": sliced along other axes only
            walk.same_state(y, x)
            return Kind.PASSTHROUGH
        start, end = max(0, min(bounds[0], count)), max(0, min(bounds[1], count))
        if end <= start or walk.static_count(y, walk.axis[x]) != end - start:
            return None
        if any(v is not None and len(v.uses()) != 1 for v in node.inputs[1:3]):
            return None  # shared bounds: editing them would change another Slice
        walk.register(y, walk.axis[x], end - start)
        walk.add_map(node, x, np.arange(start, end), y, np.arange(end - start))
        walk.set_state(y, walk.live[x][start:end].copy(), walk.const[x][start:end].copy())
        return Kind.SLICE

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        if kind is not Kind.SLICE:
            return
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None
        axis, count, rank = rw.analysis.axis[x], rw.count(x), len(x.shape or ())
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
            rw.set_constant(node, index, array)


def _expand(walk: ChannelSpaces, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, inner: int) -> None:
    """y's channel axis holds x's channel k as `inner` consecutive features: y[k·inner + i] ↔ x[k]."""
    count = walk.count_of(x)
    if inner == 1:
        walk.register(y, axis, count, like=x)
        walk.set_state(y, walk.live[x].copy(), walk.const[x].copy())
        return
    walk.register(y, axis, count * inner)
    walk.add_map(node, x, np.repeat(np.arange(count), inner), y, np.arange(count * inner))
    walk.set_state(y, np.repeat(walk.live[x], inner), np.repeat(walk.const[x], inner))


def _merge(walk: ChannelSpaces, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, channels: int, inner: int) -> None:
    """x's channel axis holds y's channel k as `inner` consecutive features: x[k·inner + i] ↔ y[k] (a Linear's
    output reshaped to (C, H, W)). A channel is constant only when all its features are the same constant."""
    walk.register(y, axis, channels)
    walk.add_map(node, x, np.arange(channels * inner), y, np.repeat(np.arange(channels), inner))
    live_x = walk.live[x].reshape(channels, inner)
    const_x = walk.const[x].reshape(channels, inner)
    live = live_x.any(axis=1) | ~np.all(const_x == const_x[:, :1], axis=1)
    walk.set_state(y, live, const_x[:, 0].copy())


@register
class FlattenRule(_NoConstants):
    """Flatten at the channel axis: channel k becomes the H·W features k·HW … (k+1)·HW − 1."""

    op_types = ("Flatten",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not walk.ensure(x, walk.default_axis(x)):
            return None
        rank = len(x.shape)
        axis = attr_int(node, "axis", 1) % (rank + 1) if rank else 0
        trailing = [d for d in list(x.shape)[axis + 1 :] if isinstance(d, int)]
        if axis != walk.axis[x] or len(trailing) != rank - axis - 1:
            return None
        _expand(walk, node, x, y, axis, math.prod(trailing))
        return Kind.FLATTEN


@register
class ReshapeRule(ChannelRule):
    """Reshapes that keep the dims before the channel axis. Four forms, each an index map:

    - the channel axis untouched ([B,C,H,W] → [B,C,HW]): one space;
    - channels merged with the axes after them ([B,C,H,W] → [B,C·H,W] or [B,C·H·W]): x[k] ↔ y[k·inner + i];
    - features split into channels and axes after them ([B,C·H·W] → [B,C,H,W]): y[k] ↔ x[k·inner + i];
    - channel shuffle, Reshape [B,C,…] → [B,g,C/g,…] → Transpose of those two axes → Reshape back [B,C,…]
      (ShuffleNet): z[j·g + i] = x[i·C/g + j]. The rewrite keeps equal counts per group and the same j in every
      group (channel j of all groups goes together), so that the shuffle of the kept channels is the kept
      channels of the shuffle.

    The rewrite edits the channel entry of each shape constant (a -1 or 0 there follows by itself)."""

    op_types = ("Reshape",)

    def analyze(self, node: ir.Node, walk: ChannelSpaces) -> Kind | None:
        x, shape_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if x is None or shape_value is None or x.shape is None or y.shape is None:
            return None
        if constant_array(x) is not None or not walk.ensure(x, walk.default_axis(x)):
            return None
        axis = walk.axis[x]
        in_dims, out_dims = list(x.shape), list(y.shape)
        if len(out_dims) <= axis or not all(map(same_dim, in_dims[:axis], out_dims[:axis])):
            return None
        if shape_element(shape_value, axis) is None:
            return None
        if self._shuffle(node, walk, x, y, axis):
            return Kind.SHUFFLE
        count, channels = walk.count_of(x), out_dims[axis]
        after_in, after_out = in_dims[axis + 1 :], out_dims[axis + 1 :]
        if channels == count and (after_out or not after_in):  # the channel axis untouched
            walk.same_state(y, x)
            return Kind.RESHAPE
        sizes_in = [d for d in after_in if isinstance(d, int)]
        sizes_out = [d for d in after_out if isinstance(d, int)]
        if not isinstance(channels, int) or len(sizes_in) != len(after_in) or len(sizes_out) != len(after_out):
            return None
        for m in range(len(sizes_in) + 1):  # y's channel axis = x's channels · the next m axes of x
            if channels == count * math.prod(sizes_in[:m]) and sizes_in[m:] == sizes_out:
                _expand(walk, node, x, y, axis, math.prod(sizes_in[:m]))
                return Kind.RESHAPE
        for m in range(1, len(sizes_out) + 1):  # x's channel axis = y's channels · the next m axes of y
            inner = math.prod(sizes_out[:m])
            if channels * inner == count and sizes_in == sizes_out[m:]:
                _merge(walk, node, x, y, axis, channels, inner)
                return Kind.RESHAPE
        return None

    def _shuffle(self, node: ir.Node, walk: ChannelSpaces, x: ir.Value, y: ir.Value, axis: int) -> bool:
        assert x.shape is not None and y.shape is not None
        in_dims, out_dims, count = list(x.shape), list(y.shape), walk.count_of(x)
        if len(out_dims) != len(in_dims) + 1 or not _same_tail(out_dims[axis + 2 :], in_dims[axis + 1 :]):
            return False
        groups, per_group = out_dims[axis], out_dims[axis + 1]
        if not isinstance(groups, int) or not isinstance(per_group, int) or groups * per_group != count:
            return False
        uses = list(y.uses())
        if len(uses) != 1 or y.is_graph_output() or uses[0].node.op_type != "Transpose":
            return False
        transpose = uses[0].node
        swap = list(range(len(out_dims)))
        swap[axis], swap[axis + 1] = axis + 1, axis
        t = transpose.outputs[0]
        if attr_ints(transpose, "perm") != swap or len(t.uses()) != 1 or t.is_graph_output():
            return False
        back = next(iter(t.uses())).node
        z = back.outputs[0]
        if back.op_type != "Reshape" or back.inputs[1] is None or z.shape is None or back.inputs[0] is not t:
            return False
        if len(z.shape) != len(in_dims) or not all(map(same_dim, z.shape, in_dims)):
            return False
        assert node.inputs[1] is not None
        if shape_element(node.inputs[1], axis + 1) is None or shape_element(back.inputs[1], axis) is None:
            return False
        source = np.arange(count).reshape(groups, per_group).T.reshape(-1)  # z[k] = x[source[k]]
        walk.register(z, axis, count)
        walk.add_map(node, x, source, z, np.arange(count))
        walk.maps.append((z, np.arange(count), z, (np.arange(count) // groups) * groups))  # channel j of every group
        walk.set_state(z, walk.live[x][source].copy(), walk.const[x][source].copy())
        walk.claimed[transpose] = node
        walk.claimed[back] = node
        walk.facts[node] = (transpose, back, groups)
        return True

    def rewrite(self, node: ir.Node, kind: Kind, rw: ChannelRewrite) -> None:
        x, y = node.inputs[0], node.outputs[0]
        assert x is not None and node.inputs[1] is not None
        axis = rw.analysis.axis[x]
        if kind is Kind.SHUFFLE:
            transpose, back, groups = cast(tuple[ir.Node, ir.Node, int], rw.analysis.facts[node])
            kept = len(rw.kept(x))
            rw.set_shape_element(node, axis + 1, kept // groups)
            rw.set_shape_element(back, axis, kept)
            for value, position in ((y, axis + 1), (transpose.outputs[0], axis)):
                if value.shape is not None:
                    dims = list(value.shape)
                    dims[position] = kept // groups
                    value.shape = ir.Shape(dims)
            return
        rw.set_shape_element(node, axis, len(rw.kept(y)))


def _same_tail(a: list, b: list) -> bool:
    return len(a) == len(b) and all(map(same_dim, a, b))
