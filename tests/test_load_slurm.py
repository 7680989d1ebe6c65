"""A small load test on the private Slurm cluster (markers `faults`, `slurm`, `slow`): one sweep of 16
short probe jobs (each a gloo rendezvous + all_reduce on one node) queued at once; every point is
accounted for: one result each, from its own job, with its own payload, nothing left in the queue."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from jobs import submit as submit_mod
from jobs import sweep as sweep_mod

pytestmark = [pytest.mark.faults, pytest.mark.slurm, pytest.mark.slow]
POINTS = 16


def test_sweep_of_many_short_jobs_accounts_for_every_result(slurm_env, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "train:\n  steps: 1\n  global_batch_size: 128\nparallel:\n  tp: 1\n  micro_batch_size: 16\n"
        "probe:\n  step_seconds: 0.0\n  crash_rank: -1\n  crash_step: 0\n  timeout_s: 120\n  payload_floats: 1\n")
    sweep_dir = tmp_path / "load"
    start = time.monotonic()
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=1", f"probe.payload_floats=range(1,{POINTS + 1})"],
        task="jobs.probe:probe", config_dir=conf, env=slurm_env)
    queued_s = time.monotonic() - start
    assert len(manifest["points"]) == POINTS
    assert len({p["job_id"] for p in manifest["points"]}) == POINTS
    deadline = time.monotonic() + 900
    while True:
        rows = sweep_mod.status(sweep_dir, slurm_env)
        if all(row["state"] in ("done", "failed") for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    total_s = time.monotonic() - start
    assert [row["state"] for row in rows] == ["done"] * POINTS, [r for r in rows if r["state"] != "done"]
    collected = sweep_mod.collect(sweep_dir, slurm_env)
    assert [row["index"] for row in collected] == list(range(POINTS))
    # each result is its own point's: payload size and the Slurm job that wrote it
    assert [row["allreduce_bytes"] for row in collected] == [4 * n for n in range(1, POINTS + 1)]
    job_of = {p["job_id"].split("_")[0] for p in manifest["points"]}
    assert len(job_of) == 1  # one array
    # every summary was written by a different Slurm job (its SLURM_JOB_ID, one per array task)
    assert len({str(row["job_id"]) for row in collected}) == POINTS
    for point in manifest["points"]:
        files = sorted(p.name for p in Path(point["dir"]).iterdir())
        assert files == ["config.yaml", "steps.attempt0.txt", "summary.json"], files
        assert json.loads((Path(point["dir"]) / "summary.json").read_text())["status"] == "done"
    # the queue drains (jobs linger a moment in COMPLETING after their result is written)
    ids = {p["job_id"] for p in manifest["points"]}
    drain = time.monotonic() + 120
    while True:
        left = set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env=slurm_env, capture_output=True,
                                  text=True, check=True).stdout.split()) & ids
        if not left or time.monotonic() > drain:
            break
        time.sleep(1.0)
    assert not left, left
    print(f"load: {POINTS} jobs queued in {queued_s:.1f} s, all done in {total_s:.1f} s "
          f"({POINTS / total_s * 60:.1f} jobs/min)")
