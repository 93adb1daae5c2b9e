"""remove-dead-channels: physically remove channels that are zero or constant everywhere they are coupled.

Which channels go is decided by `DeadChannelAnalysis` (see `channels/` for the math: one rule per op family
says how channels flow through it and how it is rewritten). Then every intermediate shape is re-inferred.

2:4 weights: removing input channels shifts the groups of 4 along the reduction axis. Where a weight was 2:4 and
its kept channels no longer are in place, the kept channels of its space are reordered — producers' rows,
per-channel parameters and every reader's columns alike, which changes nothing computed — so that every group of 4
is valid again (`permutation.restore_order`); what cannot be restored is reported with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from sparsecut.cost import count_params, weight_elements
from sparsecut.passes.channels import SHARED_WEIGHT, DeadChannelAnalysis, rewrite_channels
from sparsecut.passes.channels.canonical import canonicalize
from sparsecut.passes.constants import FoldConstantsPass
from sparsecut.passes.contract import Composed, OptimizePass, interface_shapes
from sparsecut.passes.nodes import source_name
from sparsecut.passes.permutation import restore_order
from sparsecut.passes.two_four import is_two_four, reduction_axis, two_four_violations
from sparsecut.report import HeadReport, PassReport, TwoFourRestore
from sparsecut.shapes import infer_shapes

__all__ = [
    "RemoveDeadChannelsPass",
    "kept_cache_heads",
    "plan_two_four_restores",
    "prepare_for_analysis",
    "reduction_matrix",
]

log = logging.getLogger(__name__)

PASSTHROUGH = frozenset({"Transpose", "Cast", "Reshape", "Squeeze", "Unsqueeze"})  # a weight on its way to a layer


class RemoveDeadChannelsPass(OptimizePass):
    """Remove dead channels (zero, or constant where every consumer absorbs the constant exactly).

    Ensures: the model's interface (its inputs' and outputs' shapes) is what it was — but for the head count of a
    decoder's KV cache, where K/V heads went (`cache_heads`) — and it holds no parameter more than before: channel
    removal only slices and folds."""

    name = "remove-dead-channels"
    description = "physically remove zero/constant channels across coupled groups"

    def __init__(
        self,
        align: int = 8,
        enabled_groups: set[int] | None = None,
        fold: bool = True,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.align = align
        self.enabled_groups = enabled_groups  # only these groups lose channels (the gate's bisection)
        self.counts = counts  # measured decisions: channels to keep per space (replaces align there)
        self.fold = fold  # False when fold-constants just ran
        self.analysis: DeadChannelAnalysis | None = None
        self.two_four: list[TwoFourRestore] = []
        self._before: tuple[dict[str, tuple[int | str | None, ...] | None], int] | None = None

    @classmethod
    def composed(cls, at: Composed) -> RemoveDeadChannelsPass:
        groups = set(at.enabled_groups) if at.enabled_groups is not None else None
        return cls(at.align, groups, fold=not at.folded, counts=dict(at.counts))

    def requires(self, model: ir.Model) -> None:
        self._before = interface_shapes(model), count_params(model)

    def ensures(self, model: ir.Model) -> None:
        assert self._before is not None
        interface, params = self._before
        cache = self.cache_heads()
        for name, after in interface_shapes(model).items():
            before = interface.get(name)
            if before is None or after is None or _fixed(before) == _fixed(after):
                continue
            expected = list(before)
            if name in cache:  # a KV cache of fewer K/V heads: the one change allowed
                expected[1] = len(cache[name])
            if _fixed(tuple(expected)) != _fixed(after):
                raise ir.passes.PostconditionError(f"{name}: the model's interface changed, {before} → {after}")
        if count_params(model) > params:
            raise ir.passes.PostconditionError(f"parameters grew: {params:,} → {count_params(model):,}")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        prepared = prepare_for_analysis(model, self.fold)
        analysis = DeadChannelAnalysis(model, self.align, self.enabled_groups, self.counts)
        shared = _spaces_slicing_shared_weights(analysis) if analysis.total_removed else set()
        if shared and self._grows(model):
            # an exporter shares equal tensors (TorchScript: two all-zero q weights become one initializer); a
            # layer sliced apart from the others reading it gets a copy, which can outweigh what it saves
            log.info("%d channel space(s) kept whole: their layers read weights shared with other nodes, and the "
                     "copies that slicing them needs would leave the model larger", len(shared))  # fmt: skip
            kept = dict.fromkeys(shared, SHARED_WEIGHT)
            analysis = DeadChannelAnalysis(model, self.align, self.enabled_groups, self.counts, kept)
        self.analysis = analysis
        if analysis.total_removed == 0:
            return ir.passes.PassResult(model, modified=prepared)
        self.two_four, orders = plan_two_four_restores(analysis)
        rewrite_channels(model, analysis, orders)
        log.info("removed %d channels", analysis.total_removed)
        return ir.passes.PassResult(model, modified=True)

    def _grows(self, model: ir.Model) -> bool:
        """Whether removing the channels leaves more parameters than before (tried on a copy)."""
        trial = model.clone()
        rewrite_channels(trial, DeadChannelAnalysis(trial, self.align, self.enabled_groups, self.counts))
        return count_params(trial) > (self._before[1] if self._before is not None else count_params(model))

    def cache_heads(self) -> dict[str, list[int]]:
        """The KV cache inputs and outputs whose K/V heads (axis 1) were removed: name → the heads kept. The model's
        interface changes there: a caller feeds the lean model its own presents as its pasts."""
        if self.analysis is None or self.analysis.total_removed == 0:
            return {}
        return kept_cache_heads(self.analysis.head_reports())

    def report(self, modified: bool, seconds: float) -> PassReport:
        analysis = self.analysis
        if analysis is None:
            return PassReport(self.name, modified, seconds, "nothing to do")
        groups = analysis.group_reports()
        dead = sum(g.dead for g in groups)
        shrunk = sum(1 for g in groups if g.channels_after < g.channels_before)
        summary = f"{analysis.total_removed} channel(s) removed of {dead} dead, in {shrunk} group(s)"
        restored = [r for r in self.two_four if r.restored]
        if self.two_four:
            summary += f"; 2:4 kept by reordering channels for {len(restored)} of {len(self.two_four)} weight group(s)"
        return PassReport(
            self.name,
            modified,
            seconds,
            summary,
            groups,
            dict(analysis.walk.no_rule),
            declined=dict(analysis.walk.declined),
            two_four=self.two_four,
            rule_errors=list(analysis.walk.rule_errors),
            heads=analysis.head_reports(),
        )


def _spaces_slicing_shared_weights(analysis: DeadChannelAnalysis) -> set[str]:
    """The spaces (by `space_key`) that lose channels at a node reading a weight (a float initializer, directly or
    through a Transpose, Cast or reshape) that other nodes read too: slicing it for one reader copies it."""
    found: set[str] = set()
    for value in analysis.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or len(value.uses()) < 2 or not weight_elements(tensor):
            continue
        readers = [use.node for use in value.uses()]
        readers += [use.node for node in readers if node.op_type in PASSTHROUGH
                    for out in node.outputs for use in out.uses()]  # fmt: skip
        for node in readers:
            for v in (*node.inputs, *node.outputs):
                s = analysis.walk.space_of.get(v) if v is not None else None
                if s is not None and analysis.decision.loses[s]:
                    found.add(analysis.space_key(s))
    return found


def kept_cache_heads(heads: Sequence[HeadReport]) -> dict[str, list[int]]:
    """KV cache input/output → the K/V heads it keeps, over the attention blocks that lost any."""
    return {name: kept for block in heads for name, kept in block.cache.items()}


def _fixed(dims: tuple[int | str | None, ...]) -> tuple[int | None, ...]:
    """The dims a caller relies on: the static ones (a symbolic dim may be named or refined on the way)."""
    return tuple(d if isinstance(d, int) else None for d in dims)


def prepare_for_analysis(model: ir.Model, fold: bool = True) -> bool:
    """The graph as the channel rules read it: constants folded (weights and biases must be constants to be read;
    `fold` False when fold-constants just ran), exporter variants in one form (`canonical.py`), shapes inferred.
    True when the graph changed."""
    modified = fold and FoldConstantsPass()(model).modified
    infer_shapes(model, symbolic=True)
    for _ in range(4):  # sizes read as numbers let more fold, and folded targets more read as canonical forms
        if not canonicalize(model):
            break
        modified = True
        FoldConstantsPass()(model)
        infer_shapes(model, symbolic=True)  # the canonical forms' new values
    return modified


def plan_two_four_restores(analysis: DeadChannelAnalysis) -> tuple[list[TwoFourRestore], dict[int, np.ndarray]]:
    """For every space losing channels that a 2:4 weight reduces over: when the kept channels no longer form
    valid groups of 4 in place, search an order that does (`permutation.restore_order`). One order serves every
    reader of the space, so their patterns are searched together. Returns the reports and the orders by space."""
    reports = []
    orders: dict[int, np.ndarray] = {}
    for s, space in enumerate(analysis.walk.spaces):
        if not space.values or not analysis.has_removals(space.values[0]):
            continue
        patterns, names = [], []
        for node in analysis.readers(s):
            weight, axis = _reduction_weight(node, analysis)
            if weight is None or not is_two_four(weight, axis):  # checked in place: most readers are not 2:4
                continue
            full = np.moveaxis(weight, axis, 0)
            kept_rows = full[:, analysis.kept(node.outputs[0])]
            patterns.append(kept_rows.reshape(full.shape[0], -1) != 0)
            names.append(source_name(node.inputs[1]))  # type: ignore[arg-type]
        if not patterns:
            continue
        start = time.perf_counter()
        removed = analysis.removed(space.values[0])
        pattern = np.concatenate(patterns, axis=1)
        natural = np.flatnonzero(~removed)
        if two_four_violations(pattern[natural], 0)[0] == 0.0:
            continue  # still 2:4 in place: nothing was lost
        reason = analysis.why_not_permutable(s)
        order = restore_order(pattern, removed) if reason is None else None
        if reason is None and order is None:
            reason = "no order of the kept channels makes every group of 4 valid"
        if order is not None:
            orders[s] = order
        reports.append(
            TwoFourRestore(
                weights=names,
                channels_before=space.count,
                channels_after=len(natural),
                restored=order is not None,
                reordered=order is not None and not np.array_equal(order, natural),
                reason=reason,
                seconds=time.perf_counter() - start,
            )
        )
        if order is None:
            log.warning("2:4 of %s lost to channel removal: %s", ", ".join(names), reason)
    return reports, orders


def reduction_matrix(node: ir.Node, analysis: DeadChannelAnalysis) -> np.ndarray | None:
    """A reader's weight with its reduction axis first: [input channel, output channel, …]."""
    weight, axis = _reduction_weight(node, analysis)
    return None if weight is None else np.moveaxis(weight, axis, 0)


def _reduction_weight(node: ir.Node, analysis: DeadChannelAnalysis) -> tuple[np.ndarray | None, int]:
    """A reader's (Conv, Gemm, MatMul) weight as stored, and its reduction axis."""
    weight = analysis.weight(node.inputs[1]) if node.inputs[1] is not None else None
    return weight, reduction_axis(node)
