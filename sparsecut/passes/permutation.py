"""Channel orders for 2:4 sparsity. Permuting the channels of a tensor — its producer's output rows, every
consumer's input columns, every per-channel parameter in between — changes nothing the model computes, but it
changes which channels share a group of 4 along a consumer's reduction axis, hence whether a weight is 2:4.

A consumer's weight is seen as a matrix P[channel, row]: rows are everything but the reduction axis (Conv:
(k, r, s); Gemm/MatMul: the output j). Several consumers of the same channels stack their rows: one order serves
them all. A group G of channels is 2:4 when every row has ≤ 2 nonzeros in G.

**restore_order** (after channel removal): a weight that was 2:4 is cut by removal into *fragments* — the
survivors of each original group of 4 — and each fragment is still valid (a subset of a valid group). Fragments
of 4 stay whole groups; the others are packed into groups of 4: greedy first fit, hardest fragments first (the
largest, then those with the most nonzero rows), where a group G takes fragment F iff no row has 2 nonzeros in
one and any in the other (two(G) ∧ one(F) = one(G) ∧ two(F) = ∅, tested on bitsets one 64-row word first, so that
most candidates are dropped after one AND). The result is exactly 2:4 or is not used.

**search_order** (enforce-2to4; NVIDIA ASP, Pool & Yu, "Channel Permutations for N:M Sparsity", 2021): find an
order that maximises the magnitude kept by 2:4 pruning, Σ_groups Σ_rows (sum of the 2 largest |w| of the group in
the row). Rounds of a random perfect matching of the groups; each pair of groups (8 channels) is re-split the best
of all 35 ways into two groups of 4 (ASP's exhaustive stripe-pair search); stop when a round gains < 1e-4 or the
time budget is spent. Starts from the identity, so it never keeps less than no permutation.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

__all__ = ["kept_magnitude", "restore_order", "search_order"]


def _bitsets(pattern: np.ndarray) -> np.ndarray:
    """Pack boolean rows [n, rows] into uint64 words [n, ceil(rows / 64)]."""
    n, rows = pattern.shape
    width = -(-rows // 64) * 64
    padded = np.zeros((n, width), bool)
    padded[:, :rows] = pattern
    return np.packbits(padded, axis=1).view(np.uint64)


def restore_order(pattern: np.ndarray, removed: np.ndarray) -> np.ndarray | None:
    """An order of the kept channels (original indices) under which `pattern` [channels, rows] is 2:4, given that
    it was 2:4 in the original order and the channels `removed` (a mask) go; None when the search finds none.
    The natural order (kept channels in place) is returned as is when it is already 2:4."""
    kept = np.flatnonzero(~removed)
    if _violations(pattern[kept]) == 0:
        return kept
    fragments = [np.flatnonzero(~removed[g : g + 4]) + g for g in range(0, len(removed), 4)]
    fragments = [f for f in fragments if len(f)]
    whole = [f for f in fragments if len(f) == 4]
    parts = [f for f in fragments if len(f) < 4]
    counts = np.stack([pattern[f].sum(axis=0) for f in parts]) if parts else np.zeros((0, pattern.shape[1]), int)
    one, two = _bitsets(counts >= 1), _bitsets(counts >= 2)
    sizes = np.array([len(f) for f in parts])
    # hardest first: large fragments, then those with many nonzero rows (a zero channel fits anywhere)
    order = np.lexsort((-(counts >= 1).sum(axis=1), -sizes)) if parts else np.zeros(0, int)
    free = np.ones(len(parts), bool)
    groups: list[list[int]] = []
    partial: list[list[int]] = []
    for first in order:
        if not free[first]:
            continue
        free[first] = False
        members, g_one, g_two, size = [int(first)], one[first].copy(), two[first].copy(), int(sizes[first])
        while size < 4:
            candidates = order[free[order] & (sizes[order] <= 4 - size)]
            fits = candidates[((g_two[0] & one[candidates, 0]) | (g_one[0] & two[candidates, 0])) == 0]
            if len(fits):
                clash = (g_two & one[fits]) | (g_one & two[fits])
                fits = fits[~clash.any(axis=1)]
            if not len(fits):
                break
            best = fits[np.argmax(sizes[fits])]  # first of the largest that fit, in hardest-first order
            free[best] = False
            g_two |= (g_one & one[best]) | two[best]
            g_one |= one[best]
            members.append(int(best))
            size += int(sizes[best])
        (groups if size == 4 else partial).append(members)
    result = np.concatenate(
        [*whole, *(parts[i] for g in groups for i in g), *(parts[i] for g in partial for i in g)]
    ).astype(np.int64)
    return result if _violations(pattern[result]) == 0 else None


def _violations(pattern: np.ndarray) -> int:
    """Groups of 4 consecutive channels (the last one padded with zero channels) with > 2 nonzeros in a row."""
    n = pattern.shape[0]
    padded = np.zeros((-(-n // 4) * 4, pattern.shape[1]), np.int32)
    padded[:n] = pattern
    return int((padded.reshape(-1, 4, pattern.shape[1]).sum(axis=1) > 2).sum())


def kept_magnitude(magnitude: np.ndarray, order: np.ndarray | None = None) -> float:
    """Σ|w| that magnitude 2:4 pruning keeps, for `magnitude` [channels, rows] (channels a multiple of 4) in
    `order` (identity when None)."""
    m = magnitude if order is None else magnitude[order]
    grouped = np.sort(m.reshape(-1, 4, m.shape[1]), axis=1)
    return float(grouped[:, 2:].sum())


# the 35 ways to split 8 channels into two groups of 4 (the first group holds channel 0)
_SPLITS = np.array([[*a, *sorted(set(range(8)) - set(a))] for a in itertools.combinations(range(8), 4) if 0 in a])


def search_order(
    magnitude: np.ndarray, budget_s: float = 1.0, seed: int = 0, tolerance: float = 1e-4
) -> tuple[np.ndarray, float, float]:
    """(order, kept without permutation, kept with it) for `magnitude` [channels, rows] = |w| of every consumer
    of the channels, stacked along rows; channels a multiple of 4. See the module docstring."""
    n = magnitude.shape[0]
    order = np.arange(n)
    baseline = kept_magnitude(magnitude)
    groups = n // 4
    if groups < 2:
        return order, baseline, baseline
    rng = np.random.default_rng(seed)
    m = magnitude.astype(np.float32)
    current = baseline
    deadline = time.perf_counter() + budget_s
    # pairs per batch so that a batch's work array stays near 64 MB
    chunk = max(1, int(64e6 / 4 / (len(_SPLITS) * 8 * m.shape[1])))
    while time.perf_counter() < deadline:
        pairs = rng.permutation(groups)[: groups // 2 * 2].reshape(-1, 2)
        gained = 0.0
        for start in range(0, len(pairs), chunk):
            batch = pairs[start : start + chunk]
            channels = (batch[:, :, None] * 4 + np.arange(4)).reshape(len(batch), 8)  # [p, 8] positions
            members = order[channels]
            block = m[members]  # [p, 8, rows]
            split = block[:, _SPLITS]  # [p, 35, 8, rows]
            split = np.sort(split.reshape(len(batch), len(_SPLITS), 2, 4, -1), axis=3)
            score = split[:, :, :, 2:].sum(axis=(2, 3, 4))  # [p, 35]
            best = score.argmax(axis=1)
            gain = score[np.arange(len(batch)), best] - score[:, 0]  # split 0 is the current grouping
            better = gain > 1e-6 * np.maximum(score[:, 0], 1e-30)
            if better.any():
                rows = np.flatnonzero(better)
                order[channels[rows]] = members[rows[:, None], _SPLITS[best[rows]]]
                gained += float(gain[better].sum())
            if time.perf_counter() >= deadline:
                break
        current += gained
        if gained <= tolerance * max(current, 1e-30):
            break
    return order, baseline, kept_magnitude(magnitude, order)
