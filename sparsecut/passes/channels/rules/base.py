"""The channel-rule interface: one class per op family, registered by op type.

`analyze` looks at one node during the walk and returns either a *plan* — a frozen record of what the node is
for channels (its `Kind`) and everything its rewrite will need — or a `Decline` that says which condition failed
("sizes computed at run time", "transA=1"). A declined node is a barrier: the channels it touches stay, and the
report quotes the rule's reason; "no rule" is said only where no rule is registered for the op. `backward`,
`constrain` and `rewrite` receive the plan `analyze` returned, typed, so nothing is passed on the side.

A class without its own `analyze` and `rewrite` cannot be registered (a node analyzed but skipped by the rewrite
would silently keep its old channel count). Lists of ops — which ops are elementwise — come from the registered
rules (`elementwise_ops`), never from hand-kept copies.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.shape_values import Dim
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk
from sparsecut.passes.nodes import constant_array

if TYPE_CHECKING:
    from sparsecut.passes.channels.constraints import Coupling
    from sparsecut.passes.channels.rewrite import ChannelRewrite

__all__ = [
    "DOMAIN_RULES",
    "ORDER_FREE",
    "READERS",
    "RULES",
    "ChannelRule",
    "Decline",
    "Keep",
    "Kind",
    "Plan",
    "channel_input",
    "count_followed",
    "elementwise_ops",
    "register",
    "rule_for",
]

Keep = Callable[[np.ndarray, np.ndarray, str], None]  # keep(removable, channels (global index), reason)


class Kind(enum.Enum):
    """What a rule made of a node."""

    SHAPE = "shape"  # reads a shape, not values
    PASSTHROUGH = "passthrough"  # carries its input's channels unchanged
    ELEMENTWISE = "elementwise"
    BATCHNORM = "batchnorm"
    LAYERNORM = "layernorm"
    GROUPNORM = "groupnorm"  # Reshape → InstanceNormalization → Reshape (see normalization.py)
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
    ATTENTION = "attention"  # the first node of a multi-head attention block (rules/attention.py)
    EMBEDDING = "embedding"  # rows of a constant table gathered by index: its columns are the channels
    TIED_EMBEDDING = "tied-embedding"  # the same, from a table another node reads too: every channel kept
    RMSNORM = "rmsnorm"  # x / √(mean(x²) + ε) · g over the channel axis (rules/rms.py)
    RMS_STATISTIC = "rms-statistic"  # the mean(x²) of an RMSNorm written in plain ops (rules/rms.py)
    ROTARY = "rotary"  # onnxruntime's RotaryEmbedding: dims rotate within each head (rules/attention.py)


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
        Kind.RMSNORM,
        Kind.RMS_STATISTIC,
        Kind.EMBEDDING,
    }
)
READERS = frozenset({Kind.CONV, Kind.GEMM, Kind.MATMUL})  # reduce over their input's channels with a weight


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What a rule found its node to be. Rules whose rewrite needs more subclass it; plans that carry only their
    kind are shared (one per kind and rule: a node's plan is made once per node, 15k times on big graphs)."""

    kind: Kind


@dataclasses.dataclass(frozen=True, slots=True)
class Decline:
    """The rule does not take its node, for `reason` (the condition that failed, as a user can act on it)."""

    reason: str


P = TypeVar("P", bound=Plan)


class ChannelRule(Generic[P]):
    """How channels flow through the ops in `op_types`. `analyze` registers the outputs' channel spaces and states
    and returns a plan (or declines: the node becomes a barrier); `backward` says which input channels can reach a
    needed output channel; `rewrite` edits the node for the channels that go."""

    op_types: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = ""  # the ops' domain: "" (ONNX's) or a runtime's own (onnxruntime's com.microsoft)
    holds_constants: ClassVar[bool] = True  # False: nothing in the node depends on the channel count
    elementwise: ClassVar[bool] = False  # channel k of every operand of the output's rank is channel k of the output

    def analyze(self, node: ir.Node, spaces: ChannelSpaces) -> P | Decline:
        raise NotImplementedError

    def backward(self, node: ir.Node, plan: P, walk: ChannelWalk, needed: dict[ir.Value, np.ndarray]) -> None:
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

    def rewrite(self, node: ir.Node, plan: P, rw: ChannelRewrite) -> None:
        raise NotImplementedError

    def followed_count(self, node: ir.Node, spaces: ChannelSpaces) -> Dim | None:
        """The channel count the node reads in a computed shape input and that follows by itself when channels go:
        the count of a tensor that carries the channels of the node's first input (a Reshape back to its own
        input's count; SE's `gate.expand_as(x)`) — the walk checks at its end that the two share their channels.
        Every other channel count a shape input of the node depends on stays: the walk vetoes it."""
        return None

    def touched(self, node: ir.Node, plan: P, rw: ChannelRewrite) -> bool:
        """Whether the rewrite must visit `node`: some tensor it reads or writes changes."""
        return any(rw.changed(v) for v in (*node.inputs, *node.outputs))

    def constrain(self, node: ir.Node, plan: P, coupling: Coupling, removable: np.ndarray, keep: Keep) -> bool:
        """Keep channels (with `keep`; `removable` over all channels, `coupling.span` locates a tensor's) until the
        counts that go suit this node; True when it kept any. Called until no rule keeps more (see
        constraints.py)."""
        return False


class NoConstants(ChannelRule[P]):
    """Rules of ops that hold nothing depending on the channel count: the new shapes are all their rewrite is."""

    holds_constants = False

    def rewrite(self, node: ir.Node, plan: P, rw: ChannelRewrite) -> None:
        pass


RULES: dict[str, ChannelRule] = {}  # by op type, in ONNX's default domain
DOMAIN_RULES: dict[tuple[str, str], ChannelRule] = {}  # by (domain, op type), for a runtime's own ops


def register(cls: type[ChannelRule]) -> type[ChannelRule]:
    """Register a rule for its op types. Its rewrite must be its own: analysis without a rewrite would let the
    node be skipped silently when channels go."""
    if cls.rewrite is ChannelRule.rewrite or cls.analyze is ChannelRule.analyze:
        raise TypeError(f"{cls.__name__}: a channel rule needs both analyze and rewrite")
    if not cls.op_types:
        raise TypeError(f"{cls.__name__}: a channel rule needs op_types")
    if not cls.holds_constants and cls.rewrite is not NoConstants.rewrite:
        raise TypeError(f"{cls.__name__}: a rule whose rewrite edits the node holds constants; the rewrite skips it")
    table: dict = RULES if cls.domain == "" else DOMAIN_RULES
    keys = list(cls.op_types) if cls.domain == "" else [(cls.domain, op) for op in cls.op_types]
    taken = [key for key in keys if key in table]
    if taken:
        raise TypeError(f"{cls.__name__}: {taken[0]} already has a rule ({type(table[taken[0]]).__name__})")
    rule = cls()
    for key in keys:
        table[key] = rule
    return cls


def rule_for(node: ir.Node) -> ChannelRule | None:
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    return DOMAIN_RULES.get((node.domain, node.op_type))


def elementwise_ops() -> frozenset[str]:
    """The ops whose registered rule is elementwise (activations, arithmetic): channel k in is channel k out."""
    return frozenset(op for op, rule in RULES.items() if rule.elementwise)


def count_followed(spaces: ChannelSpaces, node: ir.Node, shape: ir.Value | None, position: int) -> Dim | None:
    """Entry `position` of the computed shape `shape`, where it is the channel count of a tensor with as many
    channels as the node's first input (see `ChannelRule.followed_count`)."""
    x = node.inputs[0]
    if shape is None or x is None or x not in spaces.axis or constant_array(shape) is not None:
        return None
    entry = spaces.shapes.entry(shape, position)
    return entry if isinstance(entry, Dim) and spaces.count_of(entry.value) == spaces.count_of(x) else None


def channel_input(node: ir.Node, spaces: ChannelSpaces, axis: int | None = None) -> ir.Value | Decline:
    """The node's first input with its channels registered on `axis` (when None: the axis it has, else the one its
    readers want), or why it has none there: absent, of unknown rank, a constant, or channels on another axis."""
    x = node.inputs[0] if node.inputs else None
    if x is None or x.shape is None:
        return Decline("input absent or of unknown rank")
    if constant_array(x) is not None:
        return Decline("its input is a constant")
    why = spaces.ensure(x, spaces.default_axis(x) if axis is None else axis)
    return Decline(why) if why else x
