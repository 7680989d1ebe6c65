"""Preemption as the training loop sees it: a flag set by a signal, checked collectively once per step.

Slurm (or an admin: `scancel --signal=USR2 <job>`, or `--signal=USR2@<s>` before the time limit)
sends SIGUSR2. Instead of checkpointing inside the signal handler (mid-step, possibly mid-collective),
the handler only sets a flag. The training loop calls `guard.should_stop()` once per step on every
rank (it all-reduces the flag so all ranks stop after the same step); when it is true, every rank
saves its part of a fresh checkpoint and raises `Preempted(step)`. Requeueing the Slurm job is the
job layer's business (`jobs.requeue.run_requeueable`); this module knows nothing of Slurm.
"""

from __future__ import annotations

import signal
import time
from typing import Any

PREEMPTION_SIGNALS = (signal.SIGUSR2,)


class Preempted(Exception):
    """Raised by the training loop after it saved a checkpoint because of a preemption signal;
    `next_step` is the first step the requeued job must run."""

    def __init__(self, next_step: int):
        super().__init__(f"preempted; checkpoint saved, resume at step {next_step}")
        self.next_step = next_step


class PreemptionGuard:
    """Holds the flag set by the preemption signal handler."""

    _current: PreemptionGuard | None = None

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at: float | None = None

    @classmethod
    def install(cls, signals: tuple[int, ...] = PREEMPTION_SIGNALS) -> PreemptionGuard:
        """Install the flag-setting handler (replacing submitit's synchronous one) in this process."""
        guard = cls()
        for signum in signals:
            signal.signal(signum, guard._handle)
        cls._current = guard
        return guard

    @classmethod
    def current(cls) -> PreemptionGuard:
        """The installed guard, or an inert one (never requested) outside a requeueable job."""
        return cls._current or cls()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self.received_at = signum, time.time()

    @property
    def requested(self) -> bool:
        """This process received the signal (no communication)."""
        return self.signum is not None

    def should_stop(self, group: Any = None) -> bool:
        """True on every rank once any rank received the signal. A collective when torch.distributed
        is initialised: all ranks of `group` must call it at the same step."""
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # pragma: no cover - torch is a dependency
            return self.requested
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())
