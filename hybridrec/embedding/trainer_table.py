"""The job's item table under 2D sparse parallelism (`embedding.enabled=true`): `TrainerTable`.

Owns, for one rank of a data-parallel or tp x dp job (pp = 1; under tp every tp rank of a replica
holds the same rows as its tp peers, in the groups of its own tp index: `groups.across_tp`):

* the item rows 1..num_items of the vocabulary as a `ShardedEmbedding` (row = item id - 1) sharded
  over the E ranks of this rank's sharding group and replicated over the M = dp / E groups;
  the few other vocabulary ids (padding 0 and the pad ids above num_items, `ItemVocab.extra_ids`)
  stay a small dense parameter of the model (`hybridrec.model.sharded_output`), trained with it;
* the input lookup (all-to-all inside the sharding group) and the tied output scoring
  (`distributed_ce`: distributed softmax cross entropy, per-shard ranking counts);
* the table's optimizer: `adam` (AdamW with the dense model's hyperparameters, the setting that
  reproduces the unsharded job at E = 1), `rowwise_adagrad`, or `momentum_scaled_rowwise_adagrad`
  (arXiv:2508.03854, c = M under replica_sync=weights);
* replica synchronisation through a `GradSync` over the replica groups (rack-aware algorithm,
  codec, error feedback; always synchronous): ``grad`` averages the table gradient before the
  step, ``weights`` steps each replica on its own gradient and then averages the weights and the
  optimizer state. The tied full-softmax output touches every row every step, so the gradient is
  a dense buffer of the shard (the input lookup's sparse rows are added into it);
* the step (`step()`, called once per training step after the backward of every micro-batch),
  its state for checkpoints, and the `embedding` record of summary.json with the memory and
  traffic accounting (`table_accounting`, also what the benchmark reports at 5M items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hybridrec.embedding.distributed_ce import ScoringGroup, ShardColumns, count_above, sharded_softmax_ce
from hybridrec.embedding.exchange import COUNT_BYTES, ID_BYTES
from hybridrec.embedding.groups import EmbeddingGroups, RowSharding, momentum_scale, validate_config
from hybridrec.errors import ConfigError

ADAM_BETAS = (0.9, 0.98)  # the dense model's (hybridrec.train.loop.Trainer)
ADAM_EPS = 1e-8
FULL_INIT_MAX_ELEMENTS = 1 << 24  # above: chunked layout-independent init instead of the model's


@dataclass(frozen=True)
class ItemVocab:
    """Vocabulary ids: 0 padding, 1..num_items items (table rows id - 1), num_items+1.. vocab padding."""

    num_items: int
    vocab_size: int

    def is_item(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= 1) & (ids <= self.num_items)

    @property
    def num_extra(self) -> int:
        return self.vocab_size - self.num_items

    def extra_ids(self) -> torch.Tensor:
        return torch.cat([torch.zeros(1, dtype=torch.int64),
                          torch.arange(self.num_items + 1, self.vocab_size, dtype=torch.int64)])

    def extra_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Index into `extra_ids` (0 for item ids, whose extra lookup is masked out)."""
        return torch.where(ids > self.num_items, ids - self.num_items, torch.zeros_like(ids))


def optimizer_state_bytes(optimizer: str, rows: int, dim: int) -> int:
    """Resident optimizer state of `rows` rows: Adam two fp32 moments per element (+ one step
    scalar); row-wise AdaGrad one fp32 accumulator per row."""
    return 2 * rows * dim * 4 + 4 if optimizer == "adam" else rows * 4


def table_accounting(num_items: int, dim: int, group_size: int, world_size: int, optimizer: str,
                     row_scheme: str = "modulo", tokens_per_step: int = 0, itemsize: int = 4) -> dict[str, int]:
    """Bytes per rank of the trainer's table (the record's accounting; pure arithmetic).

    `alltoall_bound_bytes_per_step`: the lookup all-to-all when all `tokens_per_step` looked-up ids
    of the rank are distinct and remote: (E-1) split sizes + ids + rows served back + gradients;
    the measured value is below it (dedup, local ids, padding not looked up)."""
    groups = EmbeddingGroups.build(world_size, group_size)
    e = groups.group_size
    rows = RowSharding(num_items, e, row_scheme).max_shard_rows()
    row = dim * itemsize
    return {
        "rows_per_rank": rows,
        "parameter_bytes": rows * row,
        "optimizer_state_bytes": optimizer_state_bytes(optimizer, rows, dim),
        "gradient_buffer_bytes": rows * dim * 4,
        "replicated_parameter_bytes": num_items * row,
        "replicated_optimizer_state_bytes": optimizer_state_bytes(optimizer, num_items, dim),
        "alltoall_bound_bytes_per_step": ((e - 1) * COUNT_BYTES + tokens_per_step * (ID_BYTES + 2 * row)) if e > 1 else 0,
    }


def _initial_rows(global_rows, num_items: int, vocab: ItemVocab, dim: int, std: float, seed: int):
    """(item rows, extra rows): the unsharded model's initial word embedding, cut into this shard's
    item rows and the extra vocabulary rows, so E = 1 starts from today's weights. Very large tables
    fall back to the table's chunked layout-independent init (still the same for every E)."""
    from hybridrec.embedding.sharded import init_rows
    from hybridrec.model.params import WORD_EMBEDDING, full_initial_value

    if vocab.vocab_size * dim <= FULL_INIT_MAX_ELEMENTS:
        full = full_initial_value(WORD_EMBEDDING, (vocab.vocab_size, dim), std, seed)
        return full[torch.from_numpy(global_rows) + 1].clone(), full[vocab.extra_ids()].clone()
    extra = full_initial_value(WORD_EMBEDDING + ".extra", (vocab.num_extra, dim), std, seed)
    return init_rows(global_rows, num_items, dim, std, seed), extra


class TrainerTable:
    """One rank's share of the 2D item table plus its optimizer and replica sync (collective build)."""

    def __init__(self, cfg: Any, train_cfg: Any, vocab: ItemVocab, dim: int, rank: int, world_size: int,
                 rack_map: Any = None, allreduce: Any = None, compression: Any = None,
                 init_std: float = 0.02, init_seed: int = 0, tp: int = 1):
        from hybridrec.embedding.sharded import ShardedEmbedding, create_process_groups

        self.cfg, self.vocab, self.dim, self.rank, self.tp = cfg, vocab, dim, rank, tp
        self.dp_rank = rank // tp  # pp = 1: global rank = dp rank * tp + tp index (megatron's order)
        self.groups = validate_config(cfg, world_size // tp)
        self.pgs = create_process_groups(self.groups, rank, tp)
        self.lookup = ShardedEmbedding(vocab.num_items, dim, self.groups, self.dp_rank, self.pgs, cfg.row_sharding,
                                       cfg.dedup, cfg.replica_sync, cfg.init_std, init_seed,
                                       layout_independent_init=False, replica_sync=_NoSync())
        items, self.extra_init = _initial_rows(self.lookup.global_rows(), vocab.num_items, vocab, dim, init_std,
                                               init_seed)
        with torch.no_grad():
            self.lookup.weight.copy_(items)
        self.weight = self.lookup.weight
        self.grad_buffer = torch.zeros_like(self.weight)
        position = self.groups.shard_rank(self.dp_rank)
        extra = vocab.extra_ids() if position == 0 else None
        self.columns = ShardColumns(torch.from_numpy(self.lookup.global_rows()) + 1, extra, vocab.vocab_size)
        self.scores_extra = extra is not None
        self.scoring = ScoringGroup(self.pgs.sharding, self.groups.group_size, position)
        self.momentum_scale = momentum_scale(cfg, self.groups) if cfg.optimizer != "adam" else 1.0
        self.optimizer = self._make_optimizer(train_cfg)
        self.replica_sync = self._make_replica_sync(rack_map, allreduce, compression)
        self.steps = 0
        self.alltoall_bytes: list[int] = []
        self.scoring_bytes: list[int] = []
        self.replica_bytes: list[int] = []
        self.replica_cross_rack: list[int] = []

    # -- build --------------------------------------------------------------------------------
    def _make_optimizer(self, train_cfg: Any) -> torch.optim.Optimizer:
        from hybridrec.embedding.rowwise_adagrad import RowWiseAdagrad

        if self.cfg.optimizer == "adam":
            return torch.optim.AdamW([self.weight], lr=train_cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                     weight_decay=train_cfg.weight_decay)
        return RowWiseAdagrad([self.weight], lr=self.cfg.lr, eps=self.cfg.eps, momentum_scale=self.momentum_scale)

    def _make_replica_sync(self, rack_map: Any, allreduce: Any, compression: Any) -> Any:
        """GradSync over the replica groups (collective over the world); None when M = 1."""
        if self.groups.num_replicas == 1:
            return None
        from hybridrec.distributed.accounting import ByteCounter
        from hybridrec.distributed.allreduce.groups import build_comm_groups
        from hybridrec.distributed.compression import make_codec
        from hybridrec.distributed.grad_sync import GradSync
        from hybridrec.embedding.groups import across_tp
        from hybridrec.topology import RackMap

        rack_map = rack_map if rack_map is not None else RackMap.single(self.groups.world_size * self.tp)
        comm = build_comm_groups(across_tp(self.groups.replica_groups(), self.tp), rack_map, self.rank)
        algorithm = "flat" if allreduce is None or str(allreduce.algorithm) == "megatron" else str(allreduce.algorithm)
        kwargs: dict[str, Any] = {"algorithm": algorithm, "mode": "sync", "counter": ByteCounter(rack_map, self.rank)}
        if allreduce is not None:
            kwargs.update(variant=str(allreduce.variant), bucket_bytes=int(allreduce.bucket_mb * 2**20))
        if compression is not None:
            kwargs.update(codec=make_codec(compression), error_feedback=compression.error_feedback,
                          compress_hops=str(compression.hops))
        return GradSync(comm, **kwargs)

    # -- the model's calls --------------------------------------------------------------------
    def lookup_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings (k, h) of item ids (k,) (1..num_items): the all-to-all lookup. Collective."""
        return self.lookup(ids - 1)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor, extra_w: torch.Tensor) -> torch.Tensor:
        """Per-row cross entropy over the whole vocabulary, shard by shard. Collective."""
        return sharded_softmax_ce(hidden, self.weight, extra_w if self.scores_extra else None, labels,
                                  self.columns, self.scoring, self.grad_buffer)

    def count_above(self, hidden: torch.Tensor, targets: torch.Tensor, extra_w: torch.Tensor,
                    candidates: dict[str, torch.Tensor | None], history: torch.Tensor | None) -> torch.Tensor:
        return count_above(hidden, self.weight.detach(), extra_w.detach() if self.scores_extra else None, targets,
                           self.columns, self.scoring, self.vocab.num_items, candidates, history)

    # -- the step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """After every micro-batch's backward: gradient -> (grad sync) -> optimizer -> (weight sync)."""
        from hybridrec.telemetry.timers import phase

        grad = self.grad_buffer
        sparse = self.weight.grad
        if sparse is not None:
            sparse = sparse.coalesce() if sparse.is_sparse else sparse.to_sparse().coalesce()
            grad.index_add_(0, sparse.indices()[0], sparse.values().to(grad.dtype))
        if self.replica_sync is not None and self.cfg.replica_sync == "grad":
            with phase("dp_comm"):
                self.replica_sync.sync_([grad], name="table_grad")
        self.weight.grad = grad
        with phase("optimizer"):
            self.optimizer.step()
        if self.replica_sync is not None and self.cfg.replica_sync == "weights":
            with phase("dp_comm"):
                self.replica_sync.sync_(self._weight_sync_tensors(), name="table_weights")
        self.weight.grad = None
        grad.zero_()
        self.steps += 1
        self.alltoall_bytes.append(self.lookup.counter.lookup.total)
        self.scoring_bytes.append(self.scoring.bytes_sent)
        self.replica_bytes.append(self._replica_step_bytes())
        self.lookup.counter.reset()
        self.scoring.bytes_sent = 0

    def _weight_sync_tensors(self) -> list[torch.Tensor]:
        """Weights and every per-row optimizer state tensor (averaged in place across replicas)."""
        state = self.optimizer.state.get(self.weight, {})
        return [self.weight.data] + [v for k, v in sorted(state.items()) if torch.is_tensor(v) and v.dim() > 0]

    def _replica_step_bytes(self) -> int:
        """Bytes this rank sent for the replica sync this step (all hops)."""
        if self.replica_sync is None:
            return 0
        step = self.replica_sync.counter.step_end()
        self.replica_cross_rack.append(step.get("bytes/cross_rack", 0))
        return step.get("bytes/total", 0)

    # -- checkpoints ----------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        return {"num_items": self.vocab.num_items, "dim": self.dim, "group_size": self.groups.group_size,
                "replicas": self.groups.num_replicas, "placement": self.groups.placement,
                "row_sharding": self.cfg.row_sharding, "optimizer": self.cfg.optimizer,
                "replica_sync": self.cfg.replica_sync}

    def state_dict(self) -> dict[str, Any]:
        return {"layout": self.layout(), "weight": self.weight.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "steps": self.steps,
                "replica_sync": None if self.replica_sync is None else self.replica_sync.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved, mine = state["layout"], self.layout()
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ConfigError(f"embedding.{key}", value,
                                  f"{saved.get(key)!r} to resume this checkpoint (its 2D table was saved so)")
        with torch.no_grad():
            self.weight.copy_(state["weight"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cfg.optimizer != "adam":  # RowWiseAdagrad keeps its accumulator in fp32 on the weight's device
            for st in self.optimizer.state.values():
                st["sum"] = st["sum"].to(torch.float32)
        self.steps = int(state["steps"])
        if self.replica_sync is not None and state.get("replica_sync") is not None:
            self.replica_sync.load_state_dict(state["replica_sync"])

    def close(self) -> None:
        if self.replica_sync is not None:
            self.replica_sync.close()

    # -- summary.json -----------------------------------------------------------------------------
    def record(self, tokens_per_step: int) -> dict[str, Any]:
        """The `embedding` record of summary.json (this rank's view; rank 0 writes it).

        `tokens_per_step`: ids this rank looks up per step at most (its rows x sequence length)."""
        acct = table_accounting(self.vocab.num_items, self.dim, self.groups.group_size, self.groups.world_size,
                                self.cfg.optimizer, self.cfg.row_sharding, tokens_per_step)
        state_bytes = sum(v.numel() * v.element_size() for st in self.optimizer.state.values()
                          for v in st.values() if torch.is_tensor(v))

        def mean(values: list[int]) -> float:
            return float(sum(values) / len(values)) if values else 0.0

        return {
            **self.layout(),
            "momentum_scale": self.momentum_scale,
            "tp_copies": self.tp,  # the table is copied over the tp ranks of each replica
            "rows_per_rank": int(self.weight.shape[0]),
            "max_rows_per_rank": acct["rows_per_rank"],
            "rows_bound_ceil_items_over_E": math.ceil(self.vocab.num_items / self.groups.group_size),
            "extra_vocab_rows_dense": self.vocab.num_extra,
            "parameter_bytes_per_rank": self.weight.numel() * self.weight.element_size(),
            "optimizer_state_bytes_per_rank": state_bytes,
            "gradient_buffer_bytes_per_rank": self.grad_buffer.numel() * self.grad_buffer.element_size(),
            "accounting": acct,
            "alltoall_bytes_per_step_mean": mean(self.alltoall_bytes),
            "alltoall_bytes_per_step_max": max(self.alltoall_bytes, default=0),
            "alltoall_bound_bytes_per_step": acct["alltoall_bound_bytes_per_step"],
            "scoring_bytes_per_step_mean": mean(self.scoring_bytes),
            "replica_sync_bytes_per_step_mean": mean(self.replica_bytes),
            "replica_sync_cross_rack_bytes_per_step_mean": mean(self.replica_cross_rack),
            "replica_sync": self.cfg.replica_sync,
            "replica_sync_engine": None if self.replica_sync is None else
            f"{self.replica_sync.algorithm_name} {self.replica_sync.ctx.codec.name} sync",
            "steps": self.steps,
        }


class _NoSync:
    """ShardedEmbedding's own replica sync is unused: `TrainerTable.step` syncs the dense shard."""

    def sync_(self, tensors: list[torch.Tensor]) -> None:
        raise RuntimeError("TrainerTable syncs replicas itself")
