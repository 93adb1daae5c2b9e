"""Is a latency ratio real? A bootstrap interval over interleaved rounds.

Variants are timed in rounds (each round runs every variant in turn), so a slow moment of the machine hits every
variant of that round alike. The ratio reported is p50(reference) / p50(candidate) over all samples; its interval
resamples whole rounds with replacement — the same rounds for both variants, keeping them paired — and takes the
percentile interval of the ratio over the resamples (Efron's percentile bootstrap). When the interval holds 1.0
the two are not told apart: "within noise".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sparsecut.errors import TargetError
from sparsecut.report import Speedup
from sparsecut.targets.timing import percentile

__all__ = ["MIN_ROUNDS", "speedup"]

MIN_ROUNDS = 3  # fewer rounds than this cannot say anything about the spread between rounds
RESAMPLES = 2000


def speedup(
    reference: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Speedup:
    """`reference[r]` and `candidate[r]`: the latencies of round r (any unit, the same for both)."""
    if len(reference) != len(candidate):
        raise ValueError("reference and candidate must have the same rounds")
    if len(reference) < MIN_ROUNDS:
        raise TargetError(f"an interval needs at least {MIN_ROUNDS} interleaved rounds, got {len(reference)}")
    ref_rounds = [np.asarray(r, float) for r in reference]
    cand_rounds = [np.asarray(c, float) for c in candidate]
    value = _p50_ratio(ref_rounds, cand_rounds)
    rng = np.random.default_rng(seed)
    rounds = len(reference)
    ratios = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(0, rounds, rounds)
        ratios[i] = _p50_ratio([ref_rounds[k] for k in picked], [cand_rounds[k] for k in picked])
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return Speedup(value=value, low=float(min(low, value)), high=float(max(high, value)), confidence=confidence)


def _p50_ratio(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    ref = percentile(np.sort(np.concatenate(reference)).tolist(), 50)
    cand = percentile(np.sort(np.concatenate(candidate)).tolist(), 50)
    return ref / cand if cand > 0 else float("inf")
