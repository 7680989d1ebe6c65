"""Data-parallel communication of one job, built in one place: `build_comm(cfg, layout, rank) -> Comm`.

`Comm` holds what the training step needs to move gradients between replicas:
- the rack map (from every topology source: slurm, scontrol, config, single),
- the process groups and the `GradSync` (rack-aware algorithm, codec, sync / async / local SGD),
  or nothing when megatron's DDP does its own flat all-reduce,
- megatron's `finalize_model_grads_func` replacement that calls the `GradSync`,
- `after_step(step, chunks)`: what has to happen after each optimizer step (local-SGD parameter
  averaging every period; nothing in the other modes),
- byte accounting per step and the state to checkpoint (error-feedback residuals).

No other module of the job knows an algorithm, mode or topology name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from hybridrec.topology import RackMap


@dataclass
class Comm:
    rack_map: RackMap
    grad_sync: Any = None  # GradSync, or None: megatron DDP's own all-reduce
    finalize_model_grads: Callable[..., None] | None = None

    @property
    def describe(self) -> str:
        if self.grad_sync is None:
            return "megatron DDP all-reduce"
        return f"{self.grad_sync.algorithm_name} {self.grad_sync.ctx.codec.name} {self.grad_sync.mode}"

    def after_step(self, step: int, chunks: list[torch.nn.Module]) -> bool:
        """Call on every rank after each optimizer step; True when parameters were averaged (local SGD)."""
        if self.grad_sync is None:
            return False
        from hybridrec.distributed.megatron_grad_hook import average_model_params_

        return average_model_params_(chunks, self.grad_sync)

    def step_byte_counts(self) -> dict[str, int] | None:
        """Bytes this rank sent for gradient sync since the last call, per hop class (None: not counted)."""
        if self.grad_sync is None or self.grad_sync.counter is None:
            return None
        return self.grad_sync.counter.step_end()

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.grad_sync is None else self.grad_sync.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.grad_sync is not None and state is not None:
            self.grad_sync.load_state_dict(state)

    def forget_buffers(self) -> None:
        """After the model's gradient buffers were rebuilt (live re-partition): drop in-flight async
        results and error-feedback residuals, which belong to the old buffers."""
        if self.grad_sync is not None:
            self.grad_sync.drain()
            self.grad_sync.ctx.memory.clear()

    def close(self) -> None:
        if self.grad_sync is not None:
            self.grad_sync.close()


def build_comm(cfg: Any, layout: Any, rank: int) -> Comm:
    """Collective on every rank, after megatron's groups exist (`layout.groups("dp")` are megatron's
    data-parallel groups): rack map, gradient groups, GradSync and megatron's finalize hook."""
    from hybridrec.config.comm import Algorithm
    from hybridrec.distributed.allreduce.groups import build_comm_groups, discover_rack_map

    rack_map = discover_rack_map(cfg.allreduce.topology, cfg.allreduce.racks)
    if Algorithm(cfg.allreduce.algorithm) is Algorithm.megatron:
        return Comm(rack_map)
    from hybridrec.distributed.accounting import ByteCounter
    from hybridrec.distributed.grad_sync import GradSync
    from hybridrec.distributed.megatron_grad_hook import make_finalize_model_grads

    groups = build_comm_groups(layout.groups("dp"), rack_map, rank)
    sync = GradSync.from_config(groups, cfg.allreduce, cfg.compression, ByteCounter(rack_map, rank))
    return Comm(rack_map, sync, make_finalize_model_grads(sync))
