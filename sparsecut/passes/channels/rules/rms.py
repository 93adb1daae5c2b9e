"""RMSNorm over the channel axis — a decoder's hidden axis — losing the channels that are zero everywhere, exactly.

    y = x / √(mean_N(x²) + ε) · g      over the N channels of the last axis.

With c of the N channels zero, Σ_N x² = Σ_L x² over the L = N − c others, so mean_N(x²) = (L/N)·mean_L(x²) and

    y = x · √(N/L) / √(mean_L(x²) + ε·N/L) · g,

RMSNorm over the L channels with ε' = ε·N/L and gain g' = g·√(N/L) (or, where there is no gain to carry it, the
factor √(N/L) on the reciprocal of the root). A channel that holds a constant c ≠ 0 adds c² to the sum: it stays
(a sink that refuses constants). Every channel of the input reaches every channel of the output through the mean,
so an output channel needed needs the whole input. LayerNormalization subtracts a mean over all N channels: not
exact with fewer, kept (normalization.py).

Forms: onnxruntime's SimplifiedLayerNormalization (default domain) and SkipSimplifiedLayerNormalization
(com.microsoft: the residual sum input + skip (+ bias) also comes out as its fourth output) — what onnxruntime-genai's
model builder writes — and the plain ops PyTorch's exporters write for `x * torch.rsqrt(x.pow(2).mean(-1) + ε)`:
Pow(x, 2) → ReduceMean over the last axis → Add ε → Sqrt → Reciprocal (dynamo) or Div(1, ·) (TorchScript), read by a
Mul with x. There the ReduceMean is the anchor (`rms_statistic`): the statistic r it leads to is the same number
before and after (the rewrite makes ε' and the factor its constants), so whatever reads r needs no change.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules.base import ChannelRule, Decline, Kind, Plan, channel_input, register
from sparsecut.passes.channels.rules.normalization import last_axis_rank
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import attr_float, attr_int, constant_array

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = [
    "RmsStatisticPlan",
    "SimplifiedLayerNormRule",
    "SkipSimplifiedLayerNormRule",
    "rewrite_rms_statistic",
    "rms_statistic",
]

RMSNORM = Plan(Kind.RMSNORM)
_CONSTANT_COUNTS = "a constant channel counts in the RMSNorm's mean square ({})"


def _factor(n: int, kept: int) -> float:
    return math.sqrt(n / kept)


def _normalized(spaces: ChannelSpaces, node: ir.Node, source: ir.Value, y: ir.Value, axis: int) -> None:
    """`y` = RMSNorm of `source`'s channels: ZERO stays ZERO; anything else is LIVE (the mean varies)."""
    spaces.register(y, axis, spaces.count_of(source), like=source)
    live = spaces.live[source] | (spaces.const[source] != 0)
    spaces.set_state(y, live, np.zeros(live.shape))


def _needs_everything(node: ir.Node, inputs: list[ir.Value], needed: dict[ir.Value, np.ndarray]) -> None:
    """Through the mean, any needed output channel needs every channel of the inputs."""
    if any(needed[o].any() for o in node.outputs if o in needed):
        for v in inputs:
            needed[v][:] = True


def _rescaled(array: np.ndarray, kept: np.ndarray, factor: float) -> np.ndarray:
    return (array.reshape(-1)[kept].astype(np.float64) * factor).astype(array.dtype)


def _rewrite_norm(node: ir.Node, rw: ChannelRewrite, gain_index: int) -> np.ndarray | None:
    """A contrib RMSNorm over the kept channels: its `epsilon` ·N/L, its gain (input `gain_index`) sliced and
    ·√(N/L). Returns the kept channels, or None where its channels did not change."""
    y = node.outputs[0]
    if not rw.changed(y):
        return None
    kept = rw.kept(y)
    factor = _factor(rw.count(y), len(kept))
    gain = constant_array(node.inputs[gain_index])
    assert gain is not None
    rw.set_constant(node, gain_index, _rescaled(gain, kept, factor))
    epsilon = attr_float(node, "epsilon", 1e-5) * factor * factor  # ε · N/L
    node.attributes["epsilon"] = ir.AttrFloat32("epsilon", epsilon)
    return kept


@register
class SimplifiedLayerNormRule(ChannelRule[Plan]):
    """onnxruntime's SimplifiedLayerNormalization(X, scale): RMSNorm over the last axis."""

    op_types = ("SimplifiedLayerNormalization",)

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        rank = last_axis_rank(node)
        if isinstance(rank, Decline):
            return rank
        if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return Decline("its inverse standard deviation is read")
        scale = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if scale is None:
            return Decline("scale computed at run time")
        x = channel_input(node, spaces, rank - 1)
        if isinstance(x, Decline):
            return x
        if scale.size != spaces.count_of(x):
            return Decline(f"scale has {scale.size} entries, the input {spaces.count_of(x)} channels")
        _normalized(spaces, node, x, node.outputs[0], rank - 1)
        spaces.sink(x, node, _CONSTANT_COUNTS.format(node.name))
        return RMSNORM

    def backward(self, node: ir.Node, plan: Plan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        _needs_everything(node, [node.inputs[0]], needed)  # type: ignore[list-item]

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        _rewrite_norm(node, rw, 1)


@register
class SkipSimplifiedLayerNormRule(ChannelRule[Plan]):
    """onnxruntime's SkipSimplifiedLayerNormalization(input, skip, gamma[, bias]): s = input + skip (+ bias), the
    residual stream (its fourth output), and RMSNorm(s)·gamma (its first)."""

    op_types = ("SkipSimplifiedLayerNormalization",)
    domain = "com.microsoft"

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        inputs = list(node.inputs)
        if len(inputs) < 3 or inputs[0] is None or inputs[1] is None or inputs[0].shape is None:
            return Decline("input, skip or gamma absent")
        rank = len(inputs[0].shape)
        outputs = list(node.outputs)
        if any(o.uses() or o.is_graph_output() for o in outputs[1:3]):
            return Decline("its mean or inverse standard deviation is read")
        gamma = constant_array(inputs[2])
        bias = constant_array(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
        if gamma is None or (len(inputs) > 4 and inputs[4] is not None and bias is None):
            return Decline("gamma or bias computed at run time")
        x = channel_input(node, spaces, rank - 1)
        if isinstance(x, Decline):
            return x
        skip = inputs[1]
        why = spaces.ensure(skip, rank - 1)
        if why:
            return Decline(why)
        count = spaces.count_of(x)
        if spaces.count_of(skip) != count or gamma.size != count or (bias is not None and bias.size != count):
            return Decline("input, skip, gamma and bias differ in channel count")
        spaces.link(x, skip)
        total = outputs[3] if len(outputs) > 3 else None
        constants = spaces.const[x] + spaces.const[skip] + (bias.reshape(-1) if bias is not None else 0.0)
        live = spaces.live[x] | spaces.live[skip]
        if total is not None:
            spaces.register(total, rank - 1, count, like=x)
            spaces.set_state(total, live, np.where(live, 0.0, constants))
        y = outputs[0]
        spaces.register(y, rank - 1, count, like=x)
        spaces.set_state(y, live | (np.where(live, 0.0, constants) != 0), np.zeros(count))
        refusal = _CONSTANT_COUNTS.format(node.name)
        spaces.sink(x, node, refusal)
        spaces.sink(skip, node, refusal)
        return RMSNORM

    def backward(self, node: ir.Node, plan: Plan, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
        _needs_everything(node, [v for v in node.inputs[:2] if v is not None], needed)

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        kept = _rewrite_norm(node, rw, 2)
        bias = constant_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if kept is not None and bias is not None:
            rw.set_constant(node, 4, _rescaled(bias, kept, 1.0))


@dataclasses.dataclass(frozen=True, slots=True)
class RmsStatisticPlan(Plan):
    """The plain-op RMSNorm whose mean square this ReduceMean computes: where its ε and its factor live."""

    add: ir.Node  # Add(mean, ε)
    epsilon_index: int  # ε's input of `add`
    carrier: ir.Node  # Reciprocal(√…), or Div(c, √…) whose numerator c takes the factor


def rms_statistic(
    node: ir.Node, spaces: ChannelSpaces, squared: ir.Value, axes: set[int]
) -> RmsStatisticPlan | Decline:
    """A ReduceMean over the channel axis (the last) of `squared`: the mean square of an RMSNorm in plain ops, or
    why not — it then keeps every channel, as any reduction over the channels does."""
    reason = "reduces over the channel axis"
    shape = squared.shape
    assert shape is not None
    square = squared.producer()
    last = len(shape) - 1
    if axes != {last} or spaces.axis[squared] != last or attr_int(node, "keepdims", 1) != 1:
        return Decline(reason)
    if square is None or not _squares(square):
        return Decline(f"{reason} (not of x², as an RMSNorm's mean square)")
    mean = node.outputs[0]
    add = _single_reader(mean, "Add")
    if add is None:
        return Decline(f"{reason} (its mean square is not read by one Add of ε)")
    epsilon_index = 1 if add.inputs[0] is mean else 0
    epsilon = constant_array(add.inputs[epsilon_index])
    if epsilon is None or epsilon.size != 1:
        return Decline(f"{reason} (ε is not a constant scalar)")
    root = _single_reader(add.outputs[0], "Sqrt")
    if root is None:
        return Decline(f"{reason} (mean square + ε is not read by one Sqrt)")
    carrier = _single_reader(root.outputs[0], "Reciprocal") or _single_reader(root.outputs[0], "Div")
    if carrier is None or (carrier.op_type == "Div" and (carrier.inputs[1] is not root.outputs[0]
                                                          or _scalar(carrier.inputs[0]) is None)):  # fmt: skip
        return Decline(f"{reason} (the root is not inverted by Reciprocal or Div(c, ·): x / √… has no constant to "
                       "carry √(N/L))")  # fmt: skip
    spaces.sink(squared, node, _CONSTANT_COUNTS.format(node.name))
    return RmsStatisticPlan(Kind.RMS_STATISTIC, add, epsilon_index, carrier)


def rewrite_rms_statistic(node: ir.Node, plan: RmsStatisticPlan, rw: ChannelRewrite) -> None:
    """ε → ε·N/L; the inverted root's numerator → ·√(N/L) (a Reciprocal becomes Div(√(N/L), ·))."""
    squared = node.inputs[0]
    assert squared is not None
    n, kept = rw.count(squared), len(rw.kept(squared))
    if kept == n:
        return  # reordered only: the mean is the same
    factor = _factor(n, kept)
    epsilon = constant_array(plan.add.inputs[plan.epsilon_index])
    assert epsilon is not None
    rw.set_constant(plan.add, plan.epsilon_index, (epsilon.astype(np.float64) * factor * factor).astype(epsilon.dtype))
    carrier = plan.carrier
    root = carrier.inputs[0] if carrier.op_type == "Reciprocal" else carrier.inputs[1]
    assert root is not None
    dtype = root.dtype.numpy() if root.dtype is not None else np.dtype(np.float32)
    if carrier.op_type == "Reciprocal":
        carrier.op_type = "Div"
        carrier.resize_inputs(2)
        carrier.replace_input_with(1, root)
        rw.set_constant(carrier, 0, np.array(factor, dtype))
        return
    numerator = _scalar(carrier.inputs[0])
    assert numerator is not None
    rw.set_constant(carrier, 0, np.array(numerator * factor, dtype))


def _squares(node: ir.Node) -> bool:
    if node.op_type == "Pow" and len(node.inputs) == 2:
        return _scalar(node.inputs[1]) == 2.0
    return node.op_type == "Mul" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]


def _single_reader(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    reader = uses[0].node
    return reader if reader.op_type == op_type and reader.domain in ("", "ai.onnx") else None


def _scalar(value: ir.Value | None) -> float | None:
    array = constant_array(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None
