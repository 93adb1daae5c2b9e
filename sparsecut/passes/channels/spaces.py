"""Channel spaces: which tensors carry the same channels, and what every channel of every tensor holds.

Every activation tensor gets a channel axis. Tensors whose channel k is one and the same channel (through
activations, BatchNorm, pooling, residual Add, SE Mul, depthwise conv, Transpose, 1-1 Reshape) share one *space*
(a union-find over spaces). Concat, Split, Slice, Flatten and Reshape connect spaces by *index maps*
(Concat: in_i[k] ↔ out[offset_i + k]; Flatten: in[k] ↔ out[k·HW … (k+1)·HW − 1]).

Per tensor and channel k, a state computed from weights alone: LIVE, or constant CONST(c) (ZERO is CONST(0)).

Rules (`rules/`) record into a `ChannelSpaces` while the graph is walked: spaces, links, maps, states, the
reducing consumers that must absorb constants (*sinks*), the channels an op makes unneeded (*gates*), and the
reasons channels must stay (*vetoes*). `resolve` then numbers the final spaces and returns what was found as a
`ChannelWalk` — the first of the analysis' stage results, read-only from then on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.shape_values import ShapeValues
from sparsecut.passes.nodes import weight_array

if TYPE_CHECKING:
    from sparsecut.passes.channels.rules.base import ChannelRule, Plan

__all__ = [
    "FLOATING",
    "ChannelSpaces",
    "ChannelWalk",
    "IndexMap",
    "Kernel",
    "PendingWrites",
    "Space",
    "Weights",
    "add_reason",
]

IndexMap = tuple[ir.Value, np.ndarray, ir.Value, np.ndarray]  # a[ia[i]] is the same channel as b[ib[i]]
FLOATING = frozenset(t for t in ir.DataType if t.is_floating_point())  # the types that carry channels
_CACHED_BYTES = 1 << 20  # weights up to this size are read (and summarized) once; bigger ones each time


class Kernel:
    """A conv weight [K, C, *kernel] over its kernel positions: where any is nonzero ([K, C] bool), and their sums
    ([K, C] float64, computed when first asked: only constant input channels need them)."""

    __slots__ = ("_per_position", "_sums", "nonzero")

    def __init__(self, weight: np.ndarray) -> None:
        self._per_position = weight.reshape(weight.shape[0], weight.shape[1], -1)
        one = self._per_position.shape[2] == 1  # a 1×1 kernel: nothing to reduce
        self.nonzero = self._per_position[:, :, 0] != 0 if one else (self._per_position != 0).any(axis=-1)
        self._sums: np.ndarray | None = None

    @property
    def sums(self) -> np.ndarray:
        if self._sums is None:
            self._sums = self._per_position.sum(axis=-1, dtype=np.float64)
        return self._sums


class Space:
    """Tensors whose channel k is one and the same channel (a plain class: one is made per tensor the walk
    registers, and a dataclass's default factories cost twice as much)."""

    __slots__ = ("count", "values")

    def __init__(self, count: int) -> None:
        self.count = count
        self.values: list[ir.Value] = []


class Sink(NamedTuple):  # one per conv: a named tuple is made in a third of a frozen dataclass's time
    """A node that reduces over the channels of `value` (Conv, Gemm, MatMul): a constant channel there is removable
    only when the node absorbs it into its bias; `refusal` says why it cannot (None: it can)."""

    value: ir.Value
    node: ir.Node
    refusal: str | None


class Weights:
    """Constant weights as arrays, small ones read once (a TensorProto → numpy conversion is not free at 15k nodes);
    big ones are read each time, so that no memory-mapped weight stays resident for the whole pass. The walk, the
    backward pass and the rewrite all read them."""

    def __init__(self) -> None:
        self._weights: dict[ir.Value, np.ndarray | None] = {}
        self._kernels: dict[ir.Value, Kernel] = {}

    def weight(self, value: ir.Value) -> np.ndarray | None:
        """`weight_array(value)`: None when not constant."""
        if value in self._weights:
            return self._weights[value]
        array = weight_array(value)
        if array is None or array.nbytes <= _CACHED_BYTES:
            self._weights[value] = array
        return array

    def kernel(self, value: ir.Value) -> Kernel | None:
        """A weight [K, C, *kernel] summed over its kernel positions (None when not constant or of rank < 3)."""
        if value in self._kernels:
            return self._kernels[value]
        weight = self.weight(value)
        if weight is None or weight.ndim < 3:
            return None
        kernel = Kernel(weight)
        if weight.nbytes <= _CACHED_BYTES:
            self._kernels[value] = kernel
        return kernel


Veto = tuple[ir.Value, "np.ndarray | None", str]


@dataclasses.dataclass(frozen=True)
class ChannelWalk:
    """Stage 1 of the analysis, what the rules found: spaces numbered 0…n−1, per tensor its space, channel axis and
    channel states, the index maps and gates between channels, the sinks, the reasons channels must stay (per space:
    channel → the first reason given), and per node the rule's plan, or why it is a barrier."""

    spaces: list[Space]
    space_of: dict[ir.Value, int]
    axis: dict[ir.Value, int]
    live: dict[ir.Value, np.ndarray]
    const: dict[ir.Value, np.ndarray]
    maps: list[IndexMap]
    node_maps: dict[ir.Node, list[IndexMap]]
    gates: dict[ir.Node, list[np.ndarray]]
    sinks: list[Sink]
    reasons: list[dict[int, str]]
    plans: dict[ir.Node, Plan]
    rules: dict[ir.Node, ChannelRule]
    barriers: dict[ir.Node, str]  # barrier nodes: "no rule", or the condition their rule declined on
    # where barriers stop real channels (more than one, in a float tensor — not shape arithmetic), their nodes by
    # op type for ops without a rule, and by "op: the condition it declined on" for rules that declined
    no_rule: dict[str, int]
    declined: dict[str, int]
    rule_errors: list[str]  # rules that raised: their nodes became barriers
    weights: Weights

    def weight(self, value: ir.Value) -> np.ndarray | None:
        return self.weights.weight(value)

    def kernel(self, value: ir.Value) -> Kernel | None:
        return self.weights.kernel(value)


class ChannelSpaces:
    """What the rules find while walking the graph. Rules write here; nothing else does."""

    def __init__(self, weights: Weights) -> None:
        self._parent: list[int] = []
        self._spaces: list[Space] = []
        self.space_of: dict[ir.Value, int] = {}
        self.axis: dict[ir.Value, int] = {}
        self.live: dict[ir.Value, np.ndarray] = {}
        self.const: dict[ir.Value, np.ndarray] = {}
        self.maps: list[IndexMap] = []
        self.node_maps: dict[ir.Node, list[IndexMap]] = {}
        # per input position: channels whose value cannot reach the output (a Mul whose other factor is ZERO,
        # BatchNorm with γ = 0, an all-zero depthwise filter)
        self.gates: dict[ir.Node, list[np.ndarray]] = {}
        self.vetoes: list[Veto] = []
        self.same: list[tuple[ir.Value, ir.Value, str]] = []  # a and b end in one space, or both keep all, for reason
        self.sinks: list[Sink] = []
        self.preferred: dict[ir.Value, int] = {}  # see prefer_axes
        self.claimed: dict[ir.Node, ir.Node] = {}  # node → the node whose rule covers it (a multi-node pattern)
        self.weights = weights
        self.shapes = ShapeValues(self.axis.get)  # computed shapes, read where a rule needs them

    def weight(self, value: ir.Value) -> np.ndarray | None:
        return self.weights.weight(value)

    def kernel(self, value: ir.Value) -> Kernel | None:
        return self.weights.kernel(value)

    # ------------------------------------------------------------------------------------------ spaces
    def _new_space(self, count: int) -> int:
        self._parent.append(len(self._parent))
        self._spaces.append(Space(count))
        return len(self._parent) - 1

    def _find(self, s: int) -> int:
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def register(self, value: ir.Value, axis: int, count: int, like: ir.Value | None = None) -> None:
        """`value` has `count` channels on `axis`: the same ones as `like`'s, or a space of its own."""
        self.axis[value] = axis
        self.space_of[value] = self._new_space(count) if like is None else self.space_of[like]

    def count_of(self, value: ir.Value) -> int:
        """The channel count of a registered value."""
        return self._spaces[self.space_of[value]].count

    def require_same(self, a: ir.Value, b: ir.Value, reason: str) -> None:
        """`a` and `b` must carry the same channels when the walk ends (a shape computed from a's channel count,
        applied to b), or both keep all of theirs, for `reason`."""
        self.same.append((a, b, reason))

    def link(self, a: ir.Value, b: ir.Value) -> None:
        """Channel k of `a` is channel k of `b`."""
        ra, rb = self._find(self.space_of[a]), self._find(self.space_of[b])
        if ra != rb:
            self._parent[rb] = ra

    def add_map(self, node: ir.Node, a: ir.Value, ia: np.ndarray, b: ir.Value, ib: np.ndarray) -> None:
        """Channel ia[i] of `a` is channel ib[i] of `b` (they are removed together), through `node`."""
        self.maps.append((a, ia, b, ib))
        self.node_maps.setdefault(node, []).append((a, ia, b, ib))

    def tie(self, a: ir.Value, ia: np.ndarray, b: ir.Value, ib: np.ndarray) -> None:
        """Channel ia[i] of `a` goes with channel ib[i] of `b` (a group's channels together), in no node's own map."""
        self.maps.append((a, ia, b, ib))

    def gate(self, node: ir.Node, gates: list[np.ndarray]) -> None:
        """Per input position of `node`: the channels whose value cannot reach its output."""
        self.gates[node] = gates

    def claim(self, node: ir.Node, by: ir.Node) -> None:
        """`node` is part of a pattern `by`'s rule covers: the walk passes it by."""
        self.claimed[node] = by

    def veto(self, value: ir.Value, reason: str, channels: np.ndarray | None = None) -> None:
        """These channels of `value` (all when None; a mask or indices) must stay, for `reason`."""
        self.vetoes.append((value, channels, reason))

    def sink(self, value: ir.Value, node: ir.Node, refusal: str | None) -> None:
        self.sinks.append(Sink(value, node, refusal))

    def set_state(self, value: ir.Value, live: np.ndarray, const: np.ndarray) -> None:
        """Channel states of `value`: a non-finite constant counts as LIVE; a LIVE channel's constant is 0. The
        arrays are kept as given (no rule changes a state in place)."""
        live = np.asarray(live, bool)
        if not np.count_nonzero(const):  # the usual case: no constant channel (nor a non-finite one), nothing to clear
            # (count_nonzero: `ndarray.any` goes through a Python function of numpy's, 5× slower on small arrays)
            self.live[value] = live
            self.const[value] = np.asarray(const, np.float64)
            return
        const = np.where(live, 0.0, const)
        if math.isfinite(const.sum()):  # the usual case, in fewer steps (a sum of finite values is finite)
            self.live[value] = live
            self.const[value] = const
            return
        finite = np.isfinite(const)
        self.live[value] = live | ~finite
        self.const[value] = np.where(finite, const, 0.0)

    def same_state(self, value: ir.Value, like: ir.Value) -> None:
        """`value` carries `like`'s channels unchanged."""
        self.register(value, self.axis[like], self.count_of(like), like)
        self.set_state(value, self.live[like].copy(), self.const[like].copy())

    def static_count(self, value: ir.Value, axis: int) -> int | None:
        shape = value.shape
        if shape is None or not (-len(shape) <= axis < len(shape)):
            return None
        dim = shape[axis]
        return dim if isinstance(dim, int) else None

    def ensure(self, value: ir.Value, axis: int) -> str | None:
        """Make sure `value` has channel axis `axis`; an unseen dynamic tensor (graph input, barrier output) is
        registered as all-LIVE and kept. Returns why it cannot (another axis, no static count, no channels at all),
        or None."""
        rank = len(value.shape) if value.shape is not None else 0
        if rank == 0 or (value.dtype is not None and value.dtype not in FLOATING):
            return f"{value.name!r} carries no channels (not a floating-point tensor of known rank)"
        axis = axis % rank
        if value in self.axis:
            known = self.axis[value]
            return None if known == axis else f"{value.name!r} carries channels on axis {known}, not {axis}"
        count = self.static_count(value, axis)
        if count is None:
            return f"{value.name!r} has no static size on axis {axis}"
        self.register(value, axis, count)
        self.set_state(value, np.ones(count, bool), np.zeros(count))
        producer = value.producer()
        why = "graph input" if producer is None else f"produced by {producer.op_type} {producer.name!r}"
        self.veto(value, why)
        return None

    def default_axis(self, value: ir.Value) -> int:
        """The channel axis of `value`: the one it has, else the one its readers want, else 1 (NCHW)."""
        return self.axis.get(value, self.preferred.get(value, 1))

    def prefer_axes(self, graph: ir.Graph, same_axis: frozenset[str]) -> None:
        """Which axis a tensor no rule has seen yet (a graph input, a barrier's output) carries channels on: the
        last one where it flows — through the elementwise ops `same_axis`, of the same rank — into a MatMul by a
        weight or a LayerNormalization (transformer activations [B, N, D], RMSNorm written out as ops); 1
        elsewhere."""
        nodes = list(graph)
        if not any(node.op_type in ("MatMul", "LayerNormalization") for node in nodes):
            return  # no reader prefers an axis: every unseen tensor has channels on axis 1
        for node in reversed(nodes):
            x = node.inputs[0] if node.inputs else None
            if x is None or x.shape is None:
                continue
            rank = len(x.shape)
            weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
            if (weight is not None and weight_array(weight) is not None) or node.op_type == "LayerNormalization":
                self.preferred.setdefault(x, rank - 1)
            elif node.op_type in same_axis and node.outputs and node.outputs[0] in self.preferred:
                axis = self.preferred[node.outputs[0]]
                for value in node.inputs:
                    if (
                        value is not None
                        and value.shape is not None
                        and len(value.shape) == len(node.outputs[0].shape or ())
                    ):
                        self.preferred.setdefault(value, axis)

    def seal(self, node: ir.Node, reason: str) -> None:
        """Outputs a rule registered before it gave up: all channels LIVE and kept, as any barrier's output."""
        for value in node.outputs:
            if value in self.space_of:
                if value not in self.live:
                    count = self.count_of(value)
                    self.set_state(value, np.ones(count, bool), np.zeros(count))
                self.veto(value, f"produced by {node.op_type} {node.name!r} ({reason})")

    # ------------------------------------------------------------------------------------------ resolution
    def resolve(
        self,
        plans: dict[ir.Node, Plan],
        rules: dict[ir.Node, ChannelRule],
        barriers: dict[ir.Node, str],
        no_rule: dict[str, int],
        declined: dict[str, int],
        rule_errors: list[str],
    ) -> ChannelWalk:
        """Number the final spaces 0…n−1, apply the vetoes as reasons, and hand over what was found."""
        roots = sorted({self._find(s) for s in range(len(self._parent))})
        index = {r: i for i, r in enumerate(roots)}
        spaces = [self._spaces[r] for r in roots]
        space_of = {value: index[self._find(s)] for value, s in self.space_of.items()}
        for value, s in space_of.items():
            spaces[s].values.append(value)
        reasons: list[dict[int, str]] = [{} for _ in spaces]
        for a, b, reason in self.same:
            if space_of[a] != space_of[b]:
                self.vetoes += [(a, None, reason), (b, None, reason)]
        for value, channels, reason in self.vetoes:
            s = space_of[value]
            add_reason(reasons[s], spaces[s].count, channels, reason)
        return ChannelWalk(
            spaces=spaces,
            space_of=space_of,
            axis=self.axis,
            live=self.live,
            const=self.const,
            maps=self.maps,
            node_maps=self.node_maps,
            gates=self.gates,
            sinks=self.sinks,
            reasons=reasons,
            plans=plans,
            rules=rules,
            barriers=barriers,
            no_rule=no_rule,
            declined=declined,
            rule_errors=rule_errors,
            weights=self.weights,
        )


class PendingWrites:
    """The spaces as one rule's `analyze` sees them: reads go through, writes wait. The walker applies them, in
    order, when the rule returns a plan, and drops them when it declines — so a rule's decision is a pure check of
    its node, and a rule that declines halfway through leaves no trace in the walk. (`ensure` is a read: it
    registers an input's channel axis once, as any later reader would find it.)"""

    WRITES = frozenset(
        {"register", "require_same", "link", "add_map", "tie", "gate", "claim", "veto", "sink", "set_state",
         "same_state", "seal"}
    )  # fmt: skip

    def __init__(self, spaces: ChannelSpaces) -> None:
        self._spaces = spaces
        self._pending: list[tuple[Callable[..., None], tuple[object, ...], dict[str, object]]] = []

    def __getattr__(self, name: str) -> object:
        """Asked once per name: what is found (the spaces never rebind an attribute) or, for a write, its recorder
        is kept on the view, so the walk reads through it at plain attribute speed (one view serves every node)."""
        found = getattr(self._spaces, name)
        if name in self.WRITES:
            pending, write = self._pending, found

            def record(*args: object, **kwargs: object) -> None:
                pending.append((write, args, kwargs))

            found = record
        setattr(self, name, found)
        return found

    def apply(self) -> None:
        """Make the recorded writes, in order."""
        for write, args, kwargs in self._pending:
            write(*args, **kwargs)
        self._pending.clear()

    def drop(self) -> None:
        """Forget the recorded writes (the rule declined)."""
        self._pending.clear()


def add_reason(reasons: dict[int, str], count: int, channels: np.ndarray | Iterable[int] | None, reason: str) -> None:
    """Channels (all of `count`, a boolean mask, or indices) must stay, for `reason` (the first one sticks)."""
    if channels is None:
        indices: Iterable[int] = range(count)
    elif isinstance(channels, np.ndarray):
        indices = (np.flatnonzero(channels) if channels.dtype == bool else channels.reshape(-1)).tolist()
    else:
        indices = [int(k) for k in channels]
    if not reasons:  # the first reasons of a space: no earlier one to keep
        reasons.update(dict.fromkeys(indices, reason))
        return
    for k in indices:
        reasons.setdefault(k, reason)
