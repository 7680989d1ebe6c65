"""Schemas of the `compression/` and `allreduce/` groups: how data-parallel gradients travel."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompressionConfig:
    # none | fp16 | bf16 | topk | sign1bit
    codec: str = "none"
    # top-k ratio in (0, 1]
    ratio: float = 0.01
    error_feedback: bool = True
    # cross_rack | all : which hops are compressed
    hops: str = "cross_rack"


@dataclass
class AllreduceConfig:
    # megatron (megatron DDP's own all-reduce) | flat | hierarchical
    algorithm: str = "megatron"
    # rack map: slurm | config | single
    topology: str = "single"
    # used when topology=config: rack name -> list of hostnames
    racks: dict[str, list[str]] = field(default_factory=dict)
    bucket_mb: float = 25.0
    # sync | async (bounded staleness)
    mode: str = "sync"
    staleness: int = 0
