"""Fault injection on the private Slurm cluster (markers `faults`, `slurm`): a rank SIGKILLed on its node
fails the job quickly (no hang until the collective timeout) and the sweep status says which rank on
which node; a rank that hangs makes the others hit the collective timeout and the job fails; (slow) the
real trainer with a raising rank fails with the injected error as the reason."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from jobs import submit as submit_mod
from jobs import sweep as sweep_mod

pytestmark = [pytest.mark.faults, pytest.mark.slurm, pytest.mark.slow]
WORKER = "hybridrec.faults:worker_task"


@pytest.fixture
def worker_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "train:\n  steps: 40\n  global_batch_size: 128\nparallel:\n  tp: 1\n  micro_batch_size: 16\n"
        "probe:\n  step_seconds: 0.1\n  timeout_s: 600\n")
    return conf


def submit_faulty(tmp_path: Path, name: str, env: dict, conf: Path, fault: str, extra: list[str],
                  task: str = WORKER) -> tuple[list[dict], float]:
    start = time.monotonic()
    submit_mod.submit(tmp_path / name, ["hydra/launcher=slurm", "hydra.launcher.nodes=2",
                                        "hydra.launcher.tasks_per_node=1", *extra],
                      task=task, config_dir=conf, env={**env, "HYBRIDREC_FAULT": fault})
    rows = sweep_mod.wait(tmp_path / name, env, timeout_s=300)
    return rows, time.monotonic() - start


def seconds_since_fault(sweep_dir: Path, rank: int = 1) -> float:
    """Now minus the time the injected fault printed in that rank's submitit log."""
    folder = Path(json.loads((sweep_dir / "sweep.json").read_text())["submitit_folder"])
    text = "".join(p.read_text(errors="replace") for p in folder.glob(f"*_{rank}_log.err"))
    match = re.search(r"\[fault\] injecting .* t=(\d+\.\d+)", text)
    assert match, text[-2000:]
    return time.time() - float(match.group(1))


def queue_empty_of(rows: list[dict], env: dict) -> bool:
    import subprocess

    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return not any(row["job_id"] in out for row in rows)


def test_sigkilled_rank_fails_the_job_fast_and_is_named(slurm_env, worker_conf, tmp_path):
    rows, elapsed = submit_faulty(tmp_path, "kill", slurm_env, worker_conf, "kind=kill,rank=1,step=3", [])
    assert rows[0]["state"] == "failed", rows
    reason = rows[0]["reason"]
    # the rank that was killed and its node are named (not only the survivor's broken connection)
    assert "rank 1" in reason and "n2" in reason, reason
    after = seconds_since_fault(tmp_path / "kill")
    assert after < 60, after  # far below the 600 s collective timeout
    assert queue_empty_of(rows, slurm_env)
    print(f"slurm kill: status reported failed {after:.1f} s after the kill ({elapsed:.1f} s after submission); "
          f"reason: {reason}")


def test_hanging_rank_times_out_and_the_job_fails(slurm_env, worker_conf, tmp_path):
    rows, elapsed = submit_faulty(tmp_path, "hang", slurm_env, worker_conf, "kind=hang,rank=1,step=3",
                                  ["probe.timeout_s=10"])
    assert rows[0]["state"] == "failed", rows
    reason = rows[0]["reason"]
    # the hung rank, ended by Slurm once rank 0 failed, is named first; rank 0's timeout error follows
    assert reason.startswith("rank 1 on n2: ended without a result"), reason
    manifest = json.loads((tmp_path / "hang" / "sweep.json").read_text())
    errors = sweep_mod._task_errors(Path(manifest["submitit_folder"]), rows[0]["job_id"])
    assert any("collective failed at step 4 (another rank died or hung)" in e and "Timed out" in e
               for e in errors), errors
    after = seconds_since_fault(tmp_path / "hang")
    assert 10 <= after < 70, after
    assert queue_empty_of(rows, slurm_env)
    print(f"slurm hang: status reported failed {after:.1f} s after the hang began (timeout 10 s; "
          f"{elapsed:.1f} s after submission); reason: {reason}")


@pytest.mark.slow
def test_real_trainer_rank_raising_fails_the_job_with_the_injected_error(slurm_env, tmp_path):
    from jobs.submit import CONF_DIR

    start = time.monotonic()
    sweep_dir = tmp_path / "trainer"
    submit_mod.submit(sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1",
                                  "parallel=dp2", "parallel.micro_batch_size=16", "model=sasrec_tiny", "train=quick",
                                  "train.steps=6",
                                  "eval.protocols=[uni100]", "eval.baseline=false", "telemetry.enabled=false",
                                  f"data.cache_dir={tmp_path / 'cache'}", "parallel.timeout_s=120"],
                      task="hybridrec.faults:train", config_dir=CONF_DIR,
                      env={**slurm_env, "HYBRIDREC_FAULT": "kind=oom,rank=1,step=2"})
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=600)
    assert rows[0]["state"] == "failed", rows
    assert "injected out-of-memory error: rank 1 on host n2" in rows[0]["reason"], rows
    assert queue_empty_of(rows, slurm_env)
    print(f"slurm trainer oom: failed in {time.monotonic() - start:.1f} s; reason: {rows[0]['reason']}")
