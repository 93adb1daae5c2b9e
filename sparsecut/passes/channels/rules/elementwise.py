"""Elementwise ops: activations y_k = f(x_k) and broadcasting arithmetic. A constant channel maps to f(c),
computed on the constant (Sigmoid(0) = 0.5, not zero); Mul by a ZERO channel gives ZERO whatever the other
factor holds, so that factor's channel is not needed there (a *gate*)."""

from __future__ import annotations

import math
from collections.abc import Callable
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
from sparsecut.passes.channels.spaces import FLOATING, ChannelSpaces
from sparsecut.passes.nodes import attr_float, constant_array, per_channel

if TYPE_CHECKING:
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = ["ElementwiseRule", "UnaryRule"]

PASSTHROUGH = Plan(Kind.PASSTHROUGH)
ELEMENTWISE = Plan(Kind.ELEMENTWISE)

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
class UnaryRule(NoConstants[Plan]):
    """y_k = f(x_k): a constant channel maps to f(c), computed."""

    op_types = (*_UNARY, *_UNARY_WITH_ATTRS)
    elementwise = True

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        x, y = channel_input(node, spaces), node.outputs[0]
        if isinstance(x, Decline):
            return x
        fn = _unary_function(node)
        if fn is None:
            return Decline("Clip bounds computed at run time")
        spaces.register(y, spaces.axis[x], spaces.count_of(x), like=x)
        live = spaces.live[x]
        # (an all-LIVE input has no constant to map: a LIVE channel's constant is never read)
        spaces.set_state(y, live, spaces.const[x] if live.all() else fn(spaces.const[x]))
        return PASSTHROUGH


@register
class ElementwiseRule(ChannelRule[Plan]):
    """Broadcasting ops: operands with the output's channel count share its space; constant operands are per
    channel (sliced by the rewrite) or scalar; Mul by a ZERO channel makes it ZERO whatever the other factor."""

    op_types = (*_BINARY, "Sum", "Mean")
    elementwise = True

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> Plan | Decline:
        y = node.outputs[0]
        if y.shape is None:
            return Decline("output shape unknown")
        if node.op_type in _BINARY and len(node.inputs) != 2:
            return Decline(f"{len(node.inputs)} operands")
        if node.op_type in _BINARY and self._same_channels(node, spaces):
            return ELEMENTWISE
        rank = len(y.shape)
        arrays = [constant_array(v) for v in node.inputs]
        dynamic = [v for v, array in zip(node.inputs, arrays, strict=True) if v is not None and array is None]
        if not dynamic:
            return Decline("every operand is a constant")
        # the output's channel axis: the first registered dynamic operand's, aligned from the right
        axis = next(
            (spaces.axis[v] + rank - len(v.shape) for v in dynamic if v in spaces.axis and v.shape is not None), None
        )
        if axis is None:  # no operand seen yet: the axis the first one's readers want
            first = dynamic[0]
            axis = spaces.default_axis(first) + rank - len(first.shape) if first.shape is not None else 1
            axis = axis if 0 <= axis < rank else (1 if rank > 1 else 0)
        count = spaces.static_count(y, axis)
        if count is None:
            return Decline(f"no static size on the channel axis {axis}")
        for v in node.inputs:
            if v is None or v.shape is None:
                return Decline("an operand of unknown rank")
        spaces.register(y, axis, count)
        lives, consts = [], []
        everywhere, nowhere, naught = np.ones(count, bool), np.zeros(count, bool), np.zeros(count)
        for v, array in zip(node.inputs, arrays, strict=True):
            assert v is not None and v.shape is not None
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
                why = spaces.ensure(v, operand_axis)
                if why:
                    return Decline(why)
                if spaces.count_of(v) != count:
                    return Decline(f"operand {v.name!r} has {spaces.count_of(v)} channels, the output {count}")
                spaces.link(v, y)
                lives.append(spaces.live[v])
                consts.append(spaces.const[v])
            elif extent == 1:  # a dynamic tensor broadcast over channels: LIVE for every channel
                lives.append(everywhere)
                consts.append(naught)
            else:
                return Decline(f"operand {v.name!r} has {extent} entries on the channel axis, the output {count}")
        zeros = (
            [~live & (const == 0) for live, const in zip(lives, consts, strict=True)] if node.op_type == "Mul" else []
        )
        live, const = _combine(node.op_type, lives, consts, zeros)
        spaces.set_state(y, live, const)
        if node.op_type == "Mul":  # x · 0 = 0: a channel zeroed by one factor is not needed from the others
            spaces.gate(node, [np.any([z for j, z in enumerate(zeros) if j != i], axis=0) for i in range(len(zeros))])
        return ELEMENTWISE

    @staticmethod
    def _same_channels(node: ir.Node, spaces: ChannelSpaces) -> bool:
        """The usual case in fewer steps (a residual Add, an SE Mul after its Expand): two dynamic operands of the
        output's rank that carry channels on the same axis, as many as the output. False: not this case, nothing
        registered."""
        a, b = node.inputs
        y = node.outputs[0]
        if a is None or b is None:
            return False
        axis = spaces.axis.get(a)
        if axis is None or spaces.axis.get(b) != axis or a.const_value is not None:
            return False
        rank = len(y.shape)  # type: ignore[arg-type]
        if a.shape is None or b.shape is None or len(a.shape) != rank or len(b.shape) != rank:
            return False
        count = spaces.static_count(y, axis)
        if count is None or a.shape[axis] != count or b.shape[axis] != count or b.const_value is not None:
            return False
        if spaces.count_of(a) != count or spaces.count_of(b) != count:
            return False
        if (a.dtype is not None and a.dtype not in FLOATING) or (b.dtype is not None and b.dtype not in FLOATING):
            return False  # shapes, indices and masks carry no channels (as `ensure` says)
        spaces.register(y, axis, count)
        spaces.link(a, y)
        spaces.link(b, y)
        lives, consts = [spaces.live[a], spaces.live[b]], [spaces.const[a], spaces.const[b]]
        mul = node.op_type == "Mul"
        zeros = [~live & (const == 0) for live, const in zip(lives, consts, strict=True)] if mul else []
        live, const = _combine(node.op_type, lives, consts, zeros)
        spaces.set_state(y, live, const)
        if mul:
            spaces.gate(node, [zeros[1], zeros[0]])
        return True

    def rewrite(self, node: ir.Node, plan: Plan, rw: ChannelRewrite) -> None:
        y = node.outputs[0]
        if not rw.changed(y) or y.shape is None:
            return
        axis, count, kept = rw.analysis.walk.axis[y], rw.count(y), rw.kept(y)
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
