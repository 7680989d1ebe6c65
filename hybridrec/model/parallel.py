"""Creating and tearing down megatron's model-parallel state for a layout (after torch.distributed init)."""

from __future__ import annotations

import torch


def initialize(tp: int, pp: int, vpp: int, seed: int) -> None:
    """megatron process groups for tp x pp (x vpp) with dp = world / (tp * pp), order tp-cp-ep-dp-pp,
    and megatron's RNG tracker seeded with `seed` (dropout streams)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                 virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def destroy() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
