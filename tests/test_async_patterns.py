"""benchmarks/async_dp.py straggler schedules: deterministic, one delayed rank per step for the
transient patterns, the requested mean delay (pure, no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from async_dp import BURST_EVERY, BURST_LEN, CAP, PATTERNS, delay_schedule


@pytest.mark.parametrize("pattern", PATTERNS)
def test_schedule_is_deterministic_and_at_most_one_rank_per_step(pattern):
    a = delay_schedule(pattern, 400, 4, 0.05, seed=3)
    assert a == delay_schedule(pattern, 400, 4, 0.05, seed=3)
    assert all(sum(d > 0 for d in step) <= 1 for step in a)
    assert all(max(step) <= CAP * 0.05 for step in a)


def test_means_and_shapes():
    steps, mean = 20_000, 0.05
    for pattern, rel in (("persistent", 1e-12), ("burst", 1e-12), ("lognormal", 0.05), ("pareto", 0.1)):
        total = sum(max(step) for step in delay_schedule(pattern, steps, 4, mean))
        assert total / steps == pytest.approx(mean, rel=rel), pattern
    persistent = delay_schedule("persistent", 10, 4, mean)
    assert all(step == [0.0, mean, 0.0, 0.0] for step in persistent)
    burst = delay_schedule("burst", 2 * BURST_EVERY, 4, mean)
    delayed = [i for i, step in enumerate(burst) if max(step) > 0]
    assert delayed == [*range(BURST_LEN), *range(BURST_EVERY, BURST_EVERY + BURST_LEN)]
    for pattern in ("pareto", "lognormal"):  # every rank gets delayed sometimes
        ranks = {step.index(max(step)) for step in delay_schedule(pattern, 200, 4, mean)}
        assert ranks == {0, 1, 2, 3}


def test_unknown_pattern_refused():
    with pytest.raises(ValueError, match="straggler pattern"):
        delay_schedule("gaussian", 10, 4, 0.05)
