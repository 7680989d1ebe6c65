"""Flat all-reduce: the backend's all-reduce over the whole dp group (a ring on gloo), or, with a
codec, the compressed hop (all-gather of payloads, decode-sum) over the whole group: flat has one
hop, so it is compressed whenever a codec is set."""

from __future__ import annotations

import torch
import torch.distributed as dist

from hybridrec.distributed.accounting import ring_allreduce_bytes
from hybridrec.distributed.allreduce.common import ReduceContext, compressed_sum_


def flat_sum_(tensor: torch.Tensor, ctx: ReduceContext, key: str) -> None:
    members = ctx.groups.group_ranks
    if len(members) == 1 and not ctx.compressing:
        return
    if ctx.compressing:
        compressed_sum_(tensor, members, ctx.groups.group, ctx, f"{key}/flat", "flat")
        return
    dist.all_reduce(tensor, group=ctx.groups.group)
    ctx.counter.add_ring("flat", ring_allreduce_bytes(tensor.numel() * tensor.element_size(), len(members)), members)
