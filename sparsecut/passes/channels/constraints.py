"""Which channels can go: the analysis' second and third stages.

2. **Coupling** (`couple`):
   - *needed* (backward): a LIVE channel that cannot influence a graph output (read only by zero weights, or
     gated by a Mul with a ZERO factor — an SE gate on a dead channel) counts as dead;
   - *removable* where, in every tensor of its space, the channel is not LIVE, and wherever a tensor carrying a
     nonzero constant is read by a reducing op, that op absorbs it exactly (see the sinks' refusals). Graph
     inputs/outputs and tensors touched by a barrier keep their channels (the walk's reasons);
   - a channel is removed only with every channel it is coupled to (connected components over the index maps).
3. **Decision** (`decide`): grouped convs lose channels in equal numbers per group; each space keeps a multiple of
   `align` channels, or at least the count measured best for it (a few dead channels stay; reported as such).

Each stage returns a frozen result and leaves the one before it as it was (reasons are copied, then added to).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx_ir as ir

from sparsecut.passes.channels.rules import ChannelRule, Kind
from sparsecut.passes.channels.spaces import ChannelWalk, add_reason

__all__ = [
    "ALIGNED",
    "MEASURED",
    "SHARED_WEIGHT",
    "SLOWER_WHEN_REMOVED",
    "Coupling",
    "Decision",
    "couple",
    "decide",
]

log = logging.getLogger(__name__)

# why dead channels were kept although removable
ALIGNED = "kept for alignment"
MEASURED = "kept: the chosen count runs faster on the target (measured)"
SLOWER_WHEN_REMOVED = "slower when removed (measured)"
SHARED_WEIGHT = (
    "kept: a layer here reads a weight other nodes read too, and slicing a copy for it would leave the model larger"
)


@dataclasses.dataclass(frozen=True)
class Coupling:
    """Stage 2: which channels are needed, which are LIVE somewhere in their space, how channels are coupled (all
    channels of all spaces in a row: space s holds `offsets[s]` … `offsets[s + 1]` − 1), and the reasons channels
    must stay so far."""

    walk: ChannelWalk
    needed: dict[ir.Value, np.ndarray]
    live_somewhere: list[np.ndarray]  # per space: LIVE and needed in some tensor of it
    offsets: np.ndarray
    n_components: int
    label: np.ndarray  # per channel: its connected component
    groups: list[list[int]]  # spaces joined by index maps, in order of first appearance
    group_of_space: dict[int, int]
    reasons: list[dict[int, str]]

    def span(self, value: ir.Value) -> slice:
        """The channels of `value`'s space among all channels."""
        s = self.walk.space_of[value]
        return slice(int(self.offsets[s]), int(self.offsets[s + 1]))

    def per_space(self, flags: np.ndarray) -> np.ndarray:
        """How many channels of each space are flagged, for flags over all spaces' channels in a row (counted at
        once: thousands of spaces, one numpy call each, add up)."""
        before = np.concatenate([[0], np.cumsum(flags)])  # flagged channels before each index
        return before[self.offsets[1:]] - before[self.offsets[:-1]]


@dataclasses.dataclass(frozen=True)
class Decision:
    """Stage 3: the channels that go (over all channels in a row), per space how many dead ones stay for the
    count, whether the space loses any, and the final reasons channels stay."""

    removable: np.ndarray
    kept_for_count: dict[int, int]
    loses: list[bool]
    reasons: list[dict[int, str]]


def couple(walk: ChannelWalk, graph: ir.Graph) -> Coupling:
    reasons = [dict(r) for r in walk.reasons]
    needed = _needed_channels(walk, graph)
    live_somewhere = _check_removability(walk, needed, reasons)
    offsets = np.cumsum([0] + [sp.count for sp in walk.spaces])
    n_components, label = _components(walk, offsets)
    groups, group_of_space = _coupled_groups(walk)
    return Coupling(walk, needed, live_somewhere, offsets, n_components, label, groups, group_of_space, reasons)


def _needed_channels(walk: ChannelWalk, graph: ir.Graph) -> dict[ir.Value, np.ndarray]:
    """Backward from the graph outputs: which channels of each tensor can influence an output at all."""
    needed = {v: np.zeros(walk.spaces[s].count, bool) for v, s in walk.space_of.items()}
    for value in graph.outputs:
        if value in needed:
            needed[value][:] = True
    plans, barriers = walk.plans, walk.barriers
    for node in reversed(list(graph)):
        plan = plans.get(node)
        barrier = node in barriers
        if plan is None and not barrier:
            continue  # constant, or claimed by another node's rule
        if plan is not None and plan.kind is Kind.SHAPE:
            continue
        inputs = [v for v in node.inputs if v is not None and v in needed]
        if not inputs and (plan is None or plan.kind is not Kind.ATTENTION):  # a block reads entries anywhere
            continue
        if plan is None:  # a barrier reads everything
            for v in inputs:
                needed[v][:] = True
        else:
            walk.rules[node].backward(node, plan, walk, needed)
    return needed


def _check_removability(
    walk: ChannelWalk, needed: dict[ir.Value, np.ndarray], reasons: list[dict[int, str]]
) -> list[np.ndarray]:
    """Veto LIVE (and needed) channels, and constants that a reducing consumer cannot absorb. Returns per space
    which channels are LIVE (and needed) in some tensor of it."""
    live_in = [np.zeros(space.count, bool) for space in walk.spaces]
    for value, s in walk.space_of.items():
        live_in[s] |= walk.live[value] & needed[value]
    for s, live in enumerate(live_in):
        if np.count_nonzero(live):  # (not `live.any()`: 5× slower on small arrays, asked for every space)
            add_reason(reasons[s], walk.spaces[s].count, live, "live")
    for sink in walk.sinks:
        if sink.refusal is None:
            continue  # it absorbs the constants it reads
        nonzero = walk.const[sink.value] != 0  # (0 where LIVE: see `set_state`)
        if nonzero.any():
            s = walk.space_of[sink.value]
            add_reason(reasons[s], walk.spaces[s].count, nonzero, sink.refusal)
    return live_in


def _components(walk: ChannelWalk, offsets: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of all channels of all spaces over the index maps: (count, label per channel)."""
    total = int(offsets[-1])
    if not walk.maps:  # no index map: every channel is its own component (and scipy stays unloaded)
        return total, np.arange(total)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = [np.zeros(0, np.int64)]
    cols = [np.zeros(0, np.int64)]
    for x, ix, y, iy in walk.maps:
        rows.append(offsets[walk.space_of[x]] + ix)
        cols.append(offsets[walk.space_of[y]] + iy)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(total, total))
    n, label = connected_components(graph, directed=False)
    return int(n), label


def _coupled_groups(walk: ChannelWalk) -> tuple[list[list[int]], dict[int, int]]:
    """Spaces joined by index maps; one entry per group, in order of first appearance; and each space's group."""
    parent = list(range(len(walk.spaces)))

    def find(s: int) -> int:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for x, _, y, _ in walk.maps:
        rx, ry = find(walk.space_of[x]), find(walk.space_of[y])
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    groups: dict[int, list[int]] = {}
    for s in range(len(walk.spaces)):
        groups.setdefault(find(s), []).append(s)
    group_of_space = {s: gi for gi, members in enumerate(groups.values()) for s in members}
    return list(groups.values()), group_of_space


def _vetoed(c: Coupling, reasons: list[dict[int, str]], enabled_groups: set[int] | None) -> np.ndarray:
    """Per channel: whether its component holds a channel that must stay (or lies in a group not enabled)."""
    bad = np.zeros(int(c.offsets[-1]), bool)
    for s, mine in enumerate(reasons):
        if mine:
            bad[c.offsets[s] + np.fromiter(mine, int)] = True
        if enabled_groups is not None and c.group_of_space[s] not in enabled_groups:
            bad[c.offsets[s] : c.offsets[s + 1]] = True
    component_bad = np.zeros(c.n_components, bool)
    np.logical_or.at(component_bad, c.label, bad)
    return component_bad[c.label]


def decide(
    c: Coupling,
    align: int,
    counts: Mapping[str, int],
    enabled_groups: set[int] | None,
    space_key: Callable[[int], str],
    kept_whole: Mapping[str, str] | None = None,
) -> Decision:
    """Veto channels until grouped convs lose equal counts per group and every space keeps a multiple of `align`
    channels (or its measured count, `counts` by `space_key`). `kept_whole`: spaces (by `space_key`) that keep every
    channel, with why. Vetoes only grow, so this ends."""
    walk = c.walk
    reasons = [dict(r) for r in c.reasons]
    if kept_whole:
        for s, sp in enumerate(walk.spaces):
            if space_key(s) in kept_whole:
                add_reason(reasons[s], sp.count, None, kept_whole[space_key(s)])
    order = np.argsort(c.label, kind="stable")
    starts = np.searchsorted(c.label[order], np.arange(c.n_components + 1))
    kept_for_count: dict[int, int] = {}
    constrained = [
        (node, rule) for node, rule in walk.rules.items() if type(rule).constrain is not ChannelRule.constrain
    ]

    def veto(removable: np.ndarray, nodes: np.ndarray) -> None:
        """Veto whole components at once, so later decisions in the same sweep see them."""
        for component in np.unique(c.label[nodes]):
            removable[order[starts[component] : starts[component + 1]]] = False

    def keep(removable: np.ndarray, nodes: np.ndarray, reason: str) -> None:
        """A rule's constraint: these channels (global indices) stay, for `reason`."""
        spaces = np.searchsorted(c.offsets, nodes, side="right") - 1
        for s in np.unique(spaces):
            add_reason(reasons[s], walk.spaces[s].count, nodes[spaces == s] - c.offsets[s], reason)
        veto(removable, nodes)

    for _ in range(1000):
        removable = ~_vetoed(c, reasons, enabled_groups)
        changed = False
        for node, rule in constrained:
            changed |= rule.constrain(node, walk.plans[node], c, removable, keep)
        for s, sp in enumerate(walk.spaces):
            mask = removable[c.offsets[s] : c.offsets[s + 1]]
            kept = sp.count - int(mask.sum())
            chosen = counts.get(space_key(s)) if counts else None
            if chosen is None:
                # never remove every channel of a tensor (an unused branch is cleanup's job, not ours)
                target, reason = min(sp.count, max(-(-kept // align) * align, align)), ALIGNED
            else:
                target = min(sp.count, max(chosen, kept, 1))
                reason = SLOWER_WHEN_REMOVED if target == sp.count else MEASURED
            if target > kept:
                restore = np.flatnonzero(mask)[-(target - kept) :]
                add_reason(reasons[s], sp.count, restore, reason)
                kept_for_count[s] = kept_for_count.get(s, 0) + len(restore)
                veto(removable, c.offsets[s] + restore)
                changed = True
        if not changed:
            return Decision(removable, kept_for_count, (c.per_space(removable) > 0).tolist(), reasons)
    log.warning("channel constraints did not settle; removing no channel")
    nothing = np.zeros(int(c.offsets[-1]), bool)
    return Decision(nothing, kept_for_count, [False] * len(walk.spaces), reasons)
