"""The training loop of a job: batches -> `Trainer.train_step` -> communication after the step
(local-SGD averaging) -> step metrics -> hooks (`hybridrec.train.hooks`), until `train.steps` or a
hook asks to stop. Returns what summary.json records about training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hybridrec.train.hooks import StepHook
from hybridrec.train.loop import Batch


def next_batch(job: Any) -> Batch:
    inputs, labels, mask = next(job.batches)
    arrays = (torch.from_numpy(np.ascontiguousarray(a)) for a in (inputs, labels, mask))
    return Batch(*arrays).to(job.device)


def train(job: Any, hooks: list[StepHook]) -> dict[str, Any]:
    """Run the remaining steps of `job` (all ranks); the result feeds summary.json."""
    steps = job.cfg.train.steps
    losses: list[list[float]] = []
    comm_shares: list[float] = []
    samples, seconds, stopped = 0, 0.0, "steps"
    while job.trainer.step < steps:
        batch = next_batch(job)
        job.telemetry.begin_step()
        result = job.trainer.train_step(batch)
        job.comm.after_step(result.step, job.trainer.chunks)
        metrics: dict[str, Any] = {"loss": result.loss, "grad_norm": result.grad_norm or 0.0}
        metrics.update(job.telemetry.end_step(result.samples, int(batch.mask.sum()), job.comm.step_byte_counts(),
                                              job.comm.step_comm_seconds()))
        samples, seconds = samples + result.samples, seconds + result.seconds
        losses.append([result.step, result.loss])
        if "comm_share_all" in metrics:
            comm_shares.append(metrics["comm_share_all"])
        reasons = [hook.after_step(job, result, metrics) for hook in hooks]
        reason = next((r for r in reasons if r), None)
        if reason:
            stopped = reason
            break
    return {"loss_curve": losses, "samples_per_s": samples / seconds if seconds else 0.0, "train_s": seconds,
            "comm_share": float(np.mean(comm_shares)) if comm_shares else None, "stopped": stopped}
