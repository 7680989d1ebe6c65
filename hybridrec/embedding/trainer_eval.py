"""Ranking evaluation of a job whose item table is the 2D table: the counterpart of
`hybridrec.eval.ranking.ranks` for `embedding.enabled=true` (pp = 1).

Users are split evenly over the data-parallel ranks (every rank makes the same calls: the lookups
and the scoring are collective inside each sharding group, the decoder inside each tp group; the
tp ranks of a replica count alike and only tp rank 0 writes). Each rank's model returns hidden states; the
last position is scored shard by shard (`distributed_ce.count_above`): every shard counts its
candidate items scoring at least as high as the target, the counts are summed over the sharding
group, and the rank table reaches every rank through one all-reduce over the world. Full logits
are never gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hybridrec.model.sasrec import attention_mask, position_ids, unwrap


def ranks_2d(chunk: torch.nn.Module, table: Any, eval_set: Any, protocols: Sequence[str], batch_size: int, *,
             exclude_history: bool = False, mask_padding_keys: bool = True,
             device: torch.device | None = None) -> dict[str, np.ndarray]:
    """0-based rank of every user's target per protocol (identical on every rank)."""
    device = device or torch.device("cpu")
    model = unwrap(chunk)
    users = eval_set.inputs.shape[0]
    from megatron.core import parallel_state as ps

    world, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    writes = ps.get_tensor_model_parallel_rank() == 0
    per = -(-users // world)
    first = rank * per
    out = torch.zeros(users, len(protocols), dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            extra_w = model.extra_rows()
            for start in range(0, per, batch_size):
                positions = torch.arange(first + start, first + min(per, start + batch_size))
                rows = positions.clamp(max=users - 1)
                inputs = eval_set.inputs[rows].to(device)
                hidden = model(inputs, position_ids(inputs), attention_mask(inputs, mask_padding_keys))[:, -1, :]
                candidates = {name: None if name == "full" else eval_set.negatives[name][rows].to(device)
                              for name in protocols}
                counts = table.count_above(hidden, eval_set.targets[rows].to(device), extra_w, candidates,
                                           inputs if exclude_history else None)
                real = positions < users
                if writes:
                    out[positions[real]] = counts[real].cpu()
    finally:
        model.train(was_training)
    dist.all_reduce(out)
    result = out.numpy()
    return {name: result[:, i] for i, name in enumerate(protocols)}
