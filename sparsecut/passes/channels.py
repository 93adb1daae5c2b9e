"""Dead-channel analysis: which channels of which tensors can be removed without changing what the graph computes.

1. **Channel spaces.** Every activation tensor gets a channel axis. Tensors whose channel k is the same channel
   (through activations, BatchNorm, pooling, residual Add, SE Mul, depthwise conv, Transpose, 1-1 Reshape) share
   one *space*. Concat/Split/Flatten connect spaces by index maps (Concat: in_i[k] ↔ out[offset_i + k];
   Flatten: in[k] ↔ out[k·HW … (k+1)·HW − 1]). Spaces joined by maps form a *coupled group*.
2. **Channel states from weights alone**, propagated forward in topological order. For channel k a tensor is
   LIVE, or constant: CONST(c) (ZERO is CONST(0)). Conv/Gemm/MatMul output j is CONST(b_j + Σ_k ΣW[j,k]·c_k) when
   every weight reading a LIVE input is zero (and, for a padded conv, every weight reading a nonzero constant —
   border pixels see a different sum); BatchNorm maps c to γ(c − μ)/σ + β (γ = 0 gives β); elementwise ops are
   evaluated on the constants (Sigmoid(0) = 0.5, not zero); Mul by ZERO gives ZERO.
3. **Removable**: channel k of a space, when in every tensor of the space it is not LIVE, and wherever a tensor
   carrying a nonzero constant is read by a reducing op, that op absorbs it exactly: a conv without padding
   (b_j += Σ_rs W[j,k,r,s]·c), a Gemm (C_j += α·Σ B[k,j]·c), a MatMul whose output gets a constant bias Add.
   Graph inputs/outputs and tensors touched by an op without a rule (a *barrier*) keep their channels.
   A channel is removed only with every channel it is coupled to (connected components over the index maps).
4. **Constraints**: grouped convs lose channels in equal numbers per group; with `align = N` each tensor keeps a
   multiple of N channels (a few dead channels are kept; reported as kept for alignment).
5. **Orders**: the kept channels of a space may be given a new order (`orders`; see `permutation.py`) when no
   index map, grouped conv, graph input/output or op without a rule ties its channels to their positions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from sparsecut.report import ChannelGroupReport

__all__ = ["ALIGNED", "MEASURED", "SLOWER_WHEN_REMOVED", "DeadChannelAnalysis", "constant_array", "weight_array"]

# why dead channels were kept although removable
ALIGNED = "kept for alignment"
MEASURED = "kept: the chosen count runs faster on the target (measured)"
SLOWER_WHEN_REMOVED = "slower when removed (measured)"

log = logging.getLogger(__name__)

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
_UNARY_WITH_ATTRS = {"LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Gelu", "Celu", "Mish", "Clip"}
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
# node kinds whose result does not depend on the order of the channels they carry (when the rewrite follows it)
_ORDER_FREE = {
    "passthrough",
    "elementwise",
    "batchnorm",
    "depthwise",
    "shape",
    "reshape",
    "flatten",
    "conv",
    "gemm",
    "matmul",
}
_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
_REDUCES = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"}


@dataclasses.dataclass
class _Space:
    """Tensors whose channel k is one and the same channel."""

    count: int
    values: list[ir.Value] = dataclasses.field(default_factory=list)
    reasons: dict[int, str] = dataclasses.field(default_factory=dict)  # channel → why it must stay (first reason)


class DeadChannelAnalysis:
    """Runs on an onnx-ir model whose shapes are inferred; changes nothing. See the module docstring."""

    def __init__(
        self,
        model: ir.Model,
        align: int = 8,
        enabled_groups: set[int] | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """`counts`: for the space named by `space_key`, the channels to keep at least (a measured decision,
        see channel_counts.py); it replaces `align` there."""
        self.model = model
        self.graph = model.graph
        self.align = max(1, align)
        self.counts = dict(counts or {})
        self._parent: list[int] = []
        self._spaces: list[_Space] = []
        self.space_of: dict[ir.Value, int] = {}
        self.axis: dict[ir.Value, int] = {}
        self.live: dict[ir.Value, np.ndarray] = {}
        self.const: dict[ir.Value, np.ndarray] = {}
        self._maps: list[tuple[ir.Value, np.ndarray, ir.Value, np.ndarray]] = []
        self._node_maps: dict[ir.Node, list[tuple[ir.Value, np.ndarray, ir.Value, np.ndarray]]] = {}
        # per input position: channels whose value cannot reach the output (a Mul whose other factor is ZERO,
        # BatchNorm with γ = 0, an all-zero depthwise filter)
        self._gates: dict[ir.Node, list[np.ndarray]] = {}
        self._pending_vetoes: list[tuple[ir.Value, np.ndarray | None, str]] = []
        self._sinks: list[tuple[ir.Value, ir.Node, str]] = []  # (tensor, reducing consumer, kind)
        self.rules: dict[ir.Node, str] = {}
        self.barriers: dict[str, int] = {}
        self.rule_errors: list[str] = []  # rules that raised: their nodes became barriers
        self.matmul_bias: dict[ir.Node, ir.Node] = {}
        self.grouped_convs: list[ir.Node] = []
        self._weights: dict[ir.Value, np.ndarray | None] = {}
        self._run()
        self._resolve(enabled_groups)

    def weight(self, value: ir.Value) -> np.ndarray | None:
        """`weight_array(value)`, small ones read once (a TensorProto → numpy conversion is not free at 15k
        nodes); big ones are read each time, so that no memory-mapped weight stays resident for the whole pass."""
        if value in self._weights:
            return self._weights[value]
        array = weight_array(value)
        if array is None or array.nbytes <= 1 << 20:
            self._weights[value] = array
        return array

    # ------------------------------------------------------------------------------------------ space bookkeeping
    def _new_space(self, count: int) -> int:
        self._parent.append(len(self._parent))
        self._spaces.append(_Space(count))
        return len(self._parent) - 1

    def _find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[rb] = ra

    def _register(self, value: ir.Value, axis: int, count: int, space: int | None = None) -> None:
        self.axis[value] = axis
        self.space_of[value] = self._new_space(count) if space is None else space

    def _add_map(self, node: ir.Node, a: ir.Value, ia: np.ndarray, b: ir.Value, ib: np.ndarray) -> None:
        self._maps.append((a, ia, b, ib))
        self._node_maps.setdefault(node, []).append((a, ia, b, ib))

    def _link(self, a: ir.Value, b: ir.Value) -> None:
        self._union(self.space_of[a], self.space_of[b])

    def _veto(self, value: ir.Value, reason: str, channels: np.ndarray | None = None) -> None:
        self._pending_vetoes.append((value, channels, reason))

    def _set_state(self, value: ir.Value, live: np.ndarray, const: np.ndarray) -> None:
        const = np.where(live, 0.0, const)
        bad = ~np.isfinite(const)
        self.live[value] = live | bad
        self.const[value] = np.where(bad, 0.0, const)

    def _count(self, value: ir.Value, axis: int) -> int | None:
        shape = value.shape
        if shape is None or not (-len(shape) <= axis < len(shape)):
            return None
        dim = shape[axis]
        return dim if isinstance(dim, int) else None

    def _ensure(self, value: ir.Value, axis: int) -> bool:
        """Make sure `value` has channel axis `axis`; an unseen dynamic tensor (graph input, barrier output) is
        registered as all-LIVE and kept. Returns False when the value has another axis or no static count."""
        rank = len(value.shape) if value.shape is not None else 0
        if rank == 0:
            return False
        axis = axis % rank
        if value in self.axis:
            return self.axis[value] == axis
        count = self._count(value, axis)
        if count is None:
            return False
        self._register(value, axis, count)
        self._set_state(value, np.ones(count, bool), np.zeros(count))
        producer = value.producer()
        why = "graph input" if producer is None else f"produced by {producer.op_type} {producer.name!r}"
        self._veto(value, why)
        return True

    # ------------------------------------------------------------------------------------------ walking the graph
    def _run(self) -> None:
        for node in self.graph:
            if all(v is None or _is_constant(v) for v in node.inputs):
                self.rules[node] = "constant"  # computes on constants only (a Transpose of a weight, a Constant)
                continue
            handler = self._handler(node)
            try:
                kind = handler(node) if handler is not None else None
            except Exception as exc:  # a rule never aborts the analysis: the node becomes a barrier, and says why
                kind = None
                tensor = node.outputs[0].name if node.outputs else "?"
                self.rule_errors.append(
                    f"{node.op_type} {node.name!r} (output {tensor!r}): {type(exc).__name__}: {str(exc)[:120]}"
                )
                log.warning("channel rule for %s failed; its channels are kept", self.rule_errors[-1])
            if kind is None:
                self._barrier(node)
                self._seal(node)
            else:
                self.rules[node] = kind
        for value in self.graph.outputs:
            if value in self.space_of:
                self._veto(value, "graph output")

    def _handler(self, node: ir.Node) -> Callable[[ir.Node], str | None] | None:
        if node.domain not in ("", "ai.onnx"):
            return None
        op = node.op_type
        if op in _UNARY or op in _UNARY_WITH_ATTRS:
            return self._unary
        if op in _BINARY or op in ("Sum", "Mean"):
            return self._elementwise
        if op in _POOLS:
            return self._pool
        if op in _REDUCES:
            return self._reduce
        return {
            "Conv": self._conv,
            "ConvTranspose": self._convtranspose,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "BatchNormalization": self._batchnorm,
            "Concat": self._concat,
            "Split": self._split,
            "Slice": self._slice,
            "Flatten": self._flatten,
            "Reshape": self._reshape,
            "Transpose": self._transpose,
            "LayerNormalization": self._layernorm,
            "Resize": self._resize,
            "Upsample": self._resize,
            "Shape": self._shape,
            "Squeeze": self._squeeze,
            "Unsqueeze": self._squeeze,
        }.get(op)

    def _seal(self, node: ir.Node) -> None:
        """Outputs a rule registered before it gave up: all channels LIVE and kept, as any barrier's output."""
        for value in node.outputs:
            if value in self.space_of:
                if value not in self.live:
                    count = self._spaces[self.space_of[value]].count
                    self._set_state(value, np.ones(count, bool), np.zeros(count))
                self._veto(value, f"produced by {node.op_type} {node.name!r} (no rule)")

    def _barrier(self, node: ir.Node) -> None:
        touched = [v for v in node.inputs if v is not None and v in self.space_of]
        for value in touched:
            self._veto(value, f"read by {node.op_type} (no rule)")
        if any(self._spaces[self.space_of[v]].count > 1 for v in touched):
            self.barriers[node.op_type] = self.barriers.get(node.op_type, 0) + 1

    # ------------------------------------------------------------------------------------------ op rules
    def _unary(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or not self._ensure(x, self._default_axis(x)):
            return None
        fn = _unary_function(node)
        if fn is None:
            return None
        self._register(y, self.axis[x], self._spaces[self.space_of[x]].count, self.space_of[x])
        with np.errstate(all="ignore"):
            self._set_state(y, self.live[x].copy(), fn(self.const[x]))
        return "passthrough"

    def _default_axis(self, value: ir.Value) -> int:
        return self.axis.get(value, 1)

    def _elementwise(self, node: ir.Node) -> str | None:
        y = node.outputs[0]
        if y.shape is None:
            return None
        rank = len(y.shape)
        dynamic = [v for v in node.inputs if v is not None and constant_array(v) is None]
        if not dynamic:
            return None
        # the output's channel axis: the first registered dynamic operand's, aligned from the right
        axis = next(
            (self.axis[v] + rank - len(v.shape) for v in dynamic if v in self.axis and v.shape is not None), None
        )
        if axis is None:
            axis = 1 if rank > 1 else 0
        count = self._count(y, axis)
        if count is None:
            return None
        self._register(y, axis, count)
        lives, consts, zeros = [], [], []
        for v in node.inputs:
            if v is None or v.shape is None:
                return None
            operand_axis = axis - (rank - len(v.shape))
            extent = v.shape[operand_axis] if operand_axis >= 0 else 1
            array = constant_array(v)
            if array is not None:
                per_channel = _per_channel(array, operand_axis, count)
                if per_channel is None:  # varies along other axes: not a per-channel constant
                    lives.append(np.ones(count, bool))
                    consts.append(np.zeros(count))
                    zeros.append(np.zeros(count, bool))
                else:
                    lives.append(np.zeros(count, bool))
                    consts.append(per_channel)
                    zeros.append(per_channel == 0)
                continue
            if extent == count:
                if not self._ensure(v, operand_axis) or self._spaces[self.space_of[v]].count != count:
                    return None
                self._link(v, y)
                lives.append(self.live[v])
                consts.append(self.const[v])
                zeros.append(~self.live[v] & (self.const[v] == 0))
            elif extent == 1:  # a dynamic tensor broadcast over channels: LIVE for every channel
                lives.append(np.ones(count, bool))
                consts.append(np.zeros(count))
                zeros.append(np.zeros(count, bool))
            else:
                return None
        live, const = _combine(node.op_type, lives, consts, zeros)
        self._set_state(y, live, const)
        if node.op_type == "Mul":  # x · 0 = 0: a channel zeroed by one factor is not needed from the others
            self._gates[node] = [np.any([z for j, z in enumerate(zeros) if j != i], axis=0) for i in range(len(zeros))]
        return "elementwise"

    def _conv(self, node: ir.Node) -> str | None:
        x, w_value = node.inputs[0], node.inputs[1]
        y = node.outputs[0]
        weight = self.weight(w_value) if w_value is not None else None
        if x is None or weight is None or weight.ndim < 3 or not self._ensure(x, 1):
            return None
        bias = _bias(node, 2, weight.shape[0])
        if bias is None:
            return None
        groups = _attr_int(node, "group", 1)
        out_ch, per_group = weight.shape[:2]
        in_ch = per_group * groups
        padded = _conv_padded(node)
        if self._spaces[self.space_of[x]].count != in_ch or self._count(y, 1) != out_ch:
            return None
        reduce_axes = tuple(range(2, weight.ndim))
        if groups > 1 and groups == in_ch == out_ch:  # depthwise, multiplier 1: input k ↔ output k
            self._register(y, 1, out_ch, self.space_of[x])
            w_nonzero = np.any(weight != 0, axis=(1, *reduce_axes))
            w_sum = weight.sum(axis=(1, *reduce_axes))
            c = self.const[x]
            live = (self.live[x] & w_nonzero) | (padded & (c != 0) & w_nonzero)
            self._set_state(y, live, bias + w_sum * c)
            self._gates[node] = [~w_nonzero]  # an all-zero filter does not need its input channel
            return "depthwise"
        self._register(y, 1, out_ch)
        self._sinks.append((x, node, "conv-padded" if padded else "conv"))
        if groups > 1:
            self.grouped_convs.append(node)
        w_nonzero = np.any(weight != 0, axis=reduce_axes)  # [K, C/g]
        w_sum = weight.sum(axis=reduce_axes)
        live = np.zeros(out_ch, bool)
        const = bias.astype(np.float64).copy()
        out_per_group = out_ch // groups
        for g in range(groups):
            rows = slice(g * out_per_group, (g + 1) * out_per_group)
            cols = slice(g * per_group, (g + 1) * per_group)
            in_live, in_const = self.live[x][cols], self.const[x][cols]
            reads = w_nonzero[rows]
            live[rows] = np.any(reads & in_live, axis=1)
            if padded:
                live[rows] |= np.any(reads & (in_const != 0), axis=1)
            const[rows] += w_sum[rows] @ in_const
        self._set_state(y, live, const)
        return "conv"

    def _convtranspose(self, node: ir.Node) -> str | None:
        """ConvTranspose (decoders, U-Nets, GANs), weight [C_in, C_out/g, kH, kW] — the reverse of Conv's. Output
        channel k is bias_k + Σ_c W[c, k] ⊛ x_c: dead when no live input reaches it through a nonzero filter. A
        constant input channel reaches each output pixel a position-dependent number of times (stride, padding),
        so it is never absorbed into the bias: only ZERO input channels go. Groups other than 1: no rule."""
        x, w_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        weight = self.weight(w_value) if w_value is not None else None
        if x is None or weight is None or weight.ndim < 3 or _attr_int(node, "group", 1) != 1:
            return None
        if not self._ensure(x, 1):
            return None
        in_ch, out_ch = weight.shape[:2]
        bias = _bias(node, 2, out_ch)
        if bias is None or self._spaces[self.space_of[x]].count != in_ch or self._count(y, 1) != out_ch:
            return None
        self._register(y, 1, out_ch)
        self._sinks.append((x, node, "convtranspose"))
        reads = np.any(weight != 0, axis=tuple(range(2, weight.ndim)))  # [C_in, C_out]
        reaching = self.live[x] | (self.const[x] != 0)
        self._set_state(y, np.any(reads & reaching[:, None], axis=0), bias.astype(np.float64))
        return "convtranspose"

    def _gemm(self, node: ir.Node) -> str | None:
        a, y = node.inputs[0], node.outputs[0]
        if a is None or len(node.inputs) < 2 or node.inputs[1] is None or _attr_int(node, "transA", 0):
            return None
        b = self.weight(node.inputs[1])
        if b is None or b.ndim != 2 or not self._ensure(a, 1):
            return None
        b = b.T if _attr_int(node, "transB", 0) else b  # [K, N]
        alpha = _attr_float(node, "alpha", 1.0)
        beta = _attr_float(node, "beta", 1.0)
        if beta == 0:
            return None  # its bias is ignored, so it cannot absorb a constant channel: kept whole
        n = b.shape[1]
        c = _bias(node, 2, n)
        if c is None or self._spaces[self.space_of[a]].count != b.shape[0]:
            return None
        self._register(y, 1, n)
        self._sinks.append((a, node, "gemm"))
        live = np.any((b != 0) & self.live[a][:, None], axis=0)
        self._set_state(y, live, alpha * (self.const[a] @ b) + beta * c)
        return "gemm"

    def _matmul(self, node: ir.Node) -> str | None:
        a, b_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if a is None or b_value is None or y.shape is None or a.shape is None:
            return None
        b = self.weight(b_value)
        if b is None or b.ndim != 2 or constant_array(a) is not None or not self._ensure(a, -1):
            return None
        if self._spaces[self.space_of[a]].count != b.shape[0] or self._count(y, -1) != b.shape[1]:
            return None
        self._register(y, len(y.shape) - 1, b.shape[1])
        bias_add = _single_bias_add(y, b.shape[1])
        if bias_add is not None:
            self.matmul_bias[node] = bias_add
        self._sinks.append((a, node, "matmul"))
        live = np.any((b != 0) & self.live[a][:, None], axis=0)
        self._set_state(y, live, self.const[a] @ b)
        return "matmul"

    def _batchnorm(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        params = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
        if x is None or (len(node.outputs) > 1 and any(o.uses() for o in node.outputs[1:])):
            return None
        if any(p is None for p in params) or not self._ensure(x, 1):
            return None
        gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
        eps = _attr_float(node, "epsilon", 1e-5)
        self._register(y, 1, self._spaces[self.space_of[x]].count, self.space_of[x])
        scale = gamma / np.sqrt(var + eps)
        self._set_state(y, self.live[x] & (gamma != 0), scale * (self.const[x] - mean) + beta)
        self._gates[node] = [gamma == 0]  # γ = 0 outputs β whatever the input: the input channel is not needed
        return "batchnorm"

    def _pool(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or not self._ensure(x, 1) or (len(node.outputs) > 1 and node.outputs[1].uses()):
            return None
        self._register(y, 1, self._spaces[self.space_of[x]].count, self.space_of[x])
        live, const = self.live[x].copy(), self.const[x].copy()
        counts_padding = node.op_type == "AveragePool" and _attr_int(node, "count_include_pad", 0) == 1
        if counts_padding and (_conv_padded(node)):
            live |= const != 0  # border windows average in zeros: a constant is no longer constant
        if node.op_type in ("LpPool", "GlobalLpPool"):
            live |= const != 0
        self._set_state(y, live, const)
        return "passthrough"

    def _reduce(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not self._ensure(x, self._default_axis(x)):
            return None
        rank = len(x.shape)
        axes = _reduce_axes(node, rank)
        if axes is None or self.axis[x] in axes:
            return None
        keep = _attr_int(node, "keepdims", 1)
        new_axis = self.axis[x] if keep else self.axis[x] - sum(1 for a in axes if a < self.axis[x])
        self._register(y, new_axis, self._spaces[self.space_of[x]].count, self.space_of[x])
        const = self.const[x].copy()
        live = self.live[x].copy()
        if node.op_type == "ReduceSum":
            sizes = [x.shape[a] for a in axes]
            if all(isinstance(s, int) for s in sizes):
                const = const * math.prod(sizes)
            else:
                live |= const != 0
        self._set_state(y, live, const)
        return "passthrough"

    def _resize(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or not self._ensure(x, 1) or self._count(y, 1) != self._spaces[self.space_of[x]].count:
            return None
        self._register(y, 1, self._spaces[self.space_of[x]].count, self.space_of[x])
        self._set_state(y, self.live[x].copy(), self.const[x].copy())  # interpolation weights sum to 1
        return "passthrough"

    def _transpose(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or x.shape is None:
            return None
        if not self._ensure(x, self._default_axis(x)):
            return None
        perm = _attr_ints(node, "perm") or list(reversed(range(len(x.shape))))
        self._register(y, list(perm).index(self.axis[x]), self._spaces[self.space_of[x]].count, self.space_of[x])
        self._set_state(y, self.live[x].copy(), self.const[x].copy())
        return "passthrough"

    def _layernorm(self, node: ir.Node) -> str | None:
        """LayerNormalization over the channel axis (the last, as ConvNeXt and transformers normalize): its output
        carries the input's channels, but none of them can go — a dead channel still counts in the mean and the
        variance of the others, and γ, β are laid out over all of them. Both sides keep every channel, and the
        channel axis is known past it (a Transpose back to channels-first reads it right)."""
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or constant_array(x) is not None:
            return None
        rank = len(x.shape)
        if rank < 2 or _attr_int(node, "axis", -1) % rank != rank - 1 or not self._ensure(x, rank - 1):
            return None
        count = self._spaces[self.space_of[x]].count
        self._register(y, rank - 1, count)
        self._set_state(y, np.ones(count, bool), np.zeros(count))
        reason = f"normalized by LayerNormalization {node.name!r} (a dead channel still counts in its statistics)"
        self._veto(x, reason)
        self._veto(y, reason)
        return "layernorm"

    def _squeeze(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or constant_array(x) is not None or x.shape is None or y.shape is None:
            return None
        if not self._ensure(x, self._default_axis(x)):
            return None
        axes_value = node.inputs[1] if len(node.inputs) > 1 else None
        axes_array = constant_array(axes_value) if axes_value is not None else None
        if axes_array is None:
            return None
        axis = self.axis[x]
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
        self._register(y, new_axis, self._spaces[self.space_of[x]].count, self.space_of[x])
        self._set_state(y, self.live[x].copy(), self.const[x].copy())
        return "passthrough"

    def _shape(self, node: ir.Node) -> str | None:
        x = node.inputs[0]
        if x is None or x not in self.axis or x.shape is None:
            return "shape"
        rank = len(x.shape)
        start = _attr_int(node, "start", 0)
        end = _attr_int(node, "end", rank)
        start, end = (start + rank if start < 0 else start), (end + rank if end < 0 else min(end, rank))
        if start <= self.axis[x] < end:
            self._veto(x, "its shape is read by a Shape node")
        return "shape"

    def _concat(self, node: ir.Node) -> str | None:
        y = node.outputs[0]
        if y.shape is None:
            return None
        rank = len(y.shape)
        axis = _attr_int(node, "axis", 0) % rank
        inputs = [v for v in node.inputs if v is not None]
        if any(constant_array(v) is not None for v in inputs):
            return None
        channel_axis = next((self.axis[v] for v in inputs if v in self.axis), 1 if rank > 1 else 0)
        if not all(self._ensure(v, channel_axis) for v in inputs):
            return None
        if axis != channel_axis:  # concatenated along another axis: channel k is channel k everywhere
            count = self._count(y, channel_axis)
            if count is None or any(self._spaces[self.space_of[v]].count != count for v in inputs):
                return None
            self._register(y, channel_axis, count, self.space_of[inputs[0]])
            for v in inputs[1:]:
                self._link(v, y)
            live = np.any([self.live[v] for v in inputs], axis=0)
            consts = np.array([self.const[v] for v in inputs])
            live |= np.any(consts != consts[0], axis=0)
            self._set_state(y, live, consts[0])
            return "passthrough"
        total = sum(self._spaces[self.space_of[v]].count for v in inputs)
        if self._count(y, axis) != total:
            return None
        self._register(y, axis, total)
        offset = 0
        for v in inputs:
            n = self._spaces[self.space_of[v]].count
            self._add_map(node, v, np.arange(n), y, np.arange(offset, offset + n))
            offset += n
        self._set_state(
            y, np.concatenate([self.live[v] for v in inputs]), np.concatenate([self.const[v] for v in inputs])
        )
        return "concat"

    def _split(self, node: ir.Node) -> str | None:
        x = node.inputs[0]
        if x is None or x.shape is None or not self._ensure(x, self._default_axis(x)):
            return None
        rank = len(x.shape)
        axis = _attr_int(node, "axis", 0) % rank
        counts = [self._count(o, axis) for o in node.outputs]
        if any(c is None for c in counts):
            return None
        if axis != self.axis[x]:
            for out in node.outputs:
                self._register(out, self.axis[x], self._spaces[self.space_of[x]].count, self.space_of[x])
                self._set_state(out, self.live[x].copy(), self.const[x].copy())
            return "passthrough"
        sizes_value = node.inputs[1] if len(node.inputs) > 1 else None
        if sizes_value is not None and constant_array(sizes_value) is None:
            return None
        offset = 0
        for out, n in zip(node.outputs, counts, strict=True):
            assert n is not None
            self._register(out, axis, n)
            self._add_map(node, x, np.arange(offset, offset + n), out, np.arange(n))
            self._set_state(out, self.live[x][offset : offset + n].copy(), self.const[x][offset : offset + n].copy())
            offset += n
        return "split"

    def _slice(self, node: ir.Node) -> str | None:
        """Slice with step 1 on the channel axis: out[k] ↔ x[start + k]; on other axes channels pass through."""
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not self._ensure(x, self._default_axis(x)):
            return None
        bounds = _slice_bounds(node, len(x.shape), self.axis[x])
        if bounds is None:
            return None
        count = self._spaces[self.space_of[x]].count
        if not isinstance(bounds, tuple):  # "untouched": sliced along other axes only
            self._register(y, self.axis[x], count, self.space_of[x])
            self._set_state(y, self.live[x].copy(), self.const[x].copy())
            return "passthrough"
        start, end = max(0, min(bounds[0], count)), max(0, min(bounds[1], count))
        if end <= start or self._count(y, self.axis[x]) != end - start:
            return None
        self._register(y, self.axis[x], end - start)
        self._add_map(node, x, np.arange(start, end), y, np.arange(end - start))
        self._set_state(y, self.live[x][start:end].copy(), self.const[x][start:end].copy())
        return "slice"

    def _flatten(self, node: ir.Node) -> str | None:
        x, y = node.inputs[0], node.outputs[0]
        if x is None or x.shape is None or not self._ensure(x, self._default_axis(x)):
            return None
        rank = len(x.shape)
        axis = _attr_int(node, "axis", 1) % (rank + 1) if rank else 0
        if axis != self.axis[x]:
            return None
        return self._expand_channels(node, x, y, axis, "flatten")

    def _expand_channels(self, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, kind: str) -> str | None:
        """y[..., k·inner + i] = x[..., k, i…]: channel k of x becomes `inner` features of y."""
        assert x.shape is not None
        trailing = [d for d in list(x.shape)[axis + 1 :] if isinstance(d, int)]
        if len(trailing) != len(x.shape) - axis - 1:
            return None  # a symbolic trailing dim: the feature count is unknown
        inner = math.prod(trailing)
        count = self._spaces[self.space_of[x]].count
        if inner == 1:
            self._register(y, axis, count, self.space_of[x])
            self._set_state(y, self.live[x].copy(), self.const[x].copy())
            return kind
        self._register(y, axis, count * inner)
        self._add_map(node, x, np.repeat(np.arange(count), inner), y, np.arange(count * inner))
        self._set_state(y, np.repeat(self.live[x], inner), np.repeat(self.const[x], inner))
        return kind

    def _reshape(self, node: ir.Node) -> str | None:
        x, shape_value, y = node.inputs[0], node.inputs[1], node.outputs[0]
        if x is None or shape_value is None or x.shape is None or y.shape is None:
            return None
        if constant_array(x) is not None or not self._ensure(x, self._default_axis(x)):
            return None
        axis = self.axis[x]
        in_dims, out_dims = list(x.shape), list(y.shape)
        if len(out_dims) <= axis or not all(map(_same_dim, in_dims[:axis], out_dims[:axis])):
            return None
        if _shape_element(shape_value, axis) is None:
            return None
        count = self._spaces[self.space_of[x]].count
        if out_dims[axis] == count and (len(out_dims) > axis + 1 or len(in_dims) == axis + 1):
            self._register(y, axis, count, self.space_of[x])  # channel axis untouched (e.g. [B,C,H,W] → [B,C,HW])
            self._set_state(y, self.live[x].copy(), self.const[x].copy())
            return "reshape"
        if len(out_dims) == axis + 1:
            return self._expand_channels(node, x, y, axis, "reshape")
        channels, inner_dims = out_dims[axis], [d for d in out_dims[axis + 1 :] if isinstance(d, int)]
        if len(in_dims) == axis + 1 and isinstance(channels, int) and len(inner_dims) == len(out_dims) - axis - 1:
            inner = math.prod(inner_dims)
            if channels * inner == count:
                return self._split_channels(node, x, y, axis, channels, inner)
        return None

    def _split_channels(self, node: ir.Node, x: ir.Value, y: ir.Value, axis: int, channels: int, inner: int) -> str:
        """y[…, k, i…] = x[…, k·inner + i]: `inner` features of x become channel k of y (a Linear's output
        reshaped to (C, H, W), as decoders and GANs do). A channel is constant only when all its features are
        the same constant; the features of one channel go together (index map)."""
        self._register(y, axis, channels)
        self._add_map(node, x, np.arange(channels * inner), y, np.repeat(np.arange(channels), inner))
        live_x = self.live[x].reshape(channels, inner)
        const_x = self.const[x].reshape(channels, inner)
        live = live_x.any(axis=1) | ~np.all(const_x == const_x[:, :1], axis=1)
        self._set_state(y, live, const_x[:, 0].copy())
        return "reshape"

    # ------------------------------------------------------------------------------------------ resolution
    def _resolve(self, enabled_groups: set[int] | None) -> None:
        roots = sorted({self._find(s) for s in range(len(self._parent))})
        index = {r: i for i, r in enumerate(roots)}
        self.spaces = [self._spaces[r] for r in roots]
        for value, s in self.space_of.items():
            self.space_of[value] = index[self._find(s)]
        for value, s in self.space_of.items():
            self.spaces[s].values.append(value)
        for value, channels, reason in self._pending_vetoes:
            self._add_reason(self.space_of[value], channels, reason)
        self._check_removability()
        self.offsets = np.cumsum([0] + [sp.count for sp in self.spaces])
        self._components()
        self.groups = self._coupled_groups()
        self.enabled_groups = enabled_groups
        self.kept_for_alignment: dict[int, int] = {}
        self._apply_constraints()
        self.orders: dict[int, np.ndarray] = {}  # space → new order of its kept channels, where it changes

    def _add_reason(self, space: int, channels: np.ndarray | None, reason: str) -> None:
        """Channels (all, a boolean mask, or indices) of `space` must stay, for `reason` (the first one sticks)."""
        sp = self.spaces[space]
        if channels is None:
            indices: Iterable[int] = range(sp.count)
        elif channels.dtype == bool:
            indices = np.flatnonzero(channels)
        else:
            indices = channels
        for k in indices:
            sp.reasons.setdefault(int(k), reason)

    def _needed(self) -> dict[ir.Value, np.ndarray]:
        """Backward: which channels can influence a graph output at all. A LIVE channel that cannot (read only
        by zero weights, or gated by a Mul with a ZERO factor — an SE gate on a dead channel) may go too."""
        needed = {v: np.zeros(self.spaces[s].count, bool) for v, s in self.space_of.items()}
        for value in self.graph.outputs:
            if value in needed:
                needed[value][:] = True
        for node in reversed(list(self.graph)):
            kind = self.rules.get(node)
            inputs = [(i, v) for i, v in enumerate(node.inputs) if v is not None and v in needed]
            if not inputs or kind in ("shape", "constant"):
                continue
            if kind is None:  # a barrier reads everything
                for _, v in inputs:
                    needed[v][:] = True
            elif kind in ("conv", "gemm", "matmul", "convtranspose"):
                needed[inputs[0][1]] |= self._needed_by_sink(node, kind, needed[node.outputs[0]])
            elif node in self._node_maps:
                for a, ia, b, ib in self._node_maps[node]:
                    np.logical_or.at(needed[a], ia, needed[b][ib])
            else:
                out = np.any([needed[o] for o in node.outputs if o in needed], axis=0)
                gates = self._gates.get(node)
                for i, v in inputs:
                    if self.space_of[v] == self.space_of[node.outputs[0]]:
                        needed[v] |= out & ~gates[i] if gates is not None else out
                    elif out.any():
                        needed[v][:] = True  # broadcast over channels
        return needed

    def _needed_by_sink(self, node: ir.Node, kind: str, needed_out: np.ndarray) -> np.ndarray:
        weight = self.weight(node.inputs[1])  # type: ignore[arg-type]
        assert weight is not None
        if kind == "conv":
            groups = _attr_int(node, "group", 1)
            reads = np.any(weight != 0, axis=tuple(range(2, weight.ndim)))  # [K, C/g]
            rows = reads.shape[0] // groups
            return np.concatenate(
                [
                    np.any(reads[g * rows : (g + 1) * rows][needed_out[g * rows : (g + 1) * rows]], axis=0)
                    for g in range(groups)
                ]
            )
        if kind == "convtranspose":  # [C_in, C_out, kH, kW]
            reads = np.any(weight != 0, axis=tuple(range(2, weight.ndim)))
            return np.any(reads[:, needed_out], axis=1)
        if kind == "gemm" and _attr_int(node, "transB", 0):
            weight = weight.T
        return np.any(weight[:, needed_out] != 0, axis=1)

    def _check_removability(self) -> None:
        self.needed = self._needed()
        live_in: dict[int, np.ndarray] = {}  # per space: LIVE (and needed) in some tensor of it
        for value, s in self.space_of.items():
            live = self.live[value] & self.needed[value]
            if s in live_in:
                live_in[s] |= live
            else:
                live_in[s] = live
        for s, live in live_in.items():
            if live.any():
                self._add_reason(s, live, "live")
        for value, node, kind in self._sinks:
            nonzero = ~self.live[value] & (self.const[value] != 0)
            if not nonzero.any():
                continue
            if kind == "conv-padded":
                self._add_reason(self.space_of[value], nonzero, f"constant read by padded conv {node.name!r}")
            elif kind == "convtranspose":
                self._add_reason(self.space_of[value], nonzero, f"constant read by ConvTranspose {node.name!r}")
            elif kind == "matmul" and node not in self.matmul_bias:
                self._add_reason(self.space_of[value], nonzero, f"constant read by MatMul {node.name!r} with no bias")

    def _components(self) -> None:
        total = int(self.offsets[-1])
        if not self._maps:  # no Concat/Split/Flatten: every channel is its own component (and scipy stays unloaded)
            self.n_components, self.label = total, np.arange(total)
            return
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        rows = [np.zeros(0, np.int64)]
        cols = [np.zeros(0, np.int64)]
        for a, ia, b, ib in self._maps:
            rows.append(self.offsets[self.space_of[a]] + ia)
            cols.append(self.offsets[self.space_of[b]] + ib)
        r, c = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
        self.n_components, self.label = connected_components(graph, directed=False)

    def _coupled_groups(self) -> list[list[int]]:
        """Spaces joined by index maps; one entry per group, in order of first appearance."""
        parent = list(range(len(self.spaces)))

        def find(s: int) -> int:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s

        for a, _, b, _ in self._maps:
            ra, rb = find(self.space_of[a]), find(self.space_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        groups: dict[int, list[int]] = {}
        for s in range(len(self.spaces)):
            groups.setdefault(find(s), []).append(s)
        self.group_of_space = {s: gi for gi, members in enumerate(groups.values()) for s in members}
        return list(groups.values())

    def _bad_nodes(self) -> np.ndarray:
        bad = np.zeros(int(self.offsets[-1]), bool)
        for s, sp in enumerate(self.spaces):
            if sp.reasons:
                bad[self.offsets[s] + np.fromiter(sp.reasons, int)] = True
            if self.enabled_groups is not None and self.group_of_space[s] not in self.enabled_groups:
                bad[self.offsets[s] : self.offsets[s + 1]] = True
        component_bad = np.zeros(self.n_components, bool)
        np.logical_or.at(component_bad, self.label, bad)
        return component_bad[self.label]

    def _apply_constraints(self) -> None:
        """Veto channels until grouped convs lose equal counts per group and every tensor keeps a multiple of
        `align` channels. Vetoes only grow, so this ends."""
        order = np.argsort(self.label, kind="stable")
        starts = np.searchsorted(self.label[order], np.arange(self.n_components + 1))

        def keep(removable: np.ndarray, nodes: np.ndarray) -> None:
            """Veto whole components at once, so later decisions in the same sweep see them."""
            for component in np.unique(self.label[nodes]):
                removable[order[starts[component] : starts[component + 1]]] = False

        for _ in range(1000):
            removable = ~self._bad_nodes()
            changed = False
            for node in self.grouped_convs:
                changed |= self._equalize_groups(node, removable, keep)
            for s, sp in enumerate(self.spaces):
                mask = removable[self.offsets[s] : self.offsets[s + 1]]
                kept = sp.count - int(mask.sum())
                chosen = self.counts.get(self.space_key(s))
                if chosen is None:
                    # never remove every channel of a tensor (an unused branch is cleanup's job, not ours)
                    target, reason = min(sp.count, max(-(-kept // self.align) * self.align, self.align)), ALIGNED
                else:
                    target = min(sp.count, max(chosen, kept, 1))
                    reason = SLOWER_WHEN_REMOVED if target == sp.count else MEASURED
                if target > kept:
                    restore = np.flatnonzero(mask)[-(target - kept) :]
                    self._add_reason(s, restore, reason)
                    self.kept_for_alignment[s] = self.kept_for_alignment.get(s, 0) + len(restore)
                    keep(removable, self.offsets[s] + restore)
                    changed = True
            if not changed:
                self.removable = removable
                return
        log.warning("channel constraints did not settle; removing no channel")
        self.removable = np.zeros(int(self.offsets[-1]), bool)

    def _equalize_groups(
        self, node: ir.Node, removable: np.ndarray, keep: Callable[[np.ndarray, np.ndarray], None]
    ) -> bool:
        groups = _attr_int(node, "group", 1)
        changed = False
        for value in (node.inputs[0], node.outputs[0]):
            assert value is not None
            s = self.space_of[value]
            mask = removable[self.offsets[s] : self.offsets[s + 1]].reshape(groups, -1)
            fewest = int(mask.sum(axis=1).min())
            for g in range(groups):
                extra = np.flatnonzero(mask[g])[fewest:]
                if len(extra):
                    per_group = mask.shape[1]
                    self._add_reason(
                        s, g * per_group + extra, f"grouped conv {node.name!r} needs equal counts per group"
                    )
                    keep(removable, self.offsets[s] + g * per_group + extra)
                    changed = True
        return changed

    # ------------------------------------------------------------------------------------------ results
    def space_key(self, s: int) -> str:
        """A name for space `s` that a later analysis of the same graph finds again: its first named tensor."""
        return next((str(v.name) for v in self.spaces[s].values if v.name), f"space {s}")

    def removed(self, value: ir.Value) -> np.ndarray:
        """Boolean mask of the channels of `value` that go."""
        s = self.space_of[value]
        return self.removable[self.offsets[s] : self.offsets[s + 1]]

    def kept(self, value: ir.Value) -> np.ndarray:
        """Indices of the channels of `value` that stay, in their new order (see `orders`)."""
        order = self.orders.get(self.space_of[value])
        return order if order is not None else np.flatnonzero(~self.removed(value))

    def has_removals(self, value: ir.Value | None) -> bool:
        return value is not None and value in self.space_of and bool(self.removed(value).any())

    def changed(self, value: ir.Value | None) -> bool:
        """Whether the channels of `value` lose members or change order."""
        return self.has_removals(value) or (value is not None and self.space_of.get(value) in self.orders)

    def readers(self, s: int) -> list[ir.Node]:
        """Conv (not grouped), Gemm and MatMul nodes that reduce over the channels of space `s`."""
        found = []
        for value in self.spaces[s].values:
            for use in value.uses():
                kind = self.rules.get(use.node)
                if use.idx == 0 and kind in ("conv", "gemm", "matmul") and _attr_int(use.node, "group", 1) == 1:
                    found.append(use.node)
        return list(dict.fromkeys(found))

    def why_not_permutable(self, s: int) -> str | None:
        """Why the channels of space `s` cannot be reordered (None when they can): the order of a graph input or
        output is the user's; index maps (Concat, Split, Slice, Flatten) and grouped convs tie channels to
        positions; an op without a rule might depend on the order."""
        if len(self.groups[self.group_of_space[s]]) > 1:
            return "coupled to other channels by Concat/Split/Slice/Flatten"
        inputs, outputs = set(self.graph.inputs), set(self.graph.outputs)
        for value in self.spaces[s].values:
            if value in inputs or value in outputs:
                return "a graph input or output"
            nodes = [use.node for use in value.uses()]
            producer = value.producer()
            if producer is not None:
                nodes.append(producer)
            for node in nodes:
                kind = self.rules.get(node)
                if kind not in _ORDER_FREE:
                    return f"{node.op_type} {node.name!r} " + ("has no rule" if kind is None else "ties channels")
                if kind == "conv" and _attr_int(node, "group", 1) > 1:
                    return f"grouped conv {node.name!r}"
        return None

    @property
    def total_removed(self) -> int:
        return int(sum(self.removable[self.offsets[s] : self.offsets[s + 1]].sum() for s in range(len(self.spaces))))

    def group_reports(self) -> list[ChannelGroupReport]:
        reports = []
        for gi, members in enumerate(self.groups):
            before = after = dead = aligned = 0
            kept_dead: dict[str, int] = {}
            for s in members:
                sp = self.spaces[s]
                mask = self.removable[self.offsets[s] : self.offsets[s + 1]]
                value_dead = self._dead_mask(s)
                before += sp.count
                after += sp.count - int(mask.sum())
                dead += int(value_dead.sum())
                for k in np.flatnonzero(value_dead & ~mask):
                    reason = self._reason_of(s, int(k))
                    kept_dead[reason] = kept_dead.get(reason, 0) + 1
                aligned += self.kept_for_alignment.get(s, 0)
            if dead == 0 and after == before:
                continue
            reports.append(
                ChannelGroupReport(
                    group=gi,
                    location=self.location(members),
                    tensors=sum(len(self.spaces[s].values) for s in members),
                    channels_before=before,
                    channels_after=after,
                    dead=dead,
                    kept_dead=kept_dead,
                    kept_for_alignment=aligned,
                )
            )
        return reports

    def _dead_mask(self, s: int) -> np.ndarray:
        """Channels that are not LIVE in any tensor of the space (what pruning killed)."""
        sp = self.spaces[s]
        dead = np.ones(sp.count, bool)
        for value in sp.values:
            dead &= ~(self.live[value] & self.needed[value])
        return dead

    def _reason_of(self, s: int, k: int) -> str:
        own = self.spaces[s].reasons.get(k)
        if own is not None and own != "live":
            return own
        if not hasattr(self, "_component_reason"):
            self._component_reason: dict[int, str] = {}
            for other, sp in enumerate(self.spaces):
                for j, reason in sp.reasons.items():
                    if reason != "live":
                        self._component_reason.setdefault(int(self.label[self.offsets[other] + j]), reason)
        coupled = self._component_reason.get(int(self.label[self.offsets[s] + k]))
        return f"coupled: {coupled}" if coupled else "coupled to a live channel"

    def location(self, members: list[int]) -> str:
        names = []
        for s in members:
            for value in self.spaces[s].values:
                producer = value.producer()
                if producer is not None and self.rules.get(producer) in ("conv", "gemm", "matmul"):
                    weight = producer.inputs[1]
                    names.append(_source_name(weight) if weight is not None else producer.name or "?")
        if not names:
            names = [self.spaces[members[0]].values[0].name or "?"]
        shown = ", ".join(dict.fromkeys(names))
        return shown if len(shown) < 80 else shown[:77] + "…"


# ------------------------------------------------------------------------------------------------ helpers
def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's tensor when it is an initializer or a Constant node's output; None when it is computed."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        for name, attr in producer.attributes.items():
            if name == "value":
                return attr.as_tensor().numpy()
            if name in ("value_float", "value_int"):
                return np.asarray(attr.value)
            if name in ("value_floats", "value_ints"):
                return np.asarray(list(attr.value))
    return None


def _is_constant(value: ir.Value) -> bool:
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


def weight_array(value: ir.Value) -> np.ndarray | None:
    """A constant weight, looking through a Transpose of an initializer (how dynamo exports nn.Linear)."""
    array = constant_array(value)
    if array is not None:
        return array
    producer = value.producer()
    if producer is not None and producer.op_type == "Transpose":
        inner = constant_array(producer.inputs[0])
        if inner is not None:
            perm = _attr_ints(producer, "perm") or list(reversed(range(inner.ndim)))
            return np.transpose(inner, perm)
    return None


def _source_name(value: ir.Value) -> str:
    producer = value.producer()
    if (
        value.const_value is None
        and producer is not None
        and producer.op_type == "Transpose"
        and producer.inputs[0] is not None
    ):
        return producer.inputs[0].name or "?"
    return value.name or "?"


def _bias(node: ir.Node, index: int, count: int) -> np.ndarray | None:
    """The node's bias input as `count` values (zeros when absent); None when it is computed or oddly shaped."""
    if len(node.inputs) <= index or node.inputs[index] is None:
        return np.zeros(count)
    array = constant_array(node.inputs[index])
    if array is None or array.size not in (1, count):
        return None
    return np.broadcast_to(np.asarray(array, np.float64).reshape(-1), (count,)).copy()


def _per_channel(array: np.ndarray, axis: int, count: int) -> np.ndarray | None:
    """A constant operand as one value per channel, or None when it also varies along other axes."""
    array = np.asarray(array, np.float64)
    if array.size == 1:
        return np.full(count, float(array.reshape(-1)[0]))
    if axis < 0 or array.shape[axis] not in (1, count):
        return None
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    if not np.all(moved == moved[:, :1]):
        return None
    return np.broadcast_to(moved[:, 0], (count,)).copy()


def _combine(
    op: str, lives: list[np.ndarray], consts: list[np.ndarray], zeros: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
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
    alpha = _attr_float(
        node, "alpha", {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Elu": 1.0, "Celu": 1.0}.get(op, 1.67326)
    )
    if op == "LeakyRelu":
        return lambda x: np.where(x < 0, alpha * x, x)
    if op == "HardSigmoid":
        beta = _attr_float(node, "beta", 0.5)
        return lambda x: np.clip(alpha * x + beta, 0, 1)
    if op == "HardSwish":
        return lambda x: x * np.clip(x / 6 + 0.5, 0, 1)
    if op == "Elu":
        return lambda x: np.where(x < 0, alpha * (np.exp(x) - 1), x)
    if op == "Celu":
        return lambda x: np.maximum(0, x) + np.minimum(0, alpha * (np.exp(x / alpha) - 1))
    if op == "Selu":
        gamma = _attr_float(node, "gamma", 1.0507)
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


def _conv_padded(node: ir.Node) -> bool:
    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.as_string() not in ("NOTSET", "VALID"):
        return True
    pads = _attr_ints(node, "pads") or []
    return any(p != 0 for p in pads)


def _reduce_axes(node: ir.Node, rank: int) -> set[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        if array is None:
            return None
        axes = [int(a) for a in array.reshape(-1)]
    else:
        axes = list(_attr_ints(node, "axes") or [])
    if not axes:
        return None if _attr_int(node, "noop_with_empty_axes", 0) else set(range(rank))
    return {a % rank for a in axes}


def _slice_bounds(node: ir.Node, rank: int, axis: int) -> tuple[int, int] | str | None:
    """(start, end) of a step-1 Slice on `axis`, "untouched" when it slices other axes only, None otherwise."""
    arrays = [constant_array(v) if v is not None else None for v in node.inputs[1:5]]
    if len(arrays) < 2 or arrays[0] is None or arrays[1] is None:
        return None
    if any(v is not None and a is None for v, a in zip(node.inputs[3:5], arrays[2:4], strict=False)):
        return None
    starts, ends = arrays[0].reshape(-1), arrays[1].reshape(-1)
    axes_array = arrays[2] if len(arrays) > 2 else None
    steps_array = arrays[3] if len(arrays) > 3 else None
    axes = [int(a) % rank for a in (axes_array.reshape(-1) if axes_array is not None else range(len(starts)))]
    if axis not in axes:
        return "untouched"
    i = axes.index(axis)
    if steps_array is not None and int(steps_array.reshape(-1)[i]) != 1:
        return None
    start, end = int(starts[i]), int(ends[i])
    if start < 0 or end < 0:
        return None  # counted from the end: fine to compute, but not worth the risk of an off-by-one
    return start, min(end, 2**62)


def _single_bias_add(y: ir.Value, n: int) -> ir.Node | None:
    """The `Add(y, b)` right after a MatMul whose constant b is a per-column bias (nn.Linear as dynamo exports it)."""
    uses = list(y.uses())
    if len(uses) != 1 or y.is_graph_output():
        return None
    node = uses[0].node
    if node.op_type != "Add":
        return None
    other = node.inputs[1 - uses[0].idx]
    array = constant_array(other)
    if array is None or array.ndim != 1 or array.shape[0] != n:
        return None
    return node


def _shape_element(shape_value: ir.Value, position: int) -> tuple[str, Any] | None:
    """Where element `position` of a Reshape's shape comes from: a constant we can edit ("const", (value, index))
    or a dynamic piece that does not depend on channels. None when it cannot be followed."""
    if len(shape_value.uses()) != 1:
        return None  # shared with another Reshape: editing it would change that one too
    array = constant_array(shape_value)
    if array is not None:
        return ("const", (shape_value, position))
    producer = shape_value.producer()
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for piece in producer.inputs:
        if piece is None or piece.shape is None or len(piece.shape) != 1 or not isinstance(piece.shape[0], int):
            return None
        length = piece.shape[0]
        if offset <= position < offset + length:
            return ("const", (piece, position - offset)) if constant_array(piece) is not None else None
        offset += length
    return None


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _attr_float(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def _same_dim(a: object, b: object) -> bool:
    """Equal sizes, or two symbolic ones (a batch that a Reshape's -1 or 0 carries over gets a fresh name)."""
    return a == b if isinstance(a, int) or isinstance(b, int) else True


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())
