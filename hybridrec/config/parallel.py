"""Schema of the `parallel/` config group: the tp x pp x dp layout and micro-batching."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    # virtual pipeline stages per rank (interleaved 1F1B); 1 = plain 1F1B
    vpp: int = 1
    # dp = world / (tp * pp); 0 means "derive it", any other value is checked
    dp: int = 0
    micro_batch_size: int = 32
    # gloo on CPU, nccl on GPU; "auto" picks by device
    backend: str = "auto"
    # pipeline stage balancing: uniform | adaptive
    balance: str = "uniform"
    use_distributed_optimizer: bool = False
