"""Dead-channel analysis: which channels of which tensors can be removed without changing what the graph computes.

Three stages, each a frozen result built on the one before:

1. the **walk** (`ChannelWalk`): the graph is walked once in topological order; each node's rule (`rules/`, by
   op type; attention blocks found by `heads.py`) records its outputs' channel spaces and states and returns its
   plan, or declines. A node without a rule, or whose rule declines or fails, is a *barrier*: the channels it
   touches stay, and the report says which op stopped them and why;
2. the **coupling** (`constraints.Coupling`): needed channels, removability, coupled components;
3. the **decision** (`constraints.Decision`): the channels that go, after counts are constrained.

Nothing here changes the graph; `rewrite.py` does, given the analysis and the order of the kept channels.
The graph is expected in canonical form (`canonical.py`) with its shapes inferred.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import cast

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.constraints import Coupling, Decision, couple, decide
from sparsecut.passes.channels.heads import AttentionBlock, find_attention_blocks
from sparsecut.passes.channels.report import group_reports as _group_reports
from sparsecut.passes.channels.report import head_reports as _head_reports
from sparsecut.passes.channels.report import location as _location
from sparsecut.passes.channels.rules import ORDER_FREE, READERS, ChannelRule, Decline, Kind, Plan, elementwise_ops
from sparsecut.passes.channels.rules import rule_for as _rule_for
from sparsecut.passes.channels.rules.attention import AttentionRule
from sparsecut.passes.channels.shape_values import Dim, is_shape_value
from sparsecut.passes.channels.spaces import ChannelSpaces, ChannelWalk, PendingWrites, Weights
from sparsecut.passes.nodes import attr_int, is_constant
from sparsecut.report import ChannelGroupReport, HeadReport

__all__ = ["NO_RULE", "DeadChannelAnalysis", "walk_graph"]

log = logging.getLogger(__name__)

NO_RULE = "no rule"


class DeadChannelAnalysis:
    """Runs on an onnx-ir model whose shapes are inferred; changes nothing."""

    def __init__(
        self,
        model: ir.Model,
        align: int = 8,
        enabled_groups: set[int] | None = None,
        counts: Mapping[str, int] | None = None,
        kept_whole: Mapping[str, str] | None = None,
    ) -> None:
        """`align`: each space keeps a multiple of it. `counts`: for the space named by `space_key`, the channels
        to keep at least (a measured decision, see channel_counts.py); it replaces `align` there.
        `enabled_groups`: only these coupled groups lose channels (the gate's bisection). `kept_whole`: spaces (by
        `space_key`) that keep every channel, with why."""
        self.graph = model.graph
        self.walk: ChannelWalk = walk_graph(model.graph)
        self.coupling: Coupling = couple(self.walk, model.graph)
        self.decision: Decision = decide(
            self.coupling, max(1, align), dict(counts or {}), enabled_groups, self.space_key, kept_whole
        )
        self._heads: list[HeadReport] | None = None

    # ------------------------------------------------------------------------------------------ results
    def weight(self, value: ir.Value) -> np.ndarray | None:
        return self.walk.weight(value)

    def space_key(self, s: int) -> str:
        """A name for space `s` that a later analysis of the same graph finds again: its first named tensor."""
        return next((str(v.name) for v in self.walk.spaces[s].values if v.name), f"space {s}")

    def removed(self, value: ir.Value) -> np.ndarray:
        """Boolean mask of the channels of `value` that go."""
        return self.decision.removable[self.coupling.span(value)]

    def kept(self, value: ir.Value) -> np.ndarray:
        """Indices of the channels of `value` that stay, in their original order."""
        return np.flatnonzero(~self.removed(value))

    def has_removals(self, value: ir.Value | None) -> bool:
        s = self.walk.space_of.get(value) if value is not None else None
        return s is not None and self.decision.loses[s]

    def readers(self, s: int) -> list[ir.Node]:
        """Conv (not grouped), Gemm and MatMul nodes that reduce over the channels of space `s`."""
        found = []
        for value in self.walk.spaces[s].values:
            for use in value.uses():
                plan = self.walk.plans.get(use.node)
                if use.idx == 0 and plan is not None and plan.kind in READERS and attr_int(use.node, "group", 1) == 1:
                    found.append(use.node)
        return list(dict.fromkeys(found))

    def why_not_permutable(self, s: int) -> str | None:
        """Why the channels of space `s` cannot be reordered (None when they can): the order of a graph input or
        output is the user's; index maps (Concat, Split, Slice, Flatten, Reshape) and grouped convs tie channels
        to positions; an op without a rule might depend on the order."""
        if len(self.coupling.groups[self.coupling.group_of_space[s]]) > 1:
            return "coupled to other channels by Concat/Split/Slice/Flatten/Reshape"
        inputs, outputs = set(self.graph.inputs), set(self.graph.outputs)
        for value in self.walk.spaces[s].values:
            if value in inputs or value in outputs:
                return "a graph input or output"
            nodes = [use.node for use in value.uses()]
            producer = value.producer()
            if producer is not None:
                nodes.append(producer)
            for node in nodes:
                plan = self.walk.plans.get(node)
                if plan is None or plan.kind not in ORDER_FREE:
                    return f"{node.op_type} {node.name!r} " + ("has no rule" if plan is None else "ties channels")
                if plan.kind is Kind.CONV and attr_int(node, "group", 1) > 1:
                    return f"grouped conv {node.name!r}"
        return None

    @property
    def total_removed(self) -> int:
        return int(self.decision.removable.sum())

    def group_reports(self) -> list[ChannelGroupReport]:
        return _group_reports(self)

    def head_reports(self) -> list[HeadReport]:
        """Per attention block (made once: the pass's contract and its report both read them)."""
        if self._heads is None:
            self._heads = _head_reports(self)
        return self._heads

    def location(self, members: list[int]) -> str:
        return _location(self, members)


def walk_graph(graph: ir.Graph) -> ChannelWalk:
    """Stage 1: every node's rule, in topological order."""
    return _Walker(graph).run()


class _Walker:
    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.spaces = ChannelSpaces(Weights())
        self.plans: dict[ir.Node, Plan] = {}
        self.rules: dict[ir.Node, ChannelRule] = {}
        self.barriers: dict[ir.Node, str] = {}
        self.no_rule: dict[str, int] = {}
        self.declined: dict[str, int] = {}
        self.rule_errors: list[str] = []
        self.shape_values = _shape_values(graph)
        self.refused_attention: dict[ir.Node, str] = {}  # Softmax → why the attention tracer gave up there
        self.view = PendingWrites(self.spaces)  # what a rule's analyze sees: see `_analyze`

    def run(self) -> ChannelWalk:
        spaces = self.spaces
        spaces.prefer_axes(self.graph, elementwise_ops())
        found_blocks, self.refused_attention = find_attention_blocks(self.graph)
        blocks = {found.anchor: found for found in found_blocks}
        for found in blocks.values():  # multi-node patterns, claimed before the walk reaches them
            spaces.claimed.update((node, found.anchor) for node in found.nodes if node is not found.anchor)
        with np.errstate(all="ignore"):  # rules compute on constants: 1/0, exp overflow and NaN are expected
            self._walk_nodes(blocks)
        for value in self.graph.outputs:
            if value in spaces.space_of:
                spaces.veto(value, "graph output")
            elif value in self.shape_values:
                for dim in spaces.shapes.dims(value):
                    spaces.veto(dim.value, "its channel count is a graph output")
        return spaces.resolve(self.plans, self.rules, self.barriers, self.no_rule, self.declined, self.rule_errors)

    def _walk_nodes(self, blocks: dict[ir.Node, AttentionBlock]) -> None:
        spaces = self.spaces
        passed: dict[ir.Node, list[ir.Node]] = {}  # per anchor not reached yet: its nodes passed so far
        accepted: set[ir.Node] = set()  # anchors whose block the attention rule took
        for node in self.graph:
            anchor = spaces.claimed.get(node)
            if anchor is not None:  # part of a pattern another node's rule covers (a channel shuffle, attention)
                if anchor in accepted:
                    self._outside_reads(node, blocks[anchor])
                elif anchor in blocks:
                    passed.setdefault(anchor, []).append(node)
                continue
            if all(v is None or is_constant(v) for v in node.inputs):
                continue  # computes on constants only (a Transpose of a weight, a Constant)
            if node.outputs and all(out in self.shape_values for out in node.outputs) and node.op_type not in _SOURCES:
                continue  # shape arithmetic: what it computes is read where it is used (shape_values.py)
            block = blocks.get(node)
            if block is not None:
                rule = AttentionRule(block)
                outcome = self._analyze(node, rule)
                if isinstance(outcome, Plan):
                    self.plans[node], self.rules[node] = outcome, rule
                    self._check_shape_reads(node)
                    accepted.add(node)
                    for claimed in passed.pop(node, []):
                        self._outside_reads(claimed, block)
                    continue
                for claimed in block.nodes:  # not understood after all: each node goes its own way
                    spaces.claimed.pop(claimed, None)
                for claimed in passed.pop(node, []):  # passed already: a barrier after the fact
                    self._barrier(claimed, outcome.reason)
            self._apply(node)

    def _outside_reads(self, node: ir.Node, block: AttentionBlock) -> None:
        """A node of an attention block that reads a tensor from outside it (a mask, or what the tracer did not
        take for the block's own): that tensor keeps its channels, as if the node were a barrier."""
        entries = {entry.value for entry in block.entries}
        for value in node.inputs:
            if (
                value is not None
                and value in self.spaces.space_of
                and value not in block.labels
                and value not in entries
            ):
                self._barrier(node, f"reads {value.name!r} inside the attention block at {block.anchor.name!r}")
                return

    def _analyze(self, node: ir.Node, rule: ChannelRule) -> Plan | Decline:
        """The rule's check of `node`; what it recorded enters the walk only with a plan (`PendingWrites`)."""
        view = self.view
        try:
            outcome = rule.analyze(node, cast(ChannelSpaces, view))
            if isinstance(outcome, Plan):
                view.apply()
            else:
                view.drop()
            return outcome
        except Exception as exc:
            view.drop()  # a rule never aborts the analysis: the node becomes a barrier, and says why
            tensor = node.outputs[0].name if node.outputs else "?"
            self.rule_errors.append(
                f"{node.op_type} {node.name!r} (output {tensor!r}): {type(exc).__name__}: {str(exc)[:120]}"
            )
            log.warning("channel rule for %s failed; its channels are kept", self.rule_errors[-1])
            return Decline(f"its rule failed ({type(exc).__name__})")

    def _apply(self, node: ir.Node) -> None:
        """Run the node's rule; without a rule, or when it declines or fails, the node is a barrier."""
        rule = _rule_for(node)
        if rule is None:
            self._barrier(node, self.refused_attention.get(node, NO_RULE))
            return
        outcome = self._analyze(node, rule)
        if isinstance(outcome, Decline):
            self._barrier(node, outcome.reason)
            return
        self.plans[node], self.rules[node] = outcome, rule
        followed = rule.followed_count(node, self.spaces)
        x = node.inputs[0]
        if followed is not None and x is not None:
            reason = f"its channel count is read by {node.op_type} {node.name!r} for {x.name!r}, another tensor"
            self.spaces.require_same(followed.value, x, reason)
        self._check_shape_reads(node, frozenset() if followed is None else frozenset({followed}))

    def _check_shape_reads(self, node: ir.Node, following: frozenset[Dim] = frozenset()) -> None:
        """Channel counts that a computed shape input of `node` depends on stay, but those its rule says follow."""
        spaces = self.spaces
        for value in node.inputs:
            if value is not None and value in self.shape_values:
                for dim in spaces.shapes.dims(value) - following:
                    spaces.veto(dim.value, f"its channel count is read by {node.op_type} {node.name!r}")

    def _barrier(self, node: ir.Node, reason: str) -> None:
        spaces = self.spaces
        self.barriers[node] = reason
        touched = [v for v in node.inputs if v is not None and v in spaces.space_of]
        for value in touched:
            spaces.veto(value, f"read by {node.op_type} ({reason})")
        self._check_shape_reads(node)
        # counted where it stops real channels: more than one, in a float tensor (not shape arithmetic)
        if any(spaces.count_of(v) > 1 and v.dtype is not None and v.dtype.is_floating_point() for v in touched):
            counts, key = (
                (self.no_rule, node.op_type) if reason == NO_RULE else (self.declined, f"{node.op_type}: {reason}")
            )
            counts[key] = counts.get(key, 0) + 1
        spaces.seal(node, reason)


_SOURCES = frozenset({"Shape", "Size"})  # shape values computed from a tensor's shape: their rule reads the tensor


def _shape_values(graph: ir.Graph) -> set[ir.Value]:
    """Shape values (`shape_values.is_shape_value`) computed from Shape/Size outputs and constants only."""
    found: set[ir.Value] = set()
    for node in graph:
        if node.op_type not in _SOURCES:
            dynamic = [v for v in node.inputs if v is not None and not is_constant(v)]
            if not dynamic or any(v not in found for v in dynamic):
                continue
        found.update(out for out in node.outputs if is_shape_value(out))
    return found
