"""Pure planning of the lookup all-to-all and its byte arithmetic (no communication here).

A rank holding `ids` for a lookup sends each (deduplicated) id to the rank of its sharding group
that owns the row, receives the embeddings back, and in backward sends the embedding gradients
the same way. `plan_exchange` computes what goes where; `exchange_bytes` is the byte count that the
theory predicts for one lookup (forward + backward), which the tests compare with the bytes the
process code actually handed to `all_to_all_single`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch

from hybridrec.embedding.groups import RowSharding

ID_BYTES = 8  # ids travel as int64
COUNT_BYTES = 8  # split sizes travel as int64


@dataclass
class ExchangePlan:
    """What one rank sends for one lookup: unique ids sorted by owner, and how to undo it."""

    send_ids: torch.Tensor  # (U,) int64, grouped by owner position 0..E-1
    send_counts: torch.Tensor  # (E,) int64
    order: torch.Tensor  # (U,) positions in the unique-id list of send_ids
    inverse: torch.Tensor  # (n,) index into the unique-id list for every looked-up id


def plan_exchange(ids: torch.Tensor, sharding: RowSharding, dedup: bool = True) -> ExchangePlan:
    """Group the flat ids of one lookup by owner; duplicates are sent once when `dedup`."""
    flat = ids.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= sharding.num_rows):
        raise IndexError(f"embedding ids must lie in [0, {sharding.num_rows}); got "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    if dedup:
        unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
    else:
        unique, inverse = flat, torch.arange(flat.numel(), dtype=torch.int64, device=flat.device)
    owner = sharding.owner(unique)
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=sharding.num_shards).to(torch.int64)
    return ExchangePlan(unique[order], counts, order, inverse)


@dataclass
class LookupBytes:
    """Bytes one rank sends to *other* ranks for one lookup (self-sends are memory copies)."""

    counts: int = 0  # forward: split sizes
    ids: int = 0  # forward: ids to their owners
    embeddings: int = 0  # forward: served rows back to the requesters
    gradients: int = 0  # backward: embedding gradients to the owners

    @property
    def total(self) -> int:
        return self.counts + self.ids + self.embeddings + self.gradients

    def __iadd__(self, other: LookupBytes) -> Self:
        self.counts += other.counts
        self.ids += other.ids
        self.embeddings += other.embeddings
        self.gradients += other.gradients
        return self


def exchange_bytes(send_counts: list[list[int]], me: int, dim: int, itemsize: int,
                   grad_itemsize: int | None = None) -> LookupBytes:
    """Theory for rank `me` of a sharding group: `send_counts[p][q]` = ids p sends to q.

    forward ids: sum_q!=me send[me][q] * 8; forward embeddings: rank me serves the ids the others
    sent it, sum_p!=me send[p][me] * dim * itemsize; backward gradients go the way of the ids:
    sum_q!=me send[me][q] * dim * grad_itemsize; plus (E-1) int64 split sizes.
    """
    e = len(send_counts)
    grad_itemsize = itemsize if grad_itemsize is None else grad_itemsize
    to_others = sum(send_counts[me][q] for q in range(e) if q != me)
    from_others = sum(send_counts[p][me] for p in range(e) if p != me)
    if e == 1:
        return LookupBytes()
    return LookupBytes(counts=(e - 1) * COUNT_BYTES, ids=to_others * ID_BYTES,
                       embeddings=from_others * dim * itemsize, gradients=to_others * dim * grad_itemsize)
