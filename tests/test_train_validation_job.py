"""The job with validation (issue 17): on a tiny run the test metrics in summary.json come from the
best-validation step. Run A validates every 5 steps and stops early; run B trains exactly to A's best
step without validation: B's test metrics equal A's (and A's last weights give other numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hybridrec.distributed.spawn import run_bounded, torchrun_command

ARGS = ["model=sasrec_tiny", "train=quick", "train.lr=0.01", "telemetry=off", "train.save_final=false",
        "eval.batch_size=512"]


def run_job(out: Path, extra: list[str], nproc: int = 1) -> dict:
    job = ["jobs.train_job", *ARGS, *extra, f"hydra.run.dir={out}", f"data.cache_dir={out.parent / 'cache'}"]
    cmd = torchrun_command(nproc, job[0], job[1:]) if nproc > 1 else [sys.executable, "-m", *job]
    proc = run_bounded(cmd, 600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_test_metrics_come_from_the_best_validation_step(tmp_path: Path) -> None:
    a = run_job(tmp_path / "a", ["train.steps=60", "train.eval_every=5", "train.patience=2"])
    val = a["validation"]
    best, stopped = val["best_step"], val["stopped_step"]
    assert val["early_stopped"] and a["steps"] == stopped < 60 and a["stopped"].startswith("early stopping")
    assert best == stopped - 10  # two validations without improvement
    assert [p["step"] for p in val["curve"]] == list(range(5, stopped + 1, 5))
    assert val["best_value"] == max(p["value"] for p in val["curve"])
    assert val["best_metrics"]["full"]["NDCG@10"] == val["best_value"]
    assert set(val["curve"][0]["metrics"]) == {"full", "full_excl"}  # both conventions
    assert val["test_weights"] == "best"
    b = run_job(tmp_path / "b", [f"train.steps={best}"])
    assert "validation" not in b and b["steps"] == best
    assert a["metrics"] == b["metrics"]  # the same weights: identical ranks
    assert a["metrics_last_step"] != a["metrics"]
    assert set(a["metrics"]) == {"full", "full_excl", "uni100", "pop100"}


@pytest.mark.slow
def test_pipeline_parallel_validation_and_best_weights_match_one_process(tmp_path: Path) -> None:
    """pp=2: every rank keeps its own stage's best weights; the curve and the best-weights test metrics
    equal the one-process run's (the same global batches, weights and counts)."""
    extra = ["train.steps=20", "train.eval_every=5", "train.patience=2"]
    one = run_job(tmp_path / "one", extra)
    pp2 = run_job(tmp_path / "pp2", [*extra, "parallel=pp2"], nproc=2)
    assert pp2["layout"]["pp"] == 2
    for a, b in zip(one["validation"]["curve"], pp2["validation"]["curve"], strict=True):
        assert a["step"] == b["step"] and a["value"] == pytest.approx(b["value"], rel=1e-6)
    assert one["validation"]["best_step"] == pp2["validation"]["best_step"] < 20
    for protocol, row in one["metrics"].items():
        assert row == pytest.approx(pp2["metrics"][protocol], rel=1e-6)
