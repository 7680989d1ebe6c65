"""Sweeps with failing points on the private Slurm cluster (markers `faults`, `slurm`): the other points
complete, status names the failed ones and why, and `jobs.sweep rerun` queues only the failed points
again (here with the cause fixed by an override), leaving the done points and their results alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import submit as submit_mod
from jobs import sweep as sweep_mod

pytestmark = [pytest.mark.faults, pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def probe_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "train:\n  steps: 2\n  global_batch_size: 128\nparallel:\n  tp: 1\n  micro_batch_size: 16\n"
        "probe:\n  step_seconds: 0.0\n  crash_rank: -1\n  crash_step: 0\n  timeout_s: 60\n  payload_floats: 8\n")
    return conf


def test_failed_points_are_reported_and_only_they_are_rerun(slurm_env, probe_conf, tmp_path):
    sweep_dir = tmp_path / "partial"
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=1", "probe.payload_floats=8,16",
                    "probe.crash_rank=-1,0"],
        task="jobs.probe:probe", config_dir=probe_conf, env=slurm_env)
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=180)
    assert [row["state"] for row in rows] == ["done", "failed", "done", "failed"], rows
    for row in rows[1::2]:
        assert "rank 0" in row["reason"] and "crashes on purpose at step 0" in row["reason"], row
    done_before = {i: (Path(manifest["points"][i]["dir"]) / "summary.json").read_bytes() for i in (0, 2)}
    cli = subprocess.run([sys.executable, "-m", "jobs.sweep", "status", str(sweep_dir)], env=slurm_env, cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 1 and cli.stdout.count("failed") == 2, cli.stdout

    queued = sweep_mod.rerun(sweep_dir, slurm_env, ["probe.crash_rank=-1"])
    assert queued == [1, 3]
    after = json.loads((sweep_dir / "sweep.json").read_text())
    for i in (1, 3):
        assert after["points"][i]["history"] == [manifest["points"][i]["job_id"]]
        assert after["points"][i]["job_id"] != manifest["points"][i]["job_id"]
    for i in (0, 2):
        assert after["points"][i]["job_id"] == manifest["points"][i]["job_id"] and "history" not in after["points"][i]
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=180)
    assert [row["state"] for row in rows] == ["done"] * 4, rows
    # the done points were not run again; every point has exactly one result
    for i in (0, 2):
        assert (Path(manifest["points"][i]["dir"]) / "summary.json").read_bytes() == done_before[i]
    collected = sweep_mod.collect(sweep_dir, slurm_env)
    assert [row["index"] for row in collected] == [0, 1, 2, 3]
    assert [row["allreduce_bytes"] for row in collected] == [32, 32, 64, 64]
    assert sweep_mod.rerun(sweep_dir, slurm_env) == []  # nothing failed: nothing queued
