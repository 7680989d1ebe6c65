"""Schema of the `embedding/` config group: 2D sparse parallelism of the item embedding table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EmbeddingConfig:
    # off: the item table stays megatron's (vocab-parallel over tp); on: hybridrec.embedding owns it
    # (the job: parallel=auto_dp / dpN with item ids; preflight names the combinations it refuses)
    enabled: bool = False
    # E: ranks a copy of the table is row-sharded over; 0 = world size (full sharding), 1 = replication
    group_size: int = 0
    # contiguous: sharding groups are consecutive ranks (all-to-all inside a rack, replica sync across)
    # strided: replica groups are consecutive ranks (TorchRec DMPCollection arrangement)
    placement: str = "contiguous"
    # row -> shard: modulo (row % E, balances popularity-ordered ids) | contiguous (blocks)
    row_sharding: str = "modulo"
    # grad: average row gradients across replicas before the step (= unsharded training)
    # weights: each replica group steps locally, then touched rows + accumulators are averaged (paper)
    replica_sync: str = "grad"
    # rowwise_adagrad | momentum_scaled_rowwise_adagrad | adam (the job's table only: AdamW with the dense
    # model's train.lr / betas / eps / weight_decay, the setting that reproduces embedding=off at E=1)
    optimizer: str = "momentum_scaled_rowwise_adagrad"
    lr: float = 0.05
    eps: float = 1e-8
    # the paper's c; 0 = auto: number of replica groups M under replica_sync=weights, else 1
    momentum_scale: float = 0.0
    # send each distinct id once per lookup
    dedup: bool = True
    init_std: float = 0.02
