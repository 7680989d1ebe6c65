"""Tied output scoring against a row-sharded item table: softmax cross entropy and ranking counts
computed shard by shard inside the embedding (sharding) group, never gathering full logits.

The E ranks of a sharding group train on *different* rows of the batch (they are data-parallel
replicas of the dense model) but each holds only 1/E of the item rows. So each rank all-gathers
the group's hidden states (E * n x h, small next to the table), scores them against its own
columns, and the group reduces three per-row numbers: the max logit (MAX), the sum of
exp(logit - max) (SUM) and the target's logit (SUM; exactly one shard owns it). The loss of every
row of the group is then known on every rank; each keeps its own n rows. Backward all-gathers the
n upstream gradients, forms softmax - onehot on the local columns, and

* d hidden = (softmax - onehot) @ W_local summed over the shards: a reduce-scatter hands each rank
  the gradient of its own rows;
* d W_local = (softmax - onehot)^T @ hidden_all: the local rows' gradient from the whole group's
  rows. It is scaled by 1/E and added into the table's dense gradient buffer (the table's
  convention, see `sharded.py`: gradient of the mean of the ranks' losses after the replica
  average); the extra columns (`extra`, the non-item vocabulary rows that shard 0 scores, owned
  by the dense model and averaged by its data-parallel reduction) get the plain sum.

Columns: `ShardColumns` maps a global vocabulary id to this shard's column (or -1). Evaluation
(`count_above`) scores in the same way and counts, per shard, the candidates scoring at least as
high as the target (pessimistic ties, as `hybridrec.eval.ranking`), then sums the counts over the
group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class ShardColumns:
    """This shard's scored columns: item rows `item_ids` (global vocabulary ids), then, when
    `extra_ids` is not None, the extra vocabulary ids (padding etc.) scored on this shard only."""

    item_ids: torch.Tensor  # (R,) int64 global vocabulary ids of the local item rows
    extra_ids: torch.Tensor | None  # (X,) int64 or None
    vocab_size: int

    def __post_init__(self) -> None:
        ids = self.item_ids if self.extra_ids is None else torch.cat([self.item_ids, self.extra_ids])
        self.ids = ids
        self._column = torch.full((self.vocab_size,), -1, dtype=torch.int64)
        self._column[ids] = torch.arange(ids.numel(), dtype=torch.int64)

    def column(self, ids: torch.Tensor) -> torch.Tensor:
        """Column of each global id on this shard, -1 where another shard owns it."""
        return self._column.to(ids.device)[ids]


@dataclass
class ScoringGroup:
    """The collectives' context: my position in a sharding group of `size` ranks."""

    process_group: object
    size: int
    position: int
    bytes_sent: int = 0  # to other ranks, by the scoring collectives (all-gathers, reduce-scatter)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous(), group=self.process_group)
        self.bytes_sent += (self.size - 1) * tensor.numel() * tensor.element_size()
        return torch.cat(parts)

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(tensor, op=op, group=self.process_group)
            self.bytes_sent += 2 * (self.size - 1) * tensor.numel() * tensor.element_size() // self.size
        return tensor

    def reduce_scatter(self, tensor: torch.Tensor) -> torch.Tensor:
        """(E * n, ...) summed over the group -> my (n, ...) rows."""
        if self.size == 1:
            return tensor
        parts = list(tensor.contiguous().chunk(self.size))
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=self.process_group)
        self.bytes_sent += (self.size - 1) * out.numel() * out.element_size()
        return out

    def mine(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        return rows[self.position * n:(self.position + 1) * n]


def _local_logits(hidden_all: torch.Tensor, item_w: torch.Tensor, extra_w: torch.Tensor | None) -> torch.Tensor:
    weight = item_w if extra_w is None else torch.cat([item_w, extra_w])
    return hidden_all.float() @ weight.float().t()


class _ShardedSoftmaxCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, item_w, extra_w, labels, columns, group, item_grad):
        n = hidden.shape[0]
        hidden_all = group.all_gather(hidden.detach())
        labels_all = group.all_gather(labels)
        logits = _local_logits(hidden_all, item_w.detach(), None if extra_w is None else extra_w.detach())
        if logits.shape[1]:
            row_max = logits.max(dim=1).values
        else:
            row_max = torch.full((logits.shape[0],), float("-inf"))
        group.all_reduce(row_max, dist.ReduceOp.MAX)
        exp = torch.exp(logits - row_max.unsqueeze(1))
        sum_exp = group.all_reduce(exp.sum(dim=1))
        col = columns.column(labels_all)
        owned = col >= 0
        picked = logits.gather(1, col.clamp(min=0).unsqueeze(1)).squeeze(1) if logits.shape[1] else row_max * 0
        target = group.all_reduce(torch.where(owned, picked, torch.zeros_like(picked)))
        loss_all = torch.log(sum_exp) + row_max - target
        ctx.save_for_backward(hidden_all, exp / sum_exp.unsqueeze(1), col)
        ctx.weights = (item_w.detach(), None if extra_w is None else extra_w.detach())
        ctx.group, ctx.n, ctx.item_grad, ctx.extra = group, n, item_grad, extra_w is not None
        return group.mine(loss_all, n).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        hidden_all, softmax, col = ctx.saved_tensors
        group = ctx.group
        g_all = group.all_gather(grad_loss.contiguous().float())
        d = softmax * g_all.unsqueeze(1)
        owned = torch.nonzero(col >= 0).squeeze(1)
        d[owned, col[owned]] -= g_all[owned]
        item_w, extra_w = ctx.weights
        rows = item_w.shape[0]
        weight = item_w if extra_w is None else torch.cat([item_w, extra_w])
        grad_hidden = group.reduce_scatter(d @ weight.float()).to(hidden_all.dtype)
        grad_weight = d.t() @ hidden_all.float()
        ctx.item_grad.add_(grad_weight[:rows].to(ctx.item_grad.dtype), alpha=1.0 / group.size)
        grad_extra = grad_weight[rows:].to(extra_w.dtype) if ctx.extra else None
        return grad_hidden, None, grad_extra, None, None, None, None


def sharded_softmax_ce(hidden: torch.Tensor, item_w: torch.Tensor, extra_w: torch.Tensor | None,
                       labels: torch.Tensor, columns: ShardColumns, group: ScoringGroup,
                       item_grad: torch.Tensor) -> torch.Tensor:
    """Per-row cross entropy (n,) of this rank's rows `hidden` (n, h) with targets `labels` (n,),
    over every vocabulary id of the group's shards. Collective over the sharding group.

    Gradients: to `hidden` and `extra_w` through autograd; the local item rows' gradient (scaled
    1/E) is *added into* `item_grad` (R, h), the table's dense gradient buffer."""
    return _ShardedSoftmaxCE.apply(hidden, item_w, extra_w, labels, columns, group, item_grad)


@torch.no_grad()
def count_above(hidden: torch.Tensor, item_w: torch.Tensor, extra_w: torch.Tensor | None,
                targets: torch.Tensor, columns: ShardColumns, group: ScoringGroup, num_items: int,
                candidates: dict[str, torch.Tensor | None], history: torch.Tensor | None = None) -> torch.Tensor:
    """(n, len(candidates)) for this rank's rows: how many candidate items score at least as high as
    the target. `candidates[name]`: (n, c) sampled ids, or None for full ranking over 1..num_items
    (minus the target, and minus `history` (n, s) ids when given). Collective over the group."""
    n = hidden.shape[0]
    hidden_all = group.all_gather(hidden)
    targets_all = group.all_gather(targets)
    scores = _local_logits(hidden_all, item_w, extra_w)
    col = columns.column(targets_all)
    owned = col >= 0
    picked = scores.gather(1, col.clamp(min=0).unsqueeze(1)).squeeze(1)
    target = group.all_reduce(torch.where(owned, picked, torch.zeros_like(picked)))
    ids = columns.ids.to(scores.device)
    counts = []
    for cand in candidates.values():
        if cand is None:
            valid = ((ids >= 1) & (ids <= num_items)).unsqueeze(0) & (ids.unsqueeze(0) != targets_all.unsqueeze(1))
            above = (scores >= target.unsqueeze(1)) & valid
            if history is not None:
                hist = group.all_gather(history)
                hcol = columns.column(hist)
                hcol = torch.where((hcol >= 0) & (hist > 0), hcol, torch.full_like(hcol, scores.shape[1]))
                seen = torch.zeros(scores.shape[0], scores.shape[1] + 1, dtype=torch.bool)
                seen.scatter_(1, hcol, True)
                above &= ~seen[:, :-1]
            counts.append(above.sum(dim=1))
        else:
            cand_all = group.all_gather(cand)
            ccol = columns.column(cand_all)
            got = scores.gather(1, ccol.clamp(min=0))
            counts.append(((got >= target.unsqueeze(1)) & (ccol >= 0)).sum(dim=1))
    stacked = group.all_reduce(torch.stack(counts, dim=1))
    return group.mine(stacked, n)
