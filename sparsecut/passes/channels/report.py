"""Reporting an analysis: per coupled group, where it lives, channels before → after, and why each dead channel
that stays was kept."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sparsecut.passes.channels.heads import AttentionBlock
from sparsecut.passes.channels.rules import READERS
from sparsecut.passes.channels.rules.attention import GQA_GROUPS, AttentionPlan
from sparsecut.passes.nodes import source_name
from sparsecut.report import ChannelGroupReport, HeadReport

if TYPE_CHECKING:
    from sparsecut.passes.channels.analysis import DeadChannelAnalysis

__all__ = ["GQA_GROUPS", "group_reports", "head_reports", "location"]


def group_reports(a: DeadChannelAnalysis) -> list[ChannelGroupReport]:
    reports = []
    reasons = _ReasonFinder(a)
    walk, coupling, decision = a.walk, a.coupling, a.decision
    # per space, counted over all channels at once. Dead: not LIVE (and needed) in any tensor of its space — what
    # pruning killed.
    dead = ~np.concatenate(coupling.live_somewhere) if walk.spaces else np.zeros(0, bool)
    stays = dead & ~decision.removable
    sizes = [space.count for space in walk.spaces]
    removed, dead_count, kept_dead_count = (
        coupling.per_space(flags).tolist() for flags in (decision.removable, dead, stays)
    )
    offsets = coupling.offsets
    for gi, members in enumerate(coupling.groups):
        before = sum(sizes[s] for s in members)
        after = before - sum(removed[s] for s in members)
        dead_here = sum(dead_count[s] for s in members)
        if dead_here == 0 and after == before:
            continue
        kept_dead: dict[str, int] = {}
        for s in members:
            if kept_dead_count[s]:
                for k in np.flatnonzero(stays[offsets[s] : offsets[s + 1]]).tolist():
                    reason = reasons(s, k)
                    kept_dead[reason] = kept_dead.get(reason, 0) + 1
        reports.append(
            ChannelGroupReport(
                group=gi,
                location=location(a, members),
                tensors=sum(len(walk.spaces[s].values) for s in members),
                channels_before=before,
                channels_after=after,
                dead=dead_here,
                kept_dead=kept_dead,
                kept_for_alignment=sum(decision.kept_for_count.get(s, 0) for s in members),
            )
        )
    return reports


class _ReasonFinder:
    """Why channel k of space s stays: its own reason, else the first reason in its coupled component."""

    def __init__(self, a: DeadChannelAnalysis) -> None:
        self.a = a
        self.by_component: dict[int, str] | None = None

    def __call__(self, s: int, k: int) -> str:
        reasons, coupling = self.a.decision.reasons, self.a.coupling
        own = reasons[s].get(k)
        if own is not None and own != "live":
            return own
        if self.by_component is None:
            self.by_component = {}
            for other, mine in enumerate(reasons):
                for j, reason in mine.items():
                    if reason != "live":
                        self.by_component.setdefault(int(coupling.label[coupling.offsets[other] + j]), reason)
        coupled = self.by_component.get(int(coupling.label[coupling.offsets[s] + k]))
        return f"coupled: {coupled}" if coupled else "coupled to a live channel"


def location(a: DeadChannelAnalysis, members: list[int]) -> str:
    """Where a group lives, for people: the weights that produce its channels (or its first tensor)."""
    names = []
    spaces, plans = a.walk.spaces, a.walk.plans
    for s in members:
        for value in spaces[s].values:
            producer = value.producer()
            plan = plans.get(producer) if producer is not None else None
            if plan is not None and plan.kind in READERS:
                weight = producer.inputs[1]  # type: ignore[union-attr]
                names.append(source_name(weight) if weight is not None else producer.name or "?")  # type: ignore[union-attr]
    if not names:
        names = [spaces[members[0]].values[0].name or "?"]
    shown = ", ".join(dict.fromkeys(names))
    return shown if len(shown) < 80 else shown[:77] + "…"


def head_reports(a: DeadChannelAnalysis) -> list[HeadReport]:
    """Per attention block: a head is dead when none of its output features is LIVE and needed (its V is zero or
    constant, or the output projection reads none of it); it goes when its features are removable."""
    reports = []
    reasons = _ReasonFinder(a)
    walk = a.walk
    for plan in walk.plans.values():
        if not isinstance(plan, AttentionPlan):
            continue
        block = plan.block
        s = walk.space_of[block.exit]
        d = block.head_dim
        live = np.asarray(walk.live[block.exit] & a.coupling.needed[block.exit]).reshape(block.heads, d)
        dead = np.asarray(~live.any(axis=1), bool)
        removed = np.asarray(np.asarray(a.removed(block.exit)).reshape(block.heads, d).all(axis=1), bool)
        kept: dict[str, int] = {}
        group_removed = np.asarray(removed.reshape(block.kv_heads, -1).all(axis=1), bool)
        group_of = block.kv_of(np.arange(block.heads))
        for h in range(block.heads):
            if dead[h] and not removed[h]:
                grouped = block.kv_heads < block.heads and not group_removed[group_of[h]]
                reason = GQA_GROUPS if grouped else reasons(s, h * d)
                kept[reason] = kept.get(reason, 0) + 1
        kept_heads = max(1, int((~removed).sum()))
        v_after = int((~np.asarray(a.removed(block.exit))).sum()) // kept_heads
        qk_after = d
        if block.separate:
            assert block.q_entry is not None
            qk_after = int((~np.asarray(a.removed(block.q_entry.value))).sum()) // kept_heads
        consumer = next((use.node for use in block.exit.uses()), None)
        weight = consumer.inputs[1] if consumer is not None and len(consumer.inputs) > 1 else None
        reports.append(
            HeadReport(
                location=source_name(weight) if weight is not None else block.exit.name or "?",
                heads=block.heads,
                kv_heads=block.kv_heads,
                head_dim=d,
                dead=int(dead.sum()),
                removable=int(removed.sum()),
                kept=kept,
                qk_dim_after=qk_after,
                v_dim_after=v_after,
                cache={str(v.name): kept_kv for v in block.cache} if (kept_kv := _kept_kv(block, removed)) else {},
            )
        )
    return reports


def _kept_kv(block: AttentionBlock, removed: np.ndarray) -> list[int]:
    """The K/V heads a KV cache keeps, where it loses any (else empty)."""
    kept = sorted(set(block.kv_of(np.flatnonzero(~removed)).tolist()))
    return kept if len(kept) < block.kv_heads else []
