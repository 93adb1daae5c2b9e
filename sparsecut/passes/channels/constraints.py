"""Which channels can go: removability, coupling and the constraints on counts.

1. **Needed** (backward): a LIVE channel that cannot influence a graph output (read only by zero weights, or
   gated by a Mul with a ZERO factor — an SE gate on a dead channel) counts as dead.
2. **Removable**: channel k of a space, when in every tensor of the space it is not LIVE, and wherever a tensor
   carrying a nonzero constant is read by a reducing op, that op absorbs it exactly (see the sinks' refusals).
   Graph inputs/outputs and tensors touched by an op without a rule (a *barrier*) keep their channels. A channel
   is removed only with every channel it is coupled to (connected components over the index maps).
3. **Counts**: grouped convs lose channels in equal numbers per group; each space keeps a multiple of `align`
   channels, or at least the count measured best for it (a few dead channels stay; reported as such).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules import ChannelRule, Kind
from sparsecut.passes.channels.spaces import add_reason

if TYPE_CHECKING:
    from sparsecut.passes.channels.analysis import DeadChannelAnalysis

__all__ = ["ALIGNED", "MEASURED", "SLOWER_WHEN_REMOVED", "apply_constraints", "components", "coupled_groups"]

log = logging.getLogger(__name__)

# why dead channels were kept although removable
ALIGNED = "kept for alignment"
MEASURED = "kept: the chosen count runs faster on the target (measured)"
SLOWER_WHEN_REMOVED = "slower when removed (measured)"


def needed_channels(a: DeadChannelAnalysis) -> dict[ir.Value, np.ndarray]:
    """Backward from the graph outputs: which channels of each tensor can influence an output at all."""
    needed = {v: np.zeros(a.spaces[s].count, bool) for v, s in a.space_of.items()}
    for value in a.graph.outputs:
        if value in needed:
            needed[value][:] = True
    for node in reversed(list(a.graph)):
        kind = a.kinds.get(node)
        if kind in (Kind.SHAPE, Kind.CONSTANT, Kind.CLAIMED):
            continue
        inputs = [v for v in node.inputs if v is not None and v in needed]
        if not inputs and kind is not Kind.ATTENTION:  # a block's rule reads its entries wherever they are
            continue
        if kind is None:  # a barrier reads everything
            for v in inputs:
                needed[v][:] = True
        else:
            a.rule_of[node].backward(node, kind, a.walk, needed)
    return needed


def check_removability(a: DeadChannelAnalysis) -> list[np.ndarray]:
    """Veto LIVE (and needed) channels, and constants that a reducing consumer cannot absorb. Returns per space
    which channels are LIVE (and needed) in some tensor of it."""
    live_in = [np.zeros(space.count, bool) for space in a.spaces]
    for value, s in a.space_of.items():
        live_in[s] |= a.live[value] & a.needed[value]
    for s, live in enumerate(live_in):
        if np.count_nonzero(live):  # (not `live.any()`: 5× slower on small arrays, asked for every space)
            add_reason(a.spaces[s], live, "live")
    for sink in a.walk.sinks:
        if sink.refusal is None:
            continue  # it absorbs the constants it reads
        nonzero = a.const[sink.value] != 0  # (0 where LIVE: see `set_state`)
        if nonzero.any():
            add_reason(a.spaces[a.space_of[sink.value]], nonzero, sink.refusal)
    return live_in


def components(a: DeadChannelAnalysis) -> tuple[int, np.ndarray]:
    """Connected components of all channels of all spaces over the index maps: (count, label per channel)."""
    total = int(a.offsets[-1])
    if not a.walk.maps:  # no index map: every channel is its own component (and scipy stays unloaded)
        return total, np.arange(total)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [np.zeros(0, np.int64)]
    cols = [np.zeros(0, np.int64)]
    for x, ix, y, iy in a.walk.maps:
        rows.append(a.offsets[a.space_of[x]] + ix)
        cols.append(a.offsets[a.space_of[y]] + iy)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
    n, label = connected_components(graph, directed=False)
    return int(n), label


def coupled_groups(a: DeadChannelAnalysis) -> tuple[list[list[int]], dict[int, int]]:
    """Spaces joined by index maps; one entry per group, in order of first appearance; and each space's group."""
    parent = list(range(len(a.spaces)))

    def find(s: int) -> int:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for x, _, y, _ in a.walk.maps:
        rx, ry = find(a.space_of[x]), find(a.space_of[y])
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for s in range(len(a.spaces)):
        groups.setdefault(find(s), []).append(s)
    group_of_space = {s: gi for gi, members in enumerate(groups.values()) for s in members}
    return list(groups.values()), group_of_space


def _vetoed(a: DeadChannelAnalysis, enabled_groups: set[int] | None) -> np.ndarray:
    """Per channel: whether its component holds a channel that must stay (or lies in a group not enabled)."""
    bad = np.zeros(int(a.offsets[-1]), bool)
    for s, sp in enumerate(a.spaces):
        if sp.reasons:
            bad[a.offsets[s] + np.fromiter(sp.reasons, int)] = True
        if enabled_groups is not None and a.group_of_space[s] not in enabled_groups:
            bad[a.offsets[s] : a.offsets[s + 1]] = True
    component_bad = np.zeros(a.n_components, bool)
    np.logical_or.at(component_bad, a.label, bad)
    return component_bad[a.label]


def apply_constraints(
    a: DeadChannelAnalysis, align: int, counts: Mapping[str, int], enabled_groups: set[int] | None
) -> tuple[np.ndarray, dict[int, int]]:
    """Veto channels until grouped convs lose equal counts per group and every space keeps a multiple of `align`
    channels (or its measured count). Vetoes only grow, so this ends. Returns the removable mask over all
    channels, and per space how many dead channels were kept for the count."""
    order = np.argsort(a.label, kind="stable")
    starts = np.searchsorted(a.label[order], np.arange(a.n_components + 1))
    kept_for_count: dict[int, int] = {}
    constrained = [node for node, rule in a.rule_of.items() if type(rule).constrain is not ChannelRule.constrain]

    def veto(removable: np.ndarray, nodes: np.ndarray) -> None:
        """Veto whole components at once, so later decisions in the same sweep see them."""
        for component in np.unique(a.label[nodes]):
            removable[order[starts[component] : starts[component + 1]]] = False

    def keep(removable: np.ndarray, nodes: np.ndarray, reason: str) -> None:
        """A rule's constraint: these channels (global indices) stay, for `reason`."""
        spaces = np.searchsorted(a.offsets, nodes, side="right") - 1
        for s in np.unique(spaces):
            add_reason(a.spaces[s], nodes[spaces == s] - a.offsets[s], reason)
        veto(removable, nodes)

    for _ in range(1000):
        removable = ~_vetoed(a, enabled_groups)
        changed = False
        for node in constrained:
            changed |= a.rule_of[node].constrain(node, a, removable, keep)
        for s, sp in enumerate(a.spaces):
            mask = removable[a.offsets[s] : a.offsets[s + 1]]
            kept = sp.count - int(mask.sum())
            chosen = counts.get(a.space_key(s)) if counts else None
            if chosen is None:
                # never remove every channel of a tensor (an unused branch is cleanup's job, not ours)
                target, reason = min(sp.count, max(-(-kept // align) * align, align)), ALIGNED
            else:
                target = min(sp.count, max(chosen, kept, 1))
                reason = SLOWER_WHEN_REMOVED if target == sp.count else MEASURED
            if target > kept:
                restore = np.flatnonzero(mask)[-(target - kept) :]
                add_reason(sp, restore, reason)
                kept_for_count[s] = kept_for_count.get(s, 0) + len(restore)
                veto(removable, a.offsets[s] + restore)
                changed = True
        if not changed:
            return removable, kept_for_count
    log.warning("channel constraints did not settle; removing no channel")
    return np.zeros(int(a.offsets[-1]), bool), kept_for_count
