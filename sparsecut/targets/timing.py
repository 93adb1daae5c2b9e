"""Measuring honestly: warm-up, then a fixed number of iterations or a duration, one sample per inference.

Percentiles use trtexec's rule, so CPU and TensorRT reports read alike: with the n samples sorted,
p-th percentile = sorted[max(n − 1 − ⌊(1 − p/100)·n⌋, 0)] (a measured sample, never an interpolation).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

from sparsecut.errors import TargetError

__all__ = ["LatencyStats", "measure", "percentile", "summarize"]


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    n = len(sorted_samples)
    above = math.floor((100 - p) * n / 100 + 1e-9)  # (1 − p/100)·n, without 1 − 0.9 = 0.0999… in binary
    return sorted_samples[max(n - 1 - above, 0)]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    throughput: float  # samples/s
    iterations: int


def summarize(samples_ns: Sequence[int], batch: int) -> LatencyStats:
    if not samples_ns:
        raise TargetError("no timing samples were taken (iterations 0 and no duration?)")
    ms = sorted(s / 1e6 for s in samples_ns)
    total_s = sum(samples_ns) / 1e9
    return LatencyStats(
        min_ms=ms[0],
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms),
        max_ms=ms[-1],
        throughput=batch * len(ms) / total_s if total_s > 0 else float("inf"),
        iterations=len(ms),
    )


def measure(
    run_once: Callable[[], object],
    *,
    warmup: int,
    iterations: int,
    duration: float | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[int]:
    """Time `run_once` after `warmup` calls: `iterations` samples, or as many as fit in `duration` seconds
    (at least one). Returns nanoseconds per call. `clock` is injectable so tests can use a fake one."""
    for _ in range(warmup):
        run_once()
    samples: list[int] = []
    deadline = None if duration is None else clock() + int(duration * 1e9)
    while True:
        start = clock()
        run_once()
        end = clock()
        samples.append(end - start)
        if deadline is None and len(samples) >= iterations:
            return samples
        if deadline is not None and end >= deadline:
            return samples
