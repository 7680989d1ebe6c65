"""Per-rank memory and traffic accounting for a 2D sparse-parallel embedding table (pure arithmetic).

`embedding_memory(...)` says, for one rank, how many bytes the table shard, the row-wise AdaGrad
state, the lookup exchange buffers of one step and the replica-sync buffers take, and how many
bytes the step's all-to-all sends. Lookup figures are for n = batch_per_rank * ids_per_example
ids per rank without deduplication (an upper bound; dedup only lowers them) and ids spread evenly
over the owners (a fraction (E-1)/E of them remote); they match what `sharded.py` allocates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hybridrec.embedding.exchange import COUNT_BYTES, ID_BYTES
from hybridrec.embedding.groups import EmbeddingGroups, RowSharding

ACCUMULATOR_BYTES = 4  # row-wise AdaGrad keeps one fp32 per row


@dataclass(frozen=True)
class EmbeddingMemory:
    """Bytes per rank; `*_bytes_per_step` are traffic, the rest resident or per-step buffers."""

    group_size: int
    num_replicas: int
    shard_rows: int
    parameters: int  # shard_rows * dim * itemsize
    optimizer_state: int  # shard_rows * 4 (one fp32 accumulator per row)
    elementwise_adagrad_state: int  # for comparison: what per-element AdaGrad would need
    lookup_forward: int  # ids sent + received, rows served + received, output activation
    lookup_backward: int  # gradient of the output, per-unique, exchanged, sparse gradient (idx + rows)
    replica_sync: int  # union row ids gathered from M replicas + dense buffer of union rows
    alltoall_bytes_per_step: int  # sent to other ranks: counts + ids + embeddings + gradients
    replica_allreduce_bytes_per_step: int  # size of the buffer given to the replica all-reduce

    @property
    def resident(self) -> int:
        return self.parameters + self.optimizer_state

    @property
    def peak_step(self) -> int:
        """Resident + the larger of the forward/backward buffers held at once + replica sync."""
        return (self.resident + self.lookup_forward + max(self.lookup_backward, self.replica_sync))

    def as_dict(self) -> dict:
        return {**asdict(self), "resident": self.resident, "peak_step": self.peak_step}


def embedding_memory(num_rows: int, dim: int, group_size: int, world_size: int, batch_per_rank: int,
                     ids_per_example: int, itemsize: int = 4, row_scheme: str = "modulo",
                     replica_sync: str = "grad") -> EmbeddingMemory:
    """Accounting for one rank of a `num_rows` x `dim` table with embedding-parallel size E."""
    groups = EmbeddingGroups.build(world_size, group_size)
    e, m = groups.group_size, groups.num_replicas
    shard_rows = RowSharding(num_rows, e, row_scheme).max_shard_rows()
    n = batch_per_rank * ids_per_example
    row = dim * itemsize
    remote = n * (e - 1) // e
    forward = 2 * n * ID_BYTES + 3 * n * row
    backward = 3 * n * row + n * (ID_BYTES + row)
    union = min(shard_rows, m * n) if m > 1 else 0
    sync_values = union * (row + (ACCUMULATOR_BYTES if replica_sync == "weights" else 0))
    sync = (m * n * ID_BYTES + sync_values) if m > 1 else 0
    alltoall = ((e - 1) * COUNT_BYTES + remote * (ID_BYTES + 2 * row)) if e > 1 else 0
    return EmbeddingMemory(
        group_size=e, num_replicas=m, shard_rows=shard_rows,
        parameters=shard_rows * row, optimizer_state=shard_rows * ACCUMULATOR_BYTES,
        elementwise_adagrad_state=shard_rows * dim * 4,
        lookup_forward=forward, lookup_backward=backward, replica_sync=sync,
        alltoall_bytes_per_step=alltoall, replica_allreduce_bytes_per_step=sync_values,
    )


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"
