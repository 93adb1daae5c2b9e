"""Latency statistics on a fake clock: exact percentiles (trtexec's rule), throughput, duration mode."""

from __future__ import annotations

import pytest

from sparsecut.errors import TargetError
from sparsecut.targets.timing import measure, percentile, summarize


class FakeClock:
    """Each call to the timed function takes the next duration from a script (nanoseconds)."""

    def __init__(self, durations_ns: list[int]) -> None:
        self.now = 0
        self.durations = iter(durations_ns)
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def step(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


def test_measure_warms_up_then_records_each_call():
    clock = FakeClock([999] * 3 + [5_000_000, 1_000_000, 3_000_000, 2_000_000, 4_000_000])
    samples = measure(clock.step, warmup=3, iterations=5, clock=clock)
    assert samples == [5_000_000, 1_000_000, 3_000_000, 2_000_000, 4_000_000]
    assert clock.calls == 8


def test_percentiles_follow_trtexec():
    ms = [float(i) for i in range(1, 101)]  # 1 … 100 ms
    assert percentile(ms, 50) == 50.0  # sorted[100 - 1 - 50] = sorted[49]
    assert percentile(ms, 90) == 90.0  # sorted[100 - 1 - 10]
    assert percentile(ms, 99) == 99.0  # sorted[100 - 1 - 1]
    assert percentile([7.0], 99) == 7.0


def test_summary_is_exact():
    samples = [int(v * 1e6) for v in (4, 1, 3, 2, 10)]
    stats = summarize(samples, batch=2)
    assert (stats.min_ms, stats.max_ms, stats.mean_ms) == (1.0, 10.0, 4.0)
    assert stats.p50_ms == 3.0  # sorted [1,2,3,4,10][max(5-1-2, 0)] = 3
    assert stats.p90_ms == 10.0
    assert stats.throughput == pytest.approx(2 * 5 / 0.020)  # 10 samples in 20 ms
    assert stats.iterations == 5


def test_duration_mode_stops_at_the_deadline():
    clock = FakeClock([1_000_000] * 100)
    samples = measure(clock.step, warmup=0, iterations=1, duration=0.0105, clock=clock)
    assert len(samples) == 11  # the sample that crosses 10.5 ms is the last


def test_no_samples_is_an_error():
    with pytest.raises(TargetError, match="no timing samples"):
        summarize([], batch=1)
