"""The job's side of adaptive pipeline balancing (`parallel.balance=adaptive`).

- `plan_start(...)`: at start-up, before megatron's groups exist, rank 0 profiles a tp = pp = 1 copy
  of the model (`profile.plan_adaptive`) and every rank gets the per-stage layer counts (and, with
  `parallel.dynamic_micro_batch`, the micro-batch size/count); the result is the model config and
  layout to build, plus the `balance` record for summary.json and telemetry. With pp = 1 it is a no-op
  with a reason; when resuming from a checkpoint the checkpoint's split wins (its weights have it).
- `DriftWatch`: per training step, every pipeline stage's measured compute seconds (gathered over the
  pipeline group, then max over tp/dp replicas so every rank takes the same decision) feed
  `balance.RebalanceMonitor`; when it fires, `replan()` gives the next partition. Applying it
  (checkpoint, rebuild, load by global name) is `hybridrec.main`'s job.

Test knob: `HYBRIDREC_SLOW_STAGE="stage=1,factor=3"` multiplies the compute time measured on that
pipeline stage, as a slower device would (used to prove re-balancing deterministically on CPU);
`stage=max` is the stage the start-up plan gave the most layers (the last of a tie), so the re-plan
always moves layers whatever the profile chose.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hybridrec.train import balance

SLOW_STAGE_ENV = "HYBRIDREC_SLOW_STAGE"


@dataclasses.dataclass
class StartPlan:
    model_cfg: Any  # ModelConfig with num_layers_in_first/last_pipeline_stage set by the plan
    layout: Any  # ParallelLayout (micro-batch size/count from the plan when dynamic)
    plan: Any  # profile.AdaptivePlan, or None when nothing was planned
    record: dict[str, Any]  # summary.json["balance"]
    message: str  # for rank 0's log


def _partition_record(partition: balance.Partition | None) -> dict[str, Any] | None:
    if partition is None:
        return None
    return {"layers_per_stage": list(partition.layers_per_stage),
            "predicted_stage_ms": [round(t * 1e3, 4) for t in partition.stage_times],
            "predicted_max_over_mean": partition.max_over_mean}


def _micro_record(micro: balance.MicroBatchPlan | None) -> dict[str, Any] | None:
    if micro is None:
        return None
    return {"micro_batch_size": micro.micro_batch_size, "num_micro_batches": micro.num_micro_batches,
            "predicted_step_ms": micro.step_time_s * 1e3, "bubble": micro.bubble, "reason": micro.reason}


def plan_start(cfg: Any, layout: Any, vocab_size: int, resume_model: dict[str, Any] | None = None) -> StartPlan:
    """Collective on every rank (after init_process_group, before `model.parallel.initialize`).

    `resume_model`: the `model` dict of the checkpoint the job resumes from (its layer split is kept).
    """
    from hybridrec.train.profile import clock_name, plan_adaptive

    par = cfg.parallel
    if par.balance != "adaptive":
        return StartPlan(cfg.model, layout, None, {"mode": par.balance}, "")
    if layout.pp == 1:
        reason = "pp=1: one pipeline stage, nothing to balance (adaptive is a no-op)"
        return StartPlan(cfg.model, layout, None, {"mode": "adaptive", "applied": False, "reason": reason},
                         f"balance: {reason}")
    plan = plan_adaptive(cfg.model, par, layout, vocab_size, cfg.data.max_seq_len, seed=cfg.train.seed)
    model_cfg, partition = plan.model_config(cfg.model), plan.partition
    message = f"balance: {plan.describe()}"
    source = "profile"
    if resume_model is not None:
        split = _split_of(resume_model, layout.pp, cfg.model.num_layers)
        if split is not None and list(split) != list(partition.layers_per_stage):
            partition = balance.Partition(tuple(split), tuple(plan.costs.stage_times(list(split))),
                                          f"kept the resumed checkpoint's split {split} (profile chose "
                                          f"{list(plan.partition.layers_per_stage)})")
            model_cfg = dataclasses.replace(cfg.model, **partition.megatron_kwargs())
            plan = dataclasses.replace(plan, partition=partition)
            source = "checkpoint"
            message += f"; {partition.reason}"
    if par.dynamic_micro_batch and plan.micro is not None:
        micro = plan.micro
        layout = dataclasses.replace(layout, micro_batch_size=micro.micro_batch_size,
                                     num_micro_batches=micro.num_micro_batches)
        if layout.global_batch_size != cfg.train.global_batch_size:
            raise AssertionError(f"micro plan {micro} changes the global batch {cfg.train.global_batch_size}")
    record = {"mode": "adaptive", "applied": True, "source": source, "clock": clock_name(),
              **_partition_record(partition), "reason": partition.reason,
              "uniform": _partition_record(plan.uniform),
              "micro": _micro_record(plan.micro if par.dynamic_micro_batch else None),
              "rebalance_threshold": par.rebalance_threshold, "rebalances": []}
    return StartPlan(model_cfg, layout, plan, record, message)


def _split_of(model: dict[str, Any], pp: int, num_layers: int) -> list[int] | None:
    """Layers per stage of a saved model config (megatron's first/last fields; middle stages even)."""
    first, last = model.get("num_layers_in_first_pipeline_stage"), model.get("num_layers_in_last_pipeline_stage")
    if first is None and last is None:
        return None
    if pp == 2:
        first = first if first is not None else num_layers - last
        return [first, num_layers - first]
    first = first if first is not None else 0
    last = last if last is not None else 0
    middle = (num_layers - first - last) // (pp - 2)
    return [first, *([middle] * (pp - 2)), last]


def _slow_stage(layers_per_stage: tuple[int, ...]) -> tuple[int, float] | None:
    text = os.environ.get(SLOW_STAGE_ENV, "")
    if not text:
        return None
    fields = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    stage = fields.get("stage", "0")
    if stage == "max":
        most = max(layers_per_stage)
        stage = max(i for i, n in enumerate(layers_per_stage) if n == most)
    return int(stage), float(fields.get("factor", 1.0))


def stage_compute_seconds(timers: Any, device_name: str | None = None) -> float:
    """This step's forward + backward compute of this stage from the job's `PhaseTimers` (and reset
    their inclusive totals): process CPU time on CPU (a
    shared machine's waits for a core do not count), wall time on GPU. `device_name` (optional, for
    older callers): 'cpu' or not; default: ask `backend.current()`."""
    from hybridrec.distributed import backend

    snap = timers.snapshot()
    on_cpu = backend.current().is_cpu if device_name is None else device_name == backend.HOST.type
    return snap["compute_cpu_s"] if on_cpu else snap["compute_s"]


def watch_clock_name(device_name: str | None = None) -> str:
    """The DriftWatch's clock, as `stage_compute_seconds` reads it (the `balance.watch_clock` record)."""
    from hybridrec.distributed import backend

    on_cpu = backend.current().is_cpu if device_name is None else device_name == backend.HOST.type
    return "process CPU time" if on_cpu else "wall time"


class DriftWatch:
    """Measured stage times -> RebalanceMonitor -> next partition (all ranks decide alike)."""

    def __init__(self, plan: Any, threshold: float, stage: int, pp: int, window: int = 5, cooldown: int = 10):
        self.monitor = balance.RebalanceMonitor(plan.partition, threshold=threshold, window=window,
                                                cooldown=cooldown)
        self.costs = plan.costs
        self.stage, self.pp = stage, pp
        self.slow = _slow_stage(plan.partition.layers_per_stage)
        self.last_times: list[float] = []

    @property
    def partition(self) -> balance.Partition:
        return self.monitor.planned

    def observe(self, local_compute_s: float) -> tuple[bool, str]:
        """Collective over the world: every stage's seconds this step; (fire, reason) of the monitor."""
        import torch
        import torch.distributed as dist

        from hybridrec.train.profile import stage_times_across_pipeline

        if self.slow is not None and self.slow[0] == self.stage:
            local_compute_s *= self.slow[1]
        times = stage_times_across_pipeline(local_compute_s)
        if dist.get_world_size() > self.pp:  # tp/dp replicas of a stage may differ: take the slowest
            tensor = torch.tensor(times, dtype=torch.float64)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            times = tensor.tolist()
        self.last_times = times
        self.monitor.observe(times)
        return self.monitor.check()

    def replan(self) -> balance.Partition:
        """The next partition from the costs rescaled by the measured times (resets the window)."""
        partition, self.costs = self.monitor.replan(self.costs)
        return partition

    def measured(self) -> list[float]:
        return self.monitor.measured()
