"""Preemption and requeue for Slurm jobs, cooperative with the training loop.

Slurm (or an admin: `scancel --signal=USR2 <job>`, or `--signal=USR2@<s>` before the time limit)
sends SIGUSR2. Instead of checkpointing inside the signal handler (mid-step, possibly mid-collective),
the handler only sets a flag. The training loop calls `guard.should_stop()` once per step, on every rank
(it all-reduces the flag so all ranks stop after the same step); when it is true, every rank saves its
part of a fresh checkpoint and raises `Preempted(step)`. `run_requeueable` catches it, rank 0 requeues
the job (through submitit's Checkpointable protocol when the job was submitted by submitit, else with
`scontrol requeue`), and every rank exits without writing a result. The requeued job resumes from that
checkpoint, so no step is redone and exactly one result is written.

The loop's side (flag, collective check, `Preempted`) is `hybridrec.train.preemption`; this module
is the Slurm side: install the guard, requeue, exit without a result.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hybridrec.train.preemption import Preempted, PreemptionGuard

__all__ = ["Preempted", "PreemptionGuard", "RequeueableTask", "requeue_this_job", "restart_count",
           "run_requeueable"]

log = logging.getLogger(__name__)


def restart_count() -> int:
    """How many times Slurm restarted this job (0 on the first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _under_submitit() -> bool:
    return "SUBMITIT_FOLDER" in os.environ and "SLURM_JOB_ID" in os.environ


def requeue_this_job() -> str:
    """Requeue the running Slurm job (call on rank 0 only, after the checkpoint is saved).

    Under submitit the pickled submission is first replaced by what the submitted callable's
    `checkpoint()` returns (submitit's Checkpointable protocol), so the requeued job runs that."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id:
        raise RuntimeError("requeue requested outside a Slurm job (no SLURM_JOB_ID)")
    if _under_submitit():
        from submitit import JobEnvironment
        from submitit.core.job_environment import _checkpoint
        from submitit.core.utils import DelayedSubmission

        env = JobEnvironment()
        pickle_path = env.paths.submitted_pickle
        delayed = DelayedSubmission.load(pickle_path)
        if hasattr(delayed.function, "checkpoint"):
            reason = _checkpoint(delayed, pickle_path, delayed._timeout_countdown)
            if reason:
                raise RuntimeError(f"not requeued: {reason}")
        env._requeue(delayed._timeout_countdown)
        return env.job_id
    slurm_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if slurm_id:
        job_id = f"{slurm_id}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
    return job_id


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_requeueable(fn: Callable[..., Any], *args: Any, rank: int | None = None, **kwargs: Any) -> Any:
    """Run `fn` with the preemption guard installed; on `Preempted`, rank 0 requeues the job and every
    rank exits with status 0 without returning (so no result file of the interrupted attempt exists)."""
    PreemptionGuard.install()
    try:
        return fn(*args, **kwargs)
    except Preempted as stop:
        me = rank if rank is not None else int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
        _barrier()  # every rank has saved its part of the checkpoint
        if me == 0:
            job = requeue_this_job()
            log.warning("job %s requeued; resumes at step %d", job, stop.next_step)
        _barrier()  # no rank exits before the requeue is issued (kill-on-bad-exit would cancel it)
        sys.exit(0)


class RequeueableTask:
    """A submitit Checkpointable: calls `target(cfg)` under `run_requeueable`; when requeued, the
    resubmitted call gets `cfg` with `train.resume = "auto"` (resume from the latest checkpoint)."""

    def __init__(self, target: str):
        self.target = target  # "module:function", imported in the job

    def __call__(self, cfg: dict) -> Any:
        import importlib

        module, _, name = self.target.partition(":")
        function = getattr(importlib.import_module(module), name)
        return run_requeueable(function, cfg)

    def checkpoint(self, cfg: dict) -> Any:
        from submitit.core.utils import DelayedSubmission

        resumed = dict(cfg)
        resumed["train"] = {**dict(cfg.get("train", {})), "resume": "auto"}
        return DelayedSubmission(RequeueableTask(self.target), resumed)
