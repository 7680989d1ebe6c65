"""Live re-partitioning of the pipeline (adaptive balance): apply a new per-stage layer split in the
middle of a run without changing the loss curve.

`repartition(job, step, partition, reason)`: collective checkpoint of the current step, gather
every stage's Adam state by global parameter name across the pipeline group, rebuild this rank's
chunks and Trainer with the new split, load the weights by global name and carry Adam's state over
(layers change stage; tp and dp coordinates do not). With the distributed optimizer the state is
sharded over dp and is restarted instead (the event says so).
"""

from __future__ import annotations

import dataclasses
from typing import Any


def gather_adam_state(job: Any) -> dict[str, Any] | None:
    """Collective over the pipeline group: every stage's Adam state by global name (None with the
    distributed optimizer)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if job.cfg.parallel.use_distributed_optimizer:
        return None
    group = ps.get_pipeline_model_parallel_group()
    stages: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(stages, job.trainer.adam_state_by_name(job.param_infos), group=group)
    return {name: state for stage in stages for name, state in stage.items()}


def repartition(job: Any, step: int, partition: Any) -> dict[str, Any]:
    """Rebuild `job`'s model with `partition` (a balance.Partition) at `step`; returns the event's
    `applied`, `optimizer_state` and `checkpoint` fields."""
    from hybridrec.train import checkpoint

    ckpt = job.save()
    _, full = checkpoint.load_full_state(ckpt)
    adam = gather_adam_state(job)
    job.model_cfg = dataclasses.replace(job.model_cfg, **partition.megatron_kwargs())
    job.build_model(full)
    job.trainer.step = step
    kept = adam is not None and job.trainer.load_adam_state_by_name(job.param_infos, adam) > 0
    job.comm.forget_buffers()  # error-feedback residuals belong to the old buffers
    return {"applied": True, "optimizer_state": "kept" if kept else "reset", "checkpoint": str(ckpt)}
