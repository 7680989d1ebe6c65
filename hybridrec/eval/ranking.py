"""Ranking evaluation of the recommender under any tp x pp x dp layout, without gathering logits.

For each user the model scores the next item at the last input position. Under tensor parallelism
each rank holds the logits of one vocabulary shard; the rank of the target is the number of
candidate items scoring at least as high (pessimistic ties), so each shard counts its own items above the target and
the counts are summed over the tp group (the target's score itself is shared by a sum of one
non-zero entry per row). Only the last pipeline stage computes; users are split over dp ranks; the
final rank table reaches every rank through one all-reduce over the world.

Device-agnostic: scores, counts and the rank table stay on the model's device (`device`, default
`backend.current()`); only the finished table is copied to the host for numpy.

Protocols: `full` (all items 1..num_items; history excluded only if asked), its two fixed conventions
`full_incl` / `full_excl` (the input window kept / excluded, whatever `exclude_history` says) and sampled
ones (`uni100`, `pop100`: the target against the fixed negatives stored with the data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from hybridrec.model.sasrec import attention_mask, position_ids, unwrap

# full ranking with the input window included / excluded, independent of `exclude_history`
FULL_VARIANTS = {"full_incl": False, "full_excl": True}


@dataclass(frozen=True)
class Shard:
    """The vocabulary ids [start, start + size) held by this tp rank."""

    start: int
    size: int


def target_scores_local(scores: torch.Tensor, shard: Shard, targets: torch.Tensor) -> torch.Tensor:
    """Score of each row's target if it lies in this shard, else 0 (sum over shards = the score)."""
    local = targets - shard.start
    inside = (local >= 0) & (local < shard.size)
    picked = scores.gather(1, local.clamp(0, shard.size - 1).unsqueeze(1)).squeeze(1)
    return torch.where(inside, picked, torch.zeros_like(picked))


def count_above_full(scores: torch.Tensor, shard: Shard, target_scores: torch.Tensor, num_items: int,
                     history: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: items 1..num_items of this shard (other than the row's target) scoring at least as high
    as the target (ties count against the target, as in `hybridrec.eval.metrics`).

    With `history` (b, s) item ids (0 = padding), the user's history items are not counted.
    """
    ids = torch.arange(shard.start, shard.start + shard.size, device=scores.device)
    valid = ((ids >= 1) & (ids <= num_items)).unsqueeze(0)
    if targets is not None:
        valid = valid & (ids.unsqueeze(0) != targets.unsqueeze(1))
    above = (scores >= target_scores.unsqueeze(1)) & valid
    if history is not None:
        local = history - shard.start
        inside = (local >= 0) & (local < shard.size) & (history > 0)
        # ids outside this shard go to a spare last column, so they never clear a real one
        seen = torch.zeros(above.shape[0], shard.size + 1, dtype=torch.bool, device=above.device)
        seen.scatter_(1, torch.where(inside, local, torch.full_like(local, shard.size)), True)
        above &= ~seen[:, :-1]
    return above.sum(dim=1)


def count_above_sampled(scores: torch.Tensor, shard: Shard, target_scores: torch.Tensor,
                        candidates: torch.Tensor) -> torch.Tensor:
    """Per row: how many of the row's candidate ids in this shard score at least as high as the target."""
    local = candidates - shard.start
    inside = (local >= 0) & (local < shard.size)
    picked = scores.gather(1, local.clamp(0, shard.size - 1))
    return ((picked >= target_scores.unsqueeze(1)) & inside).sum(dim=1)


@dataclass(frozen=True)
class EvalSet:
    """Users to rank: inputs (U, s) int64 left-padded histories, targets (U,), and per sampled
    protocol the candidate negatives (U, n)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    negatives: dict[str, torch.Tensor]


@contextlib.contextmanager
def last_position_only(chunks: Sequence[torch.nn.Module]) -> Iterator[None]:
    """While active, chunks that compute logits keep only the last position's hidden state, so the
    output layer runs on one position per user."""
    handles = []
    for chunk in chunks:
        model = unwrap(chunk)
        if getattr(model, "post_process", False):
            handles.append(model.decoder.register_forward_hook(lambda _m, _i, out: out[-1:]))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def ranks(chunks: Sequence[torch.nn.Module], eval_set: EvalSet, protocols: Sequence[str], num_items: int,
          batch_size: int, *, exclude_history: bool = False, mask_padding_keys: bool = True,
          device: torch.device | None = None) -> dict[str, np.ndarray]:
    """0-based rank of every user's target per protocol (identical on every rank of the job)."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from hybridrec.distributed import backend

    device = device or backend.current().torch_device
    tp_group, tp_size = ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_world_size()
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    pp_size = ps.get_pipeline_model_parallel_world_size()
    vpp = len(chunks)
    users = eval_set.inputs.shape[0]
    per_dp = -(-users // dp_size)
    # interleaved schedules want the micro-batch count divisible by pp; otherwise one per call
    n_mb = pp_size if vpp > 1 else 1
    rows_per_call = batch_size * n_mb
    table = torch.zeros(per_dp * dp_size, len(protocols), dtype=torch.int64, device=device)
    first, stop = dp_rank * per_dp, min(users, (dp_rank + 1) * per_dp)
    writes = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0

    def forward_step(data_iterator, model):
        rows = next(data_iterator)
        inputs = eval_set.inputs[rows].to(device)
        logits = model(inputs, position_ids(inputs), attention_mask(inputs, mask_padding_keys))

        def loss_func(output: torch.Tensor):
            scores = output[:, -1, :].float()
            shard = Shard(start=ps.get_tensor_model_parallel_rank() * scores.shape[1], size=scores.shape[1])
            targets = eval_set.targets[rows].to(device)
            target = target_scores_local(scores, shard, targets)
            if tp_size > 1:
                dist.all_reduce(target, group=tp_group)
            counts = []
            for name in protocols:
                if name == "full" or name in FULL_VARIANTS:
                    history = inputs if FULL_VARIANTS.get(name, exclude_history) else None
                    counts.append(count_above_full(scores, shard, target, num_items, history, targets))
                else:
                    counts.append(count_above_sampled(scores, shard, target, eval_set.negatives[name][rows].to(device)))
            stacked = torch.stack(counts, dim=1)
            if tp_size > 1:
                dist.all_reduce(stacked, group=tp_group)
            return scores.new_zeros(()), {"rows": rows, "counts": stacked}

        return logits, loss_func

    fb = get_forward_backward_func()
    was_training = [chunk.training for chunk in chunks]
    for chunk in chunks:
        chunk.eval()
    try:
        with torch.no_grad(), last_position_only(chunks):
            for call_start in range(first, max(stop, first), rows_per_call):
                rows_all = torch.arange(call_start, call_start + rows_per_call).clamp(max=stop - 1)
                micro = [rows_all[i * batch_size:(i + 1) * batch_size] for i in range(n_mb)]
                iterators = [iter(micro) for _ in chunks] if vpp > 1 else iter(micro)
                out = fb(forward_step_func=forward_step, data_iterator=iterators,
                         model=list(chunks) if vpp > 1 else chunks[0], num_microbatches=n_mb,
                         seq_length=eval_set.inputs.shape[1], micro_batch_size=batch_size, forward_only=True)
                if writes:
                    for item in out:
                        table[item["rows"].to(device)] = item["counts"]
    finally:
        for chunk, mode in zip(chunks, was_training, strict=True):
            chunk.train(mode)
    dist.all_reduce(table)
    result = table[:users].cpu().numpy()
    return {name: result[:, i] for i, name in enumerate(protocols)}


def hit_ndcg_table(rank_by_protocol: dict[str, np.ndarray], ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """{protocol: {"HR@k": .., "NDCG@k": ..}} via hybridrec.eval.metrics."""
    from hybridrec.eval.metrics import metrics_at

    return {name: metrics_at(r, list(ks)) for name, r in rank_by_protocol.items()}
