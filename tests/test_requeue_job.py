"""The Hydra train job under `jobs.requeue.run_requeueable` (one process, no Slurm): a preemption
signal stops it after a step with a checkpoint and no summary.json (what jobs.sweep reads as "not done
yet"), and the restarted job (SLURM_RESTART_COUNT > 0) resumes from that checkpoint and finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hybridrec.telemetry.recorder import read_run
from hybridrec.train import checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["model=sasrec_tiny", "train=quick", "train.steps=4", "eval.protocols=[uni100]", "eval.baseline=false"]

# the job with the preemption flag already raised and the Slurm requeue call replaced by a print
PREEMPTED = textwrap.dedent("""
    import runpy, signal, sys
    from jobs import requeue
    install = requeue.PreemptionGuard.install
    def flagged(*args, **kwargs):
        guard = install(*args, **kwargs)
        guard.signum = signal.SIGUSR2
        return guard
    requeue.PreemptionGuard.install = flagged
    requeue.requeue_this_job = lambda: print("REQUEUED", flush=True) or "1"
    sys.argv = ["jobs.train_job", *sys.argv[1:]]
    runpy.run_module("jobs.train_job", run_name="__main__", alter_sys=True)
""")


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_preempted_job_writes_no_summary_and_the_restarted_job_resumes(tmp_path: Path) -> None:
    overrides = [*ARGS, f"hydra.run.dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}"]
    env = {"SLURM_RESTART_COUNT": "0"}
    first = _run([sys.executable, "-c", PREEMPTED, *overrides], env)
    assert "REQUEUED" in first.stdout
    assert not (tmp_path / "summary.json").exists()
    ckpt = checkpoint.latest(tmp_path / "checkpoints")
    assert ckpt is not None and checkpoint.read_manifest(ckpt)["step"] == 1
    assert read_run(tmp_path)[0]["metadata"]["status"] == "preempted"

    second = _run([sys.executable, "-m", "jobs.train_job", *overrides], {"SLURM_RESTART_COUNT": "1"})
    assert "resumed from" in second.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4
    assert [step for step, _ in summary["loss_curve"]] == [2, 3, 4]  # step 1 is not redone
