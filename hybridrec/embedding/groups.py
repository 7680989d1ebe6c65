"""Pure rank arithmetic of 2D sparse parallelism for the item embedding table (no torch.distributed).

Owns two things, both plain data that tests check without spawning processes:

* `EmbeddingGroups`: the `world` ranks split two ways by the embedding-parallel group size E
  (independent of tp/pp/dp). `world // E` *sharding groups* of E ranks each hold one full copy of
  the table, row-sharded over their E ranks (lookups are an all-to-all inside the group); `E`
  *replica groups* of `world // E` ranks hold the same shard in every sharding group and keep it in
  sync (all-reduce). E = world is full sharding (one group, no replicas); E = 1 is pure
  replication (every rank holds the whole table). This is the layout of Zhang et al., "Two-dimensional
  Sparse Parallelism for Large Scale Deep Learning Recommendation Model Training", arXiv:2508.03854.

  Placement: ``contiguous`` (default) makes sharding groups blocks of consecutive ranks
  ([0..E-1], [E..2E-1], ...) and replica groups strided ({i, i+E, i+2E, ...}). With rank order
  following racks/nodes (as Slurm gives it) the all-to-all, which sits on the critical path of every
  forward and backward, stays inside a rack, while the replica all-reduce crosses racks where the
  topology-aware GradSync (hierarchical, compressed) can handle it. ``strided`` is the opposite
  (TorchRec's DMPCollection arrangement: replicas inside a node, shards across nodes), for fabrics
  where all-to-all bandwidth across nodes is cheap.

* `RowSharding`: which rank of a sharding group owns a row, and the row's index in that rank's
  local shard. ``modulo`` (default): owner = row % E, local = row // E. ``contiguous``: blocks of
  ceil(rows / E) rows. Modulo is the default because item ids are usually assigned in popularity
  or first-seen order: contiguous blocks would put the hot head of the catalogue on shard 0 (the
  load imbalance / straggler problem the paper targets), whereas modulo spreads any id ordering
  evenly, costs one integer division, and keeps shard sizes within one row of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridrec.errors import ConfigError

PLACEMENTS = ("contiguous", "strided")
ROW_SCHEMES = ("modulo", "contiguous")


@dataclass(frozen=True)
class EmbeddingGroups:
    """Sharding and replica groups of `world_size` ranks for embedding-parallel size `group_size`."""

    world_size: int
    group_size: int
    placement: str = "contiguous"

    @classmethod
    def build(cls, world_size: int, group_size: int, placement: str = "contiguous") -> EmbeddingGroups:
        """Validate and build; `group_size` 0 means `world_size` (full sharding)."""
        if not isinstance(world_size, int) or world_size < 1:
            raise ConfigError("world_size", world_size, "a positive integer")
        if group_size == 0:
            group_size = world_size
        if not isinstance(group_size, int) or group_size < 1:
            raise ConfigError("embedding.group_size", group_size, "a positive integer (0 = world size)")
        if world_size % group_size != 0:
            divisors = [d for d in range(1, world_size + 1) if world_size % d == 0]
            raise ConfigError("embedding.group_size", group_size,
                              f"a divisor of the world size {world_size}: one of {divisors}")
        if placement not in PLACEMENTS:
            raise ConfigError("embedding.placement", placement, f"one of {PLACEMENTS}")
        return cls(world_size, group_size, placement)

    @property
    def num_replicas(self) -> int:
        """M = world / E: number of sharding groups = copies of the table = size of a replica group."""
        return self.world_size // self.group_size

    def sharding_groups(self) -> list[list[int]]:
        """The M groups of E global ranks that each hold one row-sharded copy of the table."""
        e, m = self.group_size, self.num_replicas
        if self.placement == "contiguous":
            return [[g * e + i for i in range(e)] for g in range(m)]
        return [[i * m + g for i in range(e)] for g in range(m)]

    def replica_groups(self) -> list[list[int]]:
        """The E groups of M global ranks holding the same shard (position i in every sharding group)."""
        shard = self.sharding_groups()
        return [[group[i] for group in shard] for i in range(self.group_size)]

    def shard_rank(self, rank: int) -> int:
        """Position of `rank` inside its sharding group (= which row shard it owns)."""
        self._check(rank)
        return rank % self.group_size if self.placement == "contiguous" else rank // self.num_replicas

    def replica_index(self, rank: int) -> int:
        """Which sharding group (copy of the table) `rank` belongs to."""
        self._check(rank)
        return rank // self.group_size if self.placement == "contiguous" else rank % self.num_replicas

    def sharding_group_of(self, rank: int) -> list[int]:
        return self.sharding_groups()[self.replica_index(rank)]

    def replica_group_of(self, rank: int) -> list[int]:
        return self.replica_groups()[self.shard_rank(rank)]

    def _check(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ConfigError("rank", rank, f"0 <= rank < {self.world_size}")


@dataclass(frozen=True)
class RowSharding:
    """Row -> (owner position in the sharding group, local row index) for `num_rows` rows over E shards."""

    num_rows: int
    num_shards: int
    scheme: str = "modulo"

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ConfigError("embedding.num_rows", self.num_rows, "a positive integer")
        if self.num_shards < 1:
            raise ConfigError("embedding.group_size", self.num_shards, "a positive integer")
        if self.scheme not in ROW_SCHEMES:
            raise ConfigError("embedding.row_sharding", self.scheme, f"one of {ROW_SCHEMES}")

    @property
    def block(self) -> int:
        return -(-self.num_rows // self.num_shards)

    def shard_rows(self, shard: int) -> int:
        """Number of rows held by shard `shard`."""
        if self.scheme == "modulo":
            return max(0, -(-(self.num_rows - shard) // self.num_shards))
        return max(0, min(self.block, self.num_rows - shard * self.block))

    def max_shard_rows(self) -> int:
        return self.shard_rows(0)

    def owner(self, rows):  # np.ndarray or torch.Tensor of int64, same type back
        return rows % self.num_shards if self.scheme == "modulo" else rows // self.block

    def local_index(self, rows):
        return rows // self.num_shards if self.scheme == "modulo" else rows % self.block

    def global_rows(self, shard: int) -> np.ndarray:
        """The global row ids held by `shard`, in local-index order."""
        local = np.arange(self.shard_rows(shard), dtype=np.int64)
        return local * self.num_shards + shard if self.scheme == "modulo" else local + shard * self.block


def across_tp(group_lists: list[list[int]], tp: int) -> list[list[int]]:
    """The table's groups, given over data-parallel ranks, as global ranks: one copy per tp index.

    Under tp the table lives outside megatron's tensor parallelism: every tp rank of a data-parallel
    replica sees the same batch, hidden states and gradients, so it holds the same rows as its tp
    peers and joins the groups of its own tp index. With pp = 1 megatron's rank order puts tp fastest,
    so dp rank d at tp index t is global rank d * tp + t."""
    if tp < 1:
        raise ConfigError("parallel.tp", tp, "a positive integer")
    return [[d * tp + t for d in group] for t in range(tp) for group in group_lists]


OPTIMIZERS = ("rowwise_adagrad", "momentum_scaled_rowwise_adagrad", "adam")
SYNC_MODES = ("grad", "weights")


def validate_config(cfg, world_size: int) -> EmbeddingGroups:
    """Check an `EmbeddingConfig` against the world size; return its groups (raises ConfigError)."""
    groups = EmbeddingGroups.build(world_size, cfg.group_size, cfg.placement)
    if cfg.row_sharding not in ROW_SCHEMES:
        raise ConfigError("embedding.row_sharding", cfg.row_sharding, f"one of {ROW_SCHEMES}")
    if cfg.replica_sync not in SYNC_MODES:
        raise ConfigError("embedding.replica_sync", cfg.replica_sync, f"one of {SYNC_MODES}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError("embedding.optimizer", cfg.optimizer, f"one of {OPTIMIZERS}")
    if not cfg.lr > 0:
        raise ConfigError("embedding.lr", cfg.lr, "a positive learning rate")
    if cfg.momentum_scale < 0:
        raise ConfigError("embedding.momentum_scale", cfg.momentum_scale, ">= 0 (0 = auto)")
    return groups


def momentum_scale(cfg, groups: EmbeddingGroups) -> float:
    """The c of momentum-scaled row-wise AdaGrad: 1 for plain; explicit value; or auto.

    Auto (0) is M = world / E under replica_sync=weights (each replica steps on 1/M of the batch)
    and 1 under replica_sync=grad (the averaged gradient is the full batch's: nothing to correct).
    """
    if cfg.optimizer in ("rowwise_adagrad", "adam"):
        return 1.0
    if cfg.momentum_scale > 0:
        return float(cfg.momentum_scale)
    return float(groups.num_replicas) if cfg.replica_sync == "weights" else 1.0


def job_refusals(cfg) -> list[ConfigError]:
    """Combinations the job's 2D table does not support yet, each named (a `RunConfig`; pure).

    The trainer wiring (hybridrec.embedding.wiring) covers data parallelism and tp x dp (the table
    copied over the tp ranks of each replica, `across_tp`) with item ids; the table on the first and
    last pipeline stages and text-fused item rows are not built."""
    par, out = cfg.parallel, []
    for name in ("pp", "vpp"):
        if getattr(par, name) != 1:
            out.append(ConfigError(f"parallel.{name}", getattr(par, name),
                                   "1 with embedding.enabled=true: the 2D item table runs with dp and tp x dp "
                                   "layouts; the table on the first/last pipeline stages is not built (use "
                                   "embedding=off for pp layouts)"))
    if cfg.model.item_repr != "id":
        out.append(ConfigError("model.item_repr", cfg.model.item_repr,
                               "'id' with embedding.enabled=true: item text (text / text+id) fuses an encoder "
                               "into the item rows, which the row-sharded table does not do; use embedding=off"))
    if getattr(par, "balance", "uniform") != "uniform":
        out.append(ConfigError("parallel.balance", par.balance, "uniform with embedding.enabled=true (no pipeline)"))
    if str(getattr(cfg.allreduce, "mode", "sync")) != "sync":
        out.append(ConfigError("allreduce.mode", str(cfg.allreduce.mode),
                               "sync with embedding.enabled=true (the table's replica sync is synchronous; "
                               "embedding.replica_sync=weights is its local-step mode)"))
    return out
