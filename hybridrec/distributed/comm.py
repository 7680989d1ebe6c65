"""Data-parallel communication of one job, built in one place: `build_comm(cfg, layout, rank) -> Comm`.

`Comm` holds what the training step needs to move gradients between replicas:
- the rack map (from every topology source: slurm, scontrol, config, single),
- the process groups and the `GradSync` (rack-aware algorithm, codec, sync / async / local SGD),
  or nothing when megatron's DDP does its own flat all-reduce,
- megatron's `finalize_model_grads_func` replacement that calls the `GradSync` per megatron
  gradient bucket, and the DDP options that make megatron cut its buffers into those buckets
  (`ddp_options`; `attach(trainer)` after the Trainer exists): with `allreduce.overlap` each bucket's
  sync starts during backward as soon as its gradients are ready (`hybridrec.distributed.overlap`),
- `after_step(step, chunks)`: what has to happen after each optimizer step (local-SGD parameter
  averaging every period; nothing in the other modes),
- byte accounting and exposed / overlapped communication seconds per step, and the state to
  checkpoint (error-feedback residuals).

No other module of the job knows an algorithm, mode or topology name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hybridrec.topology import RackMap


@dataclass
class Comm:
    rack_map: RackMap
    grad_sync: Any = None  # GradSync, or None: megatron DDP's own all-reduce
    finalize_model_grads: Any = None  # megatron_grad_hook.FinalizeModelGrads (None: megatron's own)
    overlap: bool = False
    bucket_mb: float = 25.0

    @property
    def ddp_options(self) -> dict[str, Any]:
        """Keyword arguments for megatron's DistributedDataParallelConfig. GradSync always has megatron
        cut its buffers into `bucket_mb` buckets and report them ready (`overlap_grad_reduce=True`; the
        hook decides whether the sync starts then or after backward), so both paths see the same buckets."""
        bucket_size = max(1, int(self.bucket_mb * 2**20) // 4)  # megatron counts elements (fp32 grads)
        if self.grad_sync is None:
            return {"overlap_grad_reduce": self.overlap, "bucket_size": bucket_size if self.overlap else None}
        return {"overlap_grad_reduce": True, "bucket_size": bucket_size}

    def attach(self, trainer: Any) -> None:
        """After the Trainer wrapped the chunks in DDP: megatron's schedules must hold back the hooks'
        bucket starts until the last micro-batch (`no_sync_func`), and GradSync takes the starts over."""
        chunks = trainer.chunks
        no_sync = [chunk.no_sync for chunk in chunks]
        trainer.tconfig.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        if self.finalize_model_grads is not None:
            self.finalize_model_grads.detach()
            self.finalize_model_grads.attach(chunks)

    def step_comm_seconds(self) -> dict[str, float] | None:
        """This rank's gradient-sync worker seconds since the last call: `worker_s` (busy) and
        `overlapped_s` (busy while the step did not wait for it). None without GradSync."""
        if self.grad_sync is None:
            return None
        return self.grad_sync.clock.step()

    @property
    def describe(self) -> str:
        if self.grad_sync is None:
            return "megatron DDP all-reduce" + (" overlap" if self.overlap else "")
        overlap = " overlap" if self.overlap else ""
        return f"{self.grad_sync.algorithm_name} {self.grad_sync.ctx.codec.name} {self.grad_sync.mode}{overlap}"

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
    from hybridrec.distributed.allreduce.groups import discover_rack_map

    rack_map = discover_rack_map(cfg.allreduce.topology, cfg.allreduce.racks)
    if Algorithm(cfg.allreduce.algorithm) is Algorithm.megatron:
        return Comm(rack_map, overlap=bool(cfg.allreduce.overlap), bucket_mb=cfg.allreduce.bucket_mb)
    return grad_sync_comm(rack_map, layout.groups("dp"), cfg.allreduce, cfg.compression, rank)


def grad_sync_comm(rack_map: RackMap, dp_groups: list[list[int]], allreduce: Any, compression: Any,
                   rank: int) -> Comm:
    """Collective: the gradient groups over `dp_groups` (every dp group, global ranks), GradSync and
    the finalize hook for a known rack map (build_comm's second half; tests give their own racks)."""
    from hybridrec.distributed.accounting import ByteCounter
    from hybridrec.distributed.allreduce.groups import build_comm_groups
    from hybridrec.distributed.grad_sync import GradSync
    from hybridrec.distributed.megatron_grad_hook import make_finalize_model_grads

    groups = build_comm_groups(dp_groups, rack_map, rank, cpu_staging=allreduce.cpu_staging)
    sync = GradSync.from_config(groups, allreduce, compression, ByteCounter(rack_map, rank))
    overlap = bool(allreduce.overlap)
    return Comm(rack_map, sync, make_finalize_model_grads(sync, overlap), overlap, allreduce.bucket_mb)
