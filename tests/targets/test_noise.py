"""The interval of a latency ratio: known samples give a known interval; noise that holds 1.0 says so."""

from __future__ import annotations

import numpy as np
import pytest

from sparsecut.errors import TargetError
from sparsecut.targets.noise import speedup
from sparsecut.targets.timing import measure


def fake_clock(durations_ns):
    """A clock whose successive measure() samples are exactly `durations_ns`."""
    ticks = iter(np.cumsum([0, *[d for duration in durations_ns for d in (duration, 0)]]).tolist())
    return lambda: int(next(ticks))


def timed_rounds(per_round):
    """Samples as `measure` takes them on a fake clock, round by round."""
    return [measure(lambda: None, warmup=0, iterations=len(r), clock=fake_clock(r)) for r in per_round]


def test_identical_rounds_give_a_point_interval():
    reference = timed_rounds([[20, 20, 20]] * 5)
    candidate = timed_rounds([[10, 10, 10]] * 5)
    result = speedup(reference, candidate)
    assert (result.value, result.low, result.high) == (2.0, 2.0, 2.0)
    assert not result.within_noise
    assert result.describe() == "2.00× (95 % interval 2.00–2.00)"


def test_known_samples_known_interval():
    # p50 (trtexec's rule: a measured sample) of the pooled rounds; rounds resampled in pairs
    reference = timed_rounds([[100], [100], [120], [100], [100]])
    candidate = timed_rounds([[50], [50], [50], [60], [50]])
    result = speedup(reference, candidate)
    assert result.value == 2.0
    # every resample's ratio is one of 100/50, 100/60, 120/50, 120/60: the interval lies within them
    assert 100 / 60 <= result.low <= 2.0 <= result.high <= 120 / 50
    assert result == speedup(reference, candidate)  # seeded: the same samples give the same interval


def test_noise_around_one_is_said():
    rng = np.random.default_rng(0)
    reference = [list(100 + rng.normal(0, 5, 10)) for _ in range(8)]
    candidate = [list(100 + rng.normal(0, 5, 10)) for _ in range(8)]
    result = speedup(reference, candidate)
    assert result.within_noise and result.describe().endswith(", within noise")


def test_an_interval_needs_three_rounds():
    with pytest.raises(TargetError, match="an interval needs at least 3 interleaved rounds, got 2"):
        speedup([[1.0], [1.0]], [[1.0], [1.0]])
