"""HR@10 of the 2D layout with momentum-scaled row-wise AdaGrad vs the unsharded baseline (same
data, same steps, same optimizer), on the synthetic tiny data set with 4 gloo processes."""

from __future__ import annotations

import pytest

from hybridrec.distributed.spawn import run_ranks
from hybridrec.embedding.quality import QualitySetup, load_data, train_baseline, train_sharded

WORLD = 4
# stated tolerance: |HR@10(2D, momentum-scaled) - HR@10(unsharded)| <= 0.03, about two standard
# errors of HR@10 ~0.7 over ~1.1k test users; the gradient-synced 2D layout is the same computation
# as the baseline, so it must agree to float rounding.
HR_TOLERANCE, EXACT_TOLERANCE = 0.03, 2e-3


def worker(rank: int, world: int, setup: QualitySetup) -> list[dict]:
    data = load_data(setup)
    return [train_sharded(rank, world, 2, "grad", 1.0, setup, data),
            train_sharded(rank, world, 2, "weights", 2.0, setup, data)]


@pytest.mark.slow
def test_two_d_momentum_scaled_hr10_within_tolerance_of_unsharded(tmp_path):
    setup = QualitySetup(steps=150, cache_dir=str(tmp_path / "cache"))
    baseline = train_baseline(setup, load_data(setup))
    exact, scaled = run_ranks(worker, WORLD, setup, timeout_s=1800, start_method="spawn")[0]  # rank 0's
    assert baseline["HR@10"] > 0.3  # the model learns something (uniform guessing gives ~0.1)
    assert abs(exact["HR@10"] - baseline["HR@10"]) <= EXACT_TOLERANCE, (exact, baseline)
    assert abs(scaled["HR@10"] - baseline["HR@10"]) <= HR_TOLERANCE, (scaled, baseline)
