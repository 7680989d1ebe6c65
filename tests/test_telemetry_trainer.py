"""The real trainer (hybridrec.main via jobs.train_job, 2 gloo ranks, megatron 1F1B pipeline pp=2) with this
project's telemetry: megatron's own timer calls land in the right phases, the phases add up to every
step's wall time, and analysis.collect builds a table row from the run dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.collect import collect
from hybridrec.distributed.spawn import run_torchrun
from hybridrec.telemetry.recorder import read_run
from hybridrec.telemetry.timers import PHASES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


JOB = ["model=sasrec_tiny", "train=quick", "eval.protocols=[uni100]",
       "eval.baseline=false"]


def run_two_rank_job(run_dir: Path, overrides: list[str], timeout_s: float = 900) -> dict:
    """jobs.train_job on 2 local gloo ranks; returns its summary.json (status done)."""
    proc = run_torchrun(2, "jobs.train_job", [*JOB, *overrides, f"hydra.run.dir={run_dir}"], timeout_s=timeout_s,
                        cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done", summary.get("error")
    return summary


def test_trainer_pipeline_run_records_phases_that_sum_to_wall_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "pp2"
    summary = run_two_rank_job(run_dir, ["parallel=pp2", "train.steps=5", "train.global_batch_size=32",
                                         "parallel.micro_batch_size=8"])
    ranks = read_run(run_dir)
    assert sorted(ranks) == [0, 1]
    for data in ranks.values():
        steps = data["steps"]
        assert list(steps["step"]) == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(sum(steps[f"t_{p}_s"] for p in PHASES), steps["wall_s"], rtol=1e-9)
        assert (steps["t_forward_s"] > 0).all() and (steps["t_backward_s"] > 0).all()
        # megatron's p2p timers ('forward-recv', 'backward-send', ...) reached the pipeline phases
        assert (steps["t_pp_p2p_s"] + steps["t_pp_bubble_s"] > 0).all()
        assert data["metadata"]["layout"]["pp"] == 2 and data["metadata"]["config"]["parallel"]["pp"] == 2
        assert set(data["eval"]) >= {"uni100"}
    table = collect(tmp_path, make_plots=False)
    row = next(r for r in table["runs"] if r.path == run_dir)
    assert row.status == "done" and row.layout == {"tp": 1, "pp": 2, "dp": 1}
    assert row.metric("uni100", "HR@10") == summary["metrics"]["uni100"]["HR@10"]
