"""Dead-channel analysis: which channels of which tensors can be removed without changing what the graph computes.

The graph is walked once in topological order; each node's rule (`rules.py`, by op type) records the channel
spaces and states of its outputs (`spaces.py`). A node without a rule — or whose rule does not understand it, or
fails — is a *barrier*: the channels it touches stay, and the report says which op stopped them. Then
`constraints.py` decides what is removable, and `report.py` says what was found. Nothing here changes the graph;
`rewrite.py` does, given the analysis and the order of the kept channels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels import constraints, report
from sparsecut.passes.channels.attention import ATTENTION, AttentionBlock, find_attention_blocks
from sparsecut.passes.channels.rules import ORDER_FREE, READERS, ChannelRule, Kind, rule_for
from sparsecut.passes.channels.spaces import ChannelSpaces
from sparsecut.passes.nodes import attr_int, is_constant
from sparsecut.report import ChannelGroupReport, HeadReport

__all__ = ["DeadChannelAnalysis"]

log = logging.getLogger(__name__)


class DeadChannelAnalysis:
    """Runs on an onnx-ir model whose shapes are inferred; changes nothing."""

    def __init__(
        self,
        model: ir.Model,
        align: int = 8,
        enabled_groups: set[int] | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """`align`: each space keeps a multiple of it. `counts`: for the space named by `space_key`, the channels
        to keep at least (a measured decision, see channel_counts.py); it replaces `align` there.
        `enabled_groups`: only these coupled groups lose channels (the gate's bisection)."""
        self.model = model
        self.graph = model.graph
        self.align = max(1, align)
        self.counts = dict(counts or {})
        self.walk = ChannelSpaces()
        self.kinds: dict[ir.Node, Kind] = {}
        self.rule_of: dict[ir.Node, ChannelRule] = {}
        self.barriers: dict[str, int] = {}  # op type → nodes that stopped channels
        self.rule_errors: list[str] = []  # rules that raised: their nodes became barriers
        self._walk_graph()
        self.spaces = self.walk.resolve()
        self.space_of = self.walk.space_of
        self.axis = self.walk.axis
        self.live = self.walk.live
        self.const = self.walk.const
        self.facts = self.walk.facts
        self.needed = constraints.needed_channels(self)
        self.live_somewhere = constraints.check_removability(self)  # per space: LIVE and needed in a tensor
        self.offsets = np.cumsum([0] + [sp.count for sp in self.spaces])
        self.n_components, self.label = constraints.components(self)
        self.groups, self.group_of_space = constraints.coupled_groups(self)
        self.removable, self.kept_for_alignment = constraints.apply_constraints(
            self, self.align, self.counts, enabled_groups
        )
        self.loses: list[bool] = (self.per_space(self.removable) > 0).tolist()  # per space: whether channels go

    def weight(self, value: ir.Value) -> np.ndarray | None:
        return self.walk.weight(value)

    # ------------------------------------------------------------------------------------------ the walk
    def _walk_graph(self) -> None:
        walk = self.walk
        walk.prefer_axes(self.graph)
        blocks = {found.anchor: found for found in find_attention_blocks(self.graph)}
        for found in blocks.values():  # multi-node patterns, claimed before the walk reaches them
            walk.claimed.update((node, found.anchor) for node in found.nodes if node is not found.anchor)
        with np.errstate(all="ignore"):  # rules compute on constants: 1/0, exp overflow and NaN are expected
            self._walk_nodes(blocks)
        for value in self.graph.outputs:
            if value in walk.space_of:
                walk.veto(value, "graph output")

    def _walk_nodes(self, blocks: dict[ir.Node, AttentionBlock]) -> None:
        walk = self.walk
        for node in self.graph:
            if node in walk.claimed:  # part of a pattern another node's rule covers (a channel shuffle, attention)
                self.kinds[node] = Kind.CLAIMED
                continue
            if all(v is None or is_constant(v) for v in node.inputs):
                self.kinds[node] = Kind.CONSTANT
                continue
            block = blocks.get(node)
            if block is not None:
                walk.facts[node] = block
                if self._apply(node, ATTENTION):
                    continue
                for claimed in block.nodes:  # not understood after all: each node goes its own way
                    walk.claimed.pop(claimed, None)
                    if self.kinds.pop(claimed, None) is Kind.CLAIMED:  # passed already: a barrier after the fact
                        self._barrier(claimed)
                        walk.seal(claimed)
            self._apply(node, rule_for(node))

    def _apply(self, node: ir.Node, rule: ChannelRule | None) -> bool:
        """Run `rule` on `node`; without a rule, or when it gives up or fails, the node is a barrier (False)."""
        walk = self.walk
        kind = None
        if rule is not None:
            try:
                kind = rule.analyze(node, walk)
            except Exception as exc:  # a rule never aborts the analysis: the node becomes a barrier, and says why
                tensor = node.outputs[0].name if node.outputs else "?"
                self.rule_errors.append(
                    f"{node.op_type} {node.name!r} (output {tensor!r}): {type(exc).__name__}: {str(exc)[:120]}"
                )
                log.warning("channel rule for %s failed; its channels are kept", self.rule_errors[-1])
        if kind is None:
            if rule is ATTENTION:
                return False  # the block's nodes go their own ways; nothing was registered
            self._barrier(node)
            walk.seal(node)
            return False
        self.kinds[node], self.rule_of[node] = kind, rule  # type: ignore[assignment]
        return True

    def _barrier(self, node: ir.Node) -> None:
        touched = [v for v in node.inputs if v is not None and v in self.walk.space_of]
        for value in touched:
            self.walk.veto(value, f"read by {node.op_type} (no rule)")
        # reported where it stops real channels: more than one, in a float tensor (not shape arithmetic)
        if any(self.walk.count_of(v) > 1 and v.dtype is not None and v.dtype.is_floating_point() for v in touched):
            self.barriers[node.op_type] = self.barriers.get(node.op_type, 0) + 1

    # ------------------------------------------------------------------------------------------ results
    def space_key(self, s: int) -> str:
        """A name for space `s` that a later analysis of the same graph finds again: its first named tensor."""
        return next((str(v.name) for v in self.spaces[s].values if v.name), f"space {s}")

    def removed(self, value: ir.Value) -> np.ndarray:
        """Boolean mask of the channels of `value` that go."""
        s = self.space_of[value]
        return self.removable[self.offsets[s] : self.offsets[s + 1]]

    def kept(self, value: ir.Value) -> np.ndarray:
        """Indices of the channels of `value` that stay, in their original order."""
        return np.flatnonzero(~self.removed(value))

    def per_space(self, flags: np.ndarray) -> np.ndarray:
        """How many channels of each space are flagged, for flags over all spaces' channels in a row (counted at
        once: thousands of spaces, one numpy call each, add up)."""
        before = np.concatenate([[0], np.cumsum(flags)])  # flagged channels before each index
        return before[self.offsets[1:]] - before[self.offsets[:-1]]

    def has_removals(self, value: ir.Value | None) -> bool:
        s = self.space_of.get(value) if value is not None else None
        return s is not None and self.loses[s]

    def readers(self, s: int) -> list[ir.Node]:
        """Conv (not grouped), Gemm and MatMul nodes that reduce over the channels of space `s`."""
        found = []
        for value in self.spaces[s].values:
            for use in value.uses():
                kind = self.kinds.get(use.node)
                if use.idx == 0 and kind in READERS and attr_int(use.node, "group", 1) == 1:
                    found.append(use.node)
        return list(dict.fromkeys(found))

    def why_not_permutable(self, s: int) -> str | None:
        """Why the channels of space `s` cannot be reordered (None when they can): the order of a graph input or
        output is the user's; index maps (Concat, Split, Slice, Flatten, Reshape) and grouped convs tie channels
        to positions; an op without a rule might depend on the order."""
        if len(self.groups[self.group_of_space[s]]) > 1:
            return "coupled to other channels by Concat/Split/Slice/Flatten/Reshape"
        inputs, outputs = set(self.graph.inputs), set(self.graph.outputs)
        for value in self.spaces[s].values:
            if value in inputs or value in outputs:
                return "a graph input or output"
            nodes = [use.node for use in value.uses()]
            producer = value.producer()
            if producer is not None:
                nodes.append(producer)
            for node in nodes:
                kind = self.kinds.get(node)
                if kind not in ORDER_FREE:
                    return f"{node.op_type} {node.name!r} " + ("has no rule" if kind is None else "ties channels")
                if kind is Kind.CONV and attr_int(node, "group", 1) > 1:
                    return f"grouped conv {node.name!r}"
        return None

    @property
    def total_removed(self) -> int:
        return int(self.removable.sum())

    def group_reports(self) -> list[ChannelGroupReport]:
        return report.group_reports(self)

    def head_reports(self) -> list[HeadReport]:
        return report.head_reports(self)

    def location(self, members: list[int]) -> str:
        return report.location(self, members)
