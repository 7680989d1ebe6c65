"""Plug GradSync into megatron-core 0.16.1's training step.

`make_finalize_model_grads(grad_sync, overlap=False)` returns a function with the signature of
`megatron.core.distributed.finalize_model_grads` (model, num_tokens, pg_collection, force_all_reduce),
to assign to `TransformerConfig.finalize_model_grads_func`. It runs megatron's own
finalize_model_grads with one change: each model chunk's data-parallel reduction
(`chunk.finish_grad_sync()`) is replaced, for that call only, by GradSync over the chunk's megatron
gradient buckets, bucket group by bucket group in megatron's order
(`hybridrec.distributed.overlap.BucketedGradSync`). Everything after it (conditional/word/position
embedding and layernorm reductions across pipeline / tensor ranks, num_tokens scaling) is
megatron's code, unchanged.

Overlap: with `DistributedDataParallelConfig(overlap_grad_reduce=True, bucket_size=...)` megatron
cuts the buffers into buckets and its backward hooks call each bucket group's `start_grad_sync()`
when the group's gradients are ready; the chunks attached here (`finalize.attach(chunks)`, or
lazily at the first call: megatron launches nothing from its hooks in a buffer's first step) have
that call taken over: with overlap=True the group's GradSync reduction starts right then on the
FIFO worker; with overlap=False it waits for `finish_grad_sync`. Same buckets, same order, same
results. With `overlap_grad_reduce=False` megatron keeps one bucket per buffer and its hooks start
nothing: the sync runs after backward.

The replacement respects megatron's gradient scaling: each bucket is multiplied by its
`gradient_scaling_factor` (1/dp unless `average_in_collective`), then summed across the dp group
(or averaged when `average_in_collective`), which is exactly what megatron's bucket all-reduce does.
Requirement: no expert-parallel buffers. A distributed optimizer works: it reads its shard of the
all-reduced buffer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from hybridrec.distributed.grad_sync import GradSync
from hybridrec.distributed.overlap import BucketedGradSync
from hybridrec.errors import ConfigError


def _check_chunk(chunk: Any, grad_sync: GradSync) -> None:
    if getattr(chunk, "expert_parallel_buffers", None):
        raise ConfigError("model", "expert-parallel buffers", "no MoE experts with GradSync (use allreduce=megatron)")
    dp_ranks = torch.distributed.get_process_group_ranks(chunk.intra_dp_cp_group)
    if sorted(dp_ranks) != list(grad_sync.groups.group_ranks):
        raise ConfigError("GradSync group", list(grad_sync.groups.group_ranks),
                          f"megatron's data-parallel group of this rank {sorted(dp_ranks)}")


def _finish_chunk(bucketed: BucketedGradSync, chunk: Any, index: int, force_all_reduce: bool | None = False) -> None:
    bucketed.finish(bucketed.attach(chunk, index))


class FinalizeModelGrads:
    """The `finalize_model_grads_func`; `attach(chunks)` takes over the chunks' bucket starts now,
    `detach()` gives them back (after the model's buffers were rebuilt)."""

    def __init__(self, grad_sync: GradSync, overlap: bool = False):
        self.grad_sync = grad_sync
        self.bucketed = BucketedGradSync(grad_sync, overlap)

    def attach(self, model: list[torch.nn.Module]) -> None:
        for index, chunk in enumerate(model):
            _check_chunk(chunk, self.grad_sync)
            self.bucketed.attach(chunk, index)

    def detach(self) -> None:
        self.bucketed.detach_all()

    def __call__(self, model: list[torch.nn.Module], num_tokens: torch.Tensor | None = None,
                 pg_collection: Any = None, force_all_reduce: bool | None = False) -> None:
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads as megatron_finalize

        self.attach(model)
        for index, chunk in enumerate(model):
            # instance attribute shadows DDP.finish_grad_sync for this call only
            chunk.finish_grad_sync = functools.partial(_finish_chunk, self.bucketed, chunk, index)
        try:
            megatron_finalize(model, num_tokens=num_tokens, pg_collection=pg_collection,
                              force_all_reduce=force_all_reduce)
        finally:
            for chunk in model:
                if "finish_grad_sync" in chunk.__dict__:
                    del chunk.__dict__["finish_grad_sync"]


def make_finalize_model_grads(grad_sync: GradSync, overlap: bool = False) -> FinalizeModelGrads:
    """A drop-in `finalize_model_grads_func` that reduces DP gradients with `grad_sync`."""
    return FinalizeModelGrads(grad_sync, overlap)


def average_model_params_(model: list[torch.nn.Module], grad_sync: GradSync) -> bool:
    """local_sgd mode: after the optimizer step, average the chunks' parameters every period."""
    params = [p.data for chunk in model for p in chunk.parameters() if p.requires_grad]
    return grad_sync.after_optimizer_step_(params, name="params")
