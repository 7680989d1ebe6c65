"""What happens around a training step, one hook per concern. The loop (`run_loop.train`) calls
`hook.after_step(job, result, metrics)` on every rank after each step, in list order; a hook may
return a reason to stop training early (e.g. validation patience), or raise to end the run
(`Preempted`). Hooks that communicate are collective and run on every rank at every step.

- `BalanceWatchHook`: adaptive pipeline balance: measured stage compute -> drift monitor -> live
  re-partition (`train.repartition`).
- `TelemetryHook`: the step's metrics row into the rank's HDF5 file.
- `ProgressHook`: rank 0's progress line every `train.log_every` steps.
- `CheckpointHook`: a checkpoint every `train.checkpoint_every` steps.
- `PreemptionHook`: the collective preemption check; on a signal every rank saves and raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hybridrec.train.loop import StepResult


class StepHook(Protocol):
    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> str | None: ...


class BalanceWatchHook:
    """Collective: this step's compute seconds of every stage -> DriftWatch -> maybe re-partition."""

    def __init__(self, job: Any, say: Callable[[str], None]):
        from hybridrec.train.adaptive import DriftWatch

        plan, lay = job.start_plan.plan, job.layout
        self.watch = DriftWatch(plan, job.cfg.parallel.rebalance_threshold, job.coords["pp"], lay.pp)
        self.say = say
        job.balance["watch_clock"] = "process CPU time" if job.device.type == "cpu" else "wall time"

    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> None:
        from hybridrec.train.adaptive import stage_compute_seconds

        local = stage_compute_seconds(job.telemetry.step_timers, job.device.type)
        fire, why = self.watch.observe(local)
        metrics["stage_compute_s"] = local
        metrics["stage_layers"] = float(self.watch.partition.layers_per_stage[job.coords["pp"]])
        if fire and result.step < job.cfg.train.steps:
            self._rebalance(job, result.step, why)

    def _rebalance(self, job: Any, step: int, why: str) -> None:
        from hybridrec.train.repartition import repartition

        old = list(self.watch.partition.layers_per_stage)
        measured = [round(t * 1e3, 3) for t in self.watch.measured()]
        new = self.watch.replan()
        event = {"step": step, "old": old, "new": list(new.layers_per_stage), "reason": why,
                 "measured_stage_ms": measured, "predicted_max_over_mean": new.max_over_mean}
        if event["new"] == old:
            event.update(applied=False, optimizer_state="kept")
            self.say(f"balance: step {step}: {why}; re-planned, split {old} kept")
        else:
            event.update(repartition(job, step, new))
            self.say(f"balance: step {step}: {why}; re-partitioned {old} -> {event['new']} "
                     f"(weights via {event['checkpoint']}; Adam state {event['optimizer_state']})")
        job.balance["rebalances"].append(event)


class TelemetryHook:
    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> None:
        job.telemetry.record_step(result.step, metrics)


class ProgressHook:
    """Rank 0's progress line: step, loss, grad norm, samples/s over the run so far, step seconds."""

    def __init__(self, every: int, steps: int, say: Callable[[str], None]):
        self.every, self.steps, self.say = max(every, 1), steps, say
        self.samples, self.seconds = 0, 0.0

    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> None:
        from hybridrec.train.loop import format_progress

        self.samples, self.seconds = self.samples + result.samples, self.seconds + result.seconds
        if result.step % self.every == 0 or result.step == self.steps:
            self.say(format_progress(result, self.seconds, self.samples))


class CheckpointHook:
    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps

    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> None:
        if self.every and result.step % self.every == 0 and result.step < self.steps:
            job.save()


class PreemptionHook:
    """Slurm preemption (docs/ARCHITECTURE.md): a collective check every step; on a signal every rank
    saves the checkpoint of this step and raises `Preempted` for the job layer's requeue wrapper."""

    def after_step(self, job: Any, result: StepResult, metrics: dict[str, Any]) -> None:
        from hybridrec.train.preemption import Preempted, PreemptionGuard

        if PreemptionGuard.current().should_stop():
            job.save()
            raise Preempted(result.step)


def default_hooks(job: Any, say: Callable[[str], None]) -> list[StepHook]:
    """The job's hooks in the order they must run (re-partition before the row is written; the
    checkpoint and the preemption check see the step's final model)."""
    train = job.cfg.train
    hooks: list[StepHook] = []
    if job.start_plan is not None and job.start_plan.plan is not None:
        hooks.append(BalanceWatchHook(job, say))
    hooks += [TelemetryHook(), ProgressHook(train.log_every, train.steps, say),
              CheckpointHook(train.checkpoint_every, train.steps), PreemptionHook()]
    return hooks
