"""Telemetry as wired in the job (hybridrec.main via jobs.train_job, 2 gloo ranks, tp=2): megatron's
tensor-parallel collectives are timed as tp_comm, the optimizer step as optimizer, phases add up to
every step's wall time, the utilization sampler's samples reach /samples, and the rack map is in
the metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_telemetry_trainer import run_two_rank_job

from hybridrec.telemetry import timers as timers_mod
from hybridrec.telemetry.recorder import read_run
from hybridrec.telemetry.timers import PHASES


@pytest.mark.slow
def test_tensor_parallel_job_records_tp_comm_optimizer_and_samples(tmp_path: Path) -> None:
    run_dir = tmp_path / "tp2"
    run_two_rank_job(run_dir, ["parallel=tp2", "train.steps=4", "train.global_batch_size=16",
                               "parallel.micro_batch_size=8", "telemetry.nvml_interval_s=0.05",
                               "telemetry.flush_every_steps=2"])
    ranks = read_run(run_dir)
    assert sorted(ranks) == [0, 1]
    for data in ranks.values():
        steps = data["steps"]
        assert list(steps["step"]) == [1, 2, 3, 4]
        np.testing.assert_allclose(sum(steps[f"t_{p}_s"] for p in PHASES), steps["wall_s"], rtol=1e-9)
        assert (steps["t_tp_comm_s"] > 0).all()  # instrument_tensor_parallel is on (telemetry.tp_timing)
        assert (steps["t_optimizer_s"] > 0).all()  # with timers.phase("optimizer"): optimizer.step()
        samples = data["samples"]
        assert len(samples["t_s"]) >= 1 and ("cpu_util_pct" in samples or any("gpu" in k for k in samples))
        topology = data["metadata"]["topology"]
        assert len(topology["rack_of_rank"]) == 2 and data["metadata"]["state"] == "closed"
    assert timers_mod.active() is None  # this process never installed any


def test_telemetry_off_job_still_trains(tmp_path: Path) -> None:
    """telemetry.enabled=false: no timers, no files; the job (tp=2) is unchanged otherwise."""
    run_dir = tmp_path / "off"
    run_two_rank_job(run_dir, ["parallel=tp2", "train.steps=2", "train.global_batch_size=16",
                               "parallel.micro_batch_size=8", "telemetry=off"])
    assert not (run_dir / "telemetry").exists()
