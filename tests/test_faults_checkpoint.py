"""Crash-safe checkpoints with the real trainer (markers `faults`, `slow`): a job SIGKILLed at each point
of a checkpoint save (temporary file written, torn temporary file, rank file in place without manifest,
manifest in place without the `latest` pointer) leaves the previous complete checkpoint or the new one,
never a corrupt one, and resuming after the kills reproduces the uninterrupted loss curve bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hybridrec.train import checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.slow]
REPO = Path(__file__).resolve().parent.parent
ARGS = ["model=sasrec_tiny", "train=quick", "train.steps=6", "train.checkpoint_every=2", "train.log_every=1",
        "eval.protocols=[uni100]", "eval.baseline=false", "telemetry.enabled=false"]


def run_job(out: Path, cache: Path, fault: str = "", resume: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYBRIDREC_FAULT": fault}
    argv = [sys.executable, "-m", "hybridrec.faults", "run", "jobs.train_job", *ARGS, f"hydra.run.dir={out}",
            f"data.cache_dir={cache}", *(["train.resume=auto"] if resume else [])]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


def complete(ckpt: Path) -> int:
    """Step of a checkpoint that loads completely (manifest + every rank file)."""
    manifest, full = checkpoint.load_full_state(ckpt)
    assert full and len(manifest["files"]) == manifest["world_size"]
    return int(manifest["step"])


def no_corrupt_checkpoint(root: Path) -> None:
    """Every checkpoint directory with a manifest loads; the final names hold only complete files."""
    for ckpt in sorted(root.glob("step_*")):
        if (ckpt / checkpoint.MANIFEST).exists():
            complete(ckpt)
        for path in ckpt.glob("rank*.pt"):  # a final name is never a torn file
            import torch

            torch.load(path, map_location="cpu", weights_only=False)


def test_kills_during_checkpoint_save_keep_a_complete_checkpoint_and_resume_exactly(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    straight = run_job(tmp_path / "straight", cache)
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = json.loads((tmp_path / "straight" / "summary.json").read_text())["loss_curve"]
    assert [s for s, _ in reference] == [1, 2, 3, 4, 5, 6]

    out = tmp_path / "faulty"
    root = out / "checkpoints"
    # 1. torn temporary rank file at the step-4 save: step 2 stays the latest, no step-4 rank file
    proc = run_job(out, cache, "kind=kill,at=ckpt_torn,rank=0,step=4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "summary.json").exists()  # no partial result
    assert complete(checkpoint.latest(root)) == 2
    assert not (root / "step_00000004" / "rank00000.pt").exists()
    assert list((root / "step_00000004").glob(".rank00000.pt.*.tmp"))  # the torn write, never renamed
    no_corrupt_checkpoint(root)
    # 2. resumed, killed after the step-4 manifest but before the pointer: the old one is still latest,
    #    and the new one is complete too
    proc = run_job(out, cache, "kind=kill,at=ckpt_manifest,rank=0,step=4", resume=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    assert complete(checkpoint.latest(root)) == 2 and complete(root / "step_00000004") == 4
    no_corrupt_checkpoint(root)
    # 3. resumed, killed in the final save (step 6) with the rank file in place and no manifest
    proc = run_job(out, cache, "kind=kill,at=ckpt_file,rank=0,step=6", resume=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert complete(checkpoint.latest(root)) == 4
    assert checkpoint.latest(root).name == "step_00000004"
    no_corrupt_checkpoint(root)
    # 4. resumed without a fault: steps 5-6 match the uninterrupted run bit for bit
    proc = run_job(out, cache, resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done"
    assert summary["loss_curve"] == reference[4:], (summary["loss_curve"], reference)
    assert complete(checkpoint.latest(root)) == 6
    assert not list(root.rglob("*.tmp"))  # the torn save's temporary file went with the next complete save
