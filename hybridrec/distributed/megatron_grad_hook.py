"""Plug GradSync into megatron-core 0.16.1's training step.

`make_finalize_model_grads(grad_sync)` returns a function with the signature of
`megatron.core.distributed.finalize_model_grads` (model, num_tokens, pg_collection, force_all_reduce),
to assign to `TransformerConfig.finalize_model_grads_func`. It runs megatron's own
finalize_model_grads with one change: each model chunk's data-parallel reduction
(`chunk.finish_grad_sync()`) is replaced, for that call only, by GradSync over the chunk's DDP grad
buffers. Everything after it (conditional/word/position embedding and layernorm reductions across
pipeline / tensor ranks, num_tokens scaling) is megatron's code, unchanged.

The replacement respects megatron's gradient scaling: each buffer is multiplied by its
`gradient_scaling_factor` (1/dp unless `average_in_collective`), then summed across the dp group
(or averaged when `average_in_collective`), which is exactly what megatron's bucket all-reduce does.
Requirements: `DistributedDataParallelConfig(overlap_grad_reduce=False)` (megatron would otherwise
launch its own all-reduce from backward hooks) and no expert-parallel buffers. A distributed
optimizer works: it reads its shard of the all-reduced buffer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from hybridrec.distributed.grad_sync import GradSync
from hybridrec.errors import ConfigError


def _sync_chunk(chunk: Any, grad_sync: GradSync, name: str, force_all_reduce: bool | None = False) -> None:
    ddp_config = chunk.ddp_config
    if ddp_config.overlap_grad_reduce:
        raise ConfigError("ddp.overlap_grad_reduce", True,
                          "False with allreduce.algorithm flat/hierarchical (GradSync reduces after backward)")
    if getattr(chunk, "expert_parallel_buffers", None):
        raise ConfigError("model", "expert-parallel buffers", "no MoE experts with GradSync (use allreduce=megatron)")
    dp_ranks = torch.distributed.get_process_group_ranks(chunk.intra_dp_cp_group)
    if sorted(dp_ranks) != list(grad_sync.groups.group_ranks):
        raise ConfigError("GradSync group", list(grad_sync.groups.group_ranks),
                          f"megatron's data-parallel group of this rank {sorted(dp_ranks)}")
    for buffer in chunk.buffers:
        if buffer.gradient_scaling_factor != 1.0:
            buffer.grad_data *= buffer.gradient_scaling_factor
    grad_sync.reduce_([buffer.grad_data for buffer in chunk.buffers],
                      average=bool(ddp_config.average_in_collective), name=name)
    for bucket_group in chunk.bucket_groups:  # what megatron's finish_grad_sync resets
        bucket_group.param_gather_dispatched = False


def make_finalize_model_grads(grad_sync: GradSync) -> Callable[..., None]:
    """A drop-in `finalize_model_grads_func` that reduces DP gradients with `grad_sync`."""
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads as megatron_finalize

    def finalize_model_grads(model: list[torch.nn.Module], num_tokens: torch.Tensor | None = None,
                             pg_collection: Any = None, force_all_reduce: bool | None = False) -> None:
        for index, chunk in enumerate(model):
            # instance attribute shadows DDP.finish_grad_sync for this call only
            chunk.finish_grad_sync = functools.partial(_sync_chunk, chunk, grad_sync, f"chunk{index}/")
        try:
            megatron_finalize(model, num_tokens=num_tokens, pg_collection=pg_collection,
                              force_all_reduce=force_all_reduce)
        finally:
            for chunk in model:
                if "finish_grad_sync" in chunk.__dict__:
                    del chunk.__dict__["finish_grad_sync"]

    return finalize_model_grads


def average_model_params_(model: list[torch.nn.Module], grad_sync: GradSync) -> bool:
    """local_sgd mode: after the optimizer step, average the chunks' parameters every period."""
    params = [p.data for chunk in model for p in chunk.parameters() if p.requires_grad]
    return grad_sync.after_optimizer_step_(params, name="params")
