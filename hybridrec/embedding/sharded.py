"""A row-sharded item embedding table for 2D sparse parallelism (process code over torch.distributed).

Owns the communication of the layout computed in `groups.py` (Zhang et al., arXiv:2508.03854):

* lookup: ids -> owners by `all_to_all_single` inside the sharding group of E ranks, embeddings
  back by a second `all_to_all_single` (gloo implements uneven `all_to_all_single` on CPU: checked
  with torch 2.13, so no fallback to send/recv is needed);
* backward through the same exchange in reverse (a custom autograd Function); the table's
  gradient is a sparse COO tensor over the rows this rank owns, so nothing dense of the table size
  is ever allocated for gradients;
* replica synchronisation across the M = world / E copies, in one of two modes:
  ``grad``   average the row gradients of the union of touched rows before the optimizer: the
             result is exactly the unsharded table trained on the global batch;
  ``weights`` the paper's scheme: each sharding group steps its own optimizer on its group's
             gradient, then the touched rows (and their AdaGrad accumulators) are averaged across
             the replicas. The momentum-scaled row-wise AdaGrad compensates the accumulator growth
             this causes (see rowwise_adagrad.py).
  Both go through a `ReplicaSync` hook (`sync_(tensors)` averages in place over the replica
  group): plain all-reduce by default; the topology-aware `hybridrec.distributed.grad_sync.GradSync`
  has the same method and plugs in unchanged so the replica sync can be rack-aware/compressed.

Gradient convention: after `finish_grad_sync()` the gradient is that of the mean of the ranks'
losses (what data-parallel averaging gives the dense parameters): each owner scales received
gradients by 1/E and the replica average divides by M.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from hybridrec.embedding.exchange import COUNT_BYTES, ID_BYTES, LookupBytes, plan_exchange
from hybridrec.embedding.groups import EmbeddingGroups, RowSharding
from hybridrec.errors import ConfigError

REPLICA_SYNC_MODES = ("grad", "weights")
INIT_CHUNK_ROWS = 1 << 16


class ReplicaSync(Protocol):
    """Averages tensors in place across the replica group (GradSync satisfies this)."""

    def sync_(self, tensors: list[torch.Tensor]) -> None: ...


class AllReduceMean:
    """The default replica sync: plain all-reduce (sum) then divide by the group size."""

    def __init__(self, process_group, group_size: int):
        self.process_group, self.group_size = process_group, group_size

    def sync_(self, tensors: list[torch.Tensor]) -> None:
        for tensor in tensors:
            dist.all_reduce(tensor, group=self.process_group)
            tensor.div_(self.group_size)


@dataclass
class EmbeddingProcessGroups:
    sharding: object  # torch ProcessGroup of my sharding group
    replica: object  # torch ProcessGroup of my replica group


def create_process_groups(groups: EmbeddingGroups, rank: int, tp: int = 1) -> EmbeddingProcessGroups:
    """Create every sharding and replica group (all ranks, same order); return mine.

    `rank` is global; under tp each tp index gets its own copy of the groups (`across_tp`)."""
    from hybridrec.embedding.groups import across_tp

    mine_shard = mine_replica = None
    for ranks in across_tp(groups.sharding_groups(), tp):
        pg = dist.new_group(ranks)
        if rank in ranks:
            mine_shard = pg
    for ranks in across_tp(groups.replica_groups(), tp):
        pg = dist.new_group(ranks)
        if rank in ranks:
            mine_replica = pg
    return EmbeddingProcessGroups(mine_shard, mine_replica)


def init_rows(global_rows: np.ndarray, num_rows: int, dim: int, std: float, seed: int) -> torch.Tensor:
    """Layout-independent init: row r gets the same values whatever E and sharding scheme.

    The table is generated in chunks of 65,536 rows, chunk c from a generator seeded by (seed, c);
    only the chunks holding `global_rows` are generated.
    """
    out = torch.empty(len(global_rows), dim)
    chunk_of = global_rows // INIT_CHUNK_ROWS
    for chunk in np.unique(chunk_of):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(chunk))
        start = int(chunk) * INIT_CHUNK_ROWS
        rows = min(INIT_CHUNK_ROWS, num_rows - start)
        values = torch.randn(rows, dim, generator=gen) * std
        where = np.nonzero(chunk_of == chunk)[0]
        out[torch.from_numpy(where)] = values[torch.from_numpy(global_rows[where] - start)]
    return out


@dataclass
class ExchangeCounter:
    """Bytes this rank handed to collectives for other ranks, by phase; reset per step."""

    lookup: LookupBytes = field(default_factory=LookupBytes)
    replica_ids: int = 0  # all-gather of touched row ids (padded) before the replica sync
    replica_values: int = 0  # size of the buffers passed to the replica all-reduce

    def reset(self) -> None:
        self.lookup, self.replica_ids, self.replica_values = LookupBytes(), 0, 0


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, table: ShardedEmbedding) -> torch.Tensor:
        plan = plan_exchange(ids, table.sharding, table.dedup)
        recv_counts = table._exchange_counts(plan.send_counts)
        recv_ids = table._all_to_all(plan.send_ids, recv_counts, plan.send_counts)
        local = table.sharding.local_index(recv_ids)
        served = weight.detach()[local]
        rows = table._all_to_all(served, plan.send_counts, recv_counts)
        unique_rows = torch.empty_like(rows)
        unique_rows[plan.order] = rows
        me = table.shard_rank
        others_send = int(plan.send_counts.sum() - plan.send_counts[me])
        others_recv = int(recv_counts.sum() - recv_counts[me])
        if table.sharding.num_shards > 1:
            table.counter.lookup += LookupBytes(counts=(table.sharding.num_shards - 1) * COUNT_BYTES,
                                                ids=others_send * ID_BYTES,
                                                embeddings=others_recv * table.dim * weight.element_size())
        ctx.table, ctx.plan, ctx.recv_counts, ctx.local = table, plan, recv_counts, local
        ctx.num_ids, ctx.others_send = plan.inverse.numel(), others_send
        return unique_rows[plan.inverse].reshape(*ids.shape, table.dim)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, plan = ctx.table, ctx.plan
        grad_out = grad_out.reshape(ctx.num_ids, table.dim).contiguous()
        grad_unique = grad_out.new_zeros(plan.order.numel(), table.dim)
        grad_unique.index_add_(0, plan.inverse, grad_out)
        grad_served = table._all_to_all(grad_unique[plan.order], ctx.recv_counts, plan.send_counts)
        if table.sharding.num_shards > 1:
            table.counter.lookup += LookupBytes(gradients=ctx.others_send * table.dim * grad_out.element_size())
        grad_served = grad_served / table.sharding.num_shards
        grad_weight = torch.sparse_coo_tensor(ctx.local.unsqueeze(0), grad_served,
                                              size=(table.local_rows, table.dim), check_invariants=False)
        return grad_weight, None, None


class ShardedEmbedding(torch.nn.Module):
    """This rank's row shard of a `num_rows` x `dim` table in a 2D sparse-parallel layout."""

    def __init__(self, num_rows: int, dim: int, groups: EmbeddingGroups, rank: int,
                 process_groups: EmbeddingProcessGroups | None, row_scheme: str = "modulo",
                 dedup: bool = True, replica_sync_mode: str = "grad", init_std: float = 0.02,
                 seed: int = 0, layout_independent_init: bool = True,
                 replica_sync: ReplicaSync | None = None):
        super().__init__()
        if replica_sync_mode not in REPLICA_SYNC_MODES:
            raise ConfigError("embedding.replica_sync", replica_sync_mode, f"one of {REPLICA_SYNC_MODES}")
        if dim < 1:
            raise ConfigError("embedding.dim", dim, "a positive integer")
        self.num_rows, self.dim, self.groups, self.rank = num_rows, dim, groups, rank
        self.sharding = RowSharding(num_rows, groups.group_size, row_scheme)
        self.shard_rank = groups.shard_rank(rank)
        self.local_rows = self.sharding.shard_rows(self.shard_rank)
        self.dedup, self.replica_sync_mode = dedup, replica_sync_mode
        self.pgs = process_groups
        self.counter = ExchangeCounter()
        if layout_independent_init:
            values = init_rows(self.global_rows(), num_rows, dim, init_std, seed)
        else:  # fast init for benchmarks: only this shard's rows, seeded by (seed, shard)
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + self.shard_rank)
            values = torch.empty(self.local_rows, dim).normal_(0.0, init_std, generator=gen)  # one buffer
        self.weight = torch.nn.Parameter(values)
        m = groups.num_replicas
        if replica_sync is None and m > 1:
            replica_sync = AllReduceMean(process_groups.replica, m)
        self.replica_sync = replica_sync

    def global_rows(self) -> np.ndarray:
        return self.sharding.global_rows(self.shard_rank)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of `ids` (any shape, global row ids) -> ids.shape + (dim,)."""
        return _ShardedLookup.apply(self.weight, ids, self)

    # --- communication helpers (collectives inside my sharding group) -------------------------
    def _exchange_counts(self, send_counts: torch.Tensor) -> torch.Tensor:
        if self.sharding.num_shards == 1:
            return send_counts.clone()
        recv = torch.empty_like(send_counts)
        dist.all_to_all_single(recv, send_counts, group=self.pgs.sharding)
        return recv

    def _all_to_all(self, send: torch.Tensor, recv_counts: torch.Tensor,
                    send_counts: torch.Tensor) -> torch.Tensor:
        if self.sharding.num_shards == 1:
            return send.clone()
        out = send.new_empty((int(recv_counts.sum()), *send.shape[1:]))
        dist.all_to_all_single(out, send.contiguous(), recv_counts.tolist(), send_counts.tolist(),
                               group=self.pgs.sharding)
        return out

    # --- replica synchronisation --------------------------------------------------------------
    def local_grad_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique local rows, their gradient rows) from the accumulated sparse gradient."""
        grad = self.weight.grad
        if grad is None:
            return self.weight.new_empty(0, dtype=torch.int64), self.weight.new_empty(0, self.dim)
        if not grad.is_sparse:
            raise RuntimeError("ShardedEmbedding expects a sparse gradient on its weight")
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()

    def _union_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Sorted union of the local rows touched on any replica (all-gather of padded ids)."""
        m = self.groups.num_replicas
        count = rows.new_full((1,), rows.numel(), dtype=torch.int64)
        counts = [torch.empty_like(count) for _ in range(m)]
        dist.all_gather(counts, count, group=self.pgs.replica)
        longest = max(int(c) for c in counts)
        padded = rows.new_full((longest,), -1, dtype=torch.int64)
        padded[: rows.numel()] = rows
        gathered = [torch.empty_like(padded) for _ in range(m)]
        dist.all_gather(gathered, padded, group=self.pgs.replica)
        self.counter.replica_ids += COUNT_BYTES + longest * ID_BYTES
        union = torch.unique(torch.cat(gathered))
        return union[union >= 0]

    def finish_grad_sync(self) -> None:
        """``grad`` mode: replace weight.grad by the replica average over the union of touched rows."""
        if self.replica_sync_mode != "grad" or self.groups.num_replicas == 1:
            return
        rows, values = self.local_grad_rows()
        union = self._union_rows(rows)
        buffer = self.weight.new_zeros(union.numel(), self.dim)
        buffer[torch.searchsorted(union, rows)] = values
        self.counter.replica_values += buffer.numel() * buffer.element_size()
        self.replica_sync.sync_([buffer])
        self.weight.grad = torch.sparse_coo_tensor(union.unsqueeze(0), buffer,
                                                   size=(self.local_rows, self.dim),
                                                   check_invariants=False).coalesce()

    @torch.no_grad()
    def sync_replica_weights(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """``weights`` mode, after the optimizer step: average touched rows (and accumulators)."""
        if self.replica_sync_mode != "weights" or self.groups.num_replicas == 1:
            return
        rows, _ = self.local_grad_rows()
        union = self._union_rows(rows)
        tensors = [self.weight.data[union]]
        state = optimizer.state.get(self.weight, {}) if optimizer is not None else {}
        if "sum" in state:
            tensors.append(state["sum"][union].unsqueeze(1))
        self.counter.replica_values += sum(t.numel() * t.element_size() for t in tensors)
        self.replica_sync.sync_(tensors)
        self.weight.data.index_copy_(0, union, tensors[0])
        if "sum" in state:
            state["sum"].index_copy_(0, union, tensors[1].squeeze(1))


def topology_aware_replica_sync(groups: EmbeddingGroups, rack_map, rank: int, **grad_sync_kwargs):
    """A `hybridrec.distributed.grad_sync.GradSync` over my replica group (rack-aware, optionally compressed).

    Collective over the world (every rank must call it, in the same order). Error feedback is off
    by default: the replica buffers hold a different set of rows every step, so a residual kept per
    bucket position would be added to the wrong rows. GradSync caches one bucket plan per buffer
    size; with row-sparse buffers that cache grows with the number of distinct sizes seen.
    """
    from hybridrec.distributed.allreduce.groups import build_comm_groups
    from hybridrec.distributed.grad_sync import GradSync

    grad_sync_kwargs.setdefault("error_feedback", False)
    comm = build_comm_groups(groups.replica_groups(), rack_map, rank)
    return GradSync(comm, **grad_sync_kwargs)
