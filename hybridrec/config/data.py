"""Schema of the `data/` config group: which data set, where, and how it is filtered and split."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    # synthetic | ml100k | amazon2014 | amazon2018 | amazon2023
    source: str = "synthetic"
    # file path for amazon formats (reviews json lines / ratings csv / jsonl); gzip or plain
    path: str = ""
    # synthetic generator size: tiny | paper
    synthetic_scale: str = "tiny"
    seed: int = 0
    kcore: int = 5
    max_seq_len: int = 50
    # processed data is cached here as HDF5; empty = ~/.cache/hybridrec
    cache_dir: str = ""
    num_negatives: int = 100
