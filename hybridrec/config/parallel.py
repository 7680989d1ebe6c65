"""Schema of the `parallel/` config group: the tp x pp x dp layout, micro-batching, launching and
pipeline balancing knobs (read by `hybridrec.distributed.layout`, `hybridrec.distributed.env`, `hybridrec.train.balance`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Backend(StrEnum):
    auto = "auto"  # by device: NCCL for tensors on GPUs, gloo on CPU
    gloo = "gloo"
    nccl = "nccl"


class Balance(StrEnum):
    uniform = "uniform"  # megatron's even split of layers over stages
    adaptive = "adaptive"  # profile layers, choose per-stage counts, re-balance on measured drift

# allowed values of `parallel.backend` (the default process group's backend)
BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    # virtual pipeline stages per rank (interleaved 1F1B); 1 = plain 1F1B
    vpp: int = 1
    # dp = world / (tp * pp); 0 means "derive it", any other value is checked
    dp: int = 0
    micro_batch_size: int = 32
    backend: Backend = Backend.auto
    # seconds before a collective (and process-group start) gives up
    timeout_s: float = 600.0
    # megatron's batched p2p: null = auto (off when interleaved: wrong losses at pp=2, NOTES trap)
    batch_p2p_comm: bool | None = None
    balance: Balance = Balance.uniform
    # adaptive: re-balance when max/mean of measured stage times drifts this far above the plan's
    rebalance_threshold: float = 0.15
    # adaptive: also choose micro-batch size/count from stage times and the memory budget
    dynamic_micro_batch: bool = False
    # per-stage memory budget in MiB for the micro-batch chooser (0 = unlimited)
    memory_budget_mb: float = 0.0
    # profiling repetitions per piece (median is used)
    profile_repeats: int = 3
    use_distributed_optimizer: bool = False
