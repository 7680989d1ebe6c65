"""Shared pieces of the all-reduce algorithms: the per-call context, point-to-point ring and star
hops over a rack (exact byte counts), and the compressed hop (all-gather payloads, decode-sum).

Compressed hop byte cost: every member receives every other member's payload, so a ring all-gather
sends (n-1) * P bytes per rank for a payload of P bytes (vs 2(n-1)/n * S for a dense ring
all-reduce): compression pays when P < 2S/n, e.g. top-k 1% (P = 0.02 S) or 1-bit (P ~ 0.032 S).

Device-agnostic: every buffer is allocated on the bucket's device (`tensor.new_*`, `*_like`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from hybridrec.distributed.accounting import ByteCounter, ring_allgather_bytes
from hybridrec.distributed.allreduce.groups import CommGroups
from hybridrec.distributed.compression import Codec, encode_with_feedback, pack, unpack
from hybridrec.distributed.compression.base import parts_nbytes
from hybridrec.distributed.compression.none import NoneCodec


@dataclass
class ReduceContext:
    groups: CommGroups
    counter: ByteCounter
    codec: Codec = field(default_factory=NoneCodec)
    error_feedback: bool = True
    compress_all_hops: bool = False
    # error-feedback residuals and codec state per (bucket, hop, column) key; saved in checkpoints
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def compressing(self) -> bool:
        return self.codec.name != "none"


def compressed_sum_(
    tensor: torch.Tensor, members: Sequence[int], group: Any, ctx: ReduceContext, key: str, hop: str
) -> None:
    """Sum `tensor` over `members` by all-gathering encoded payloads and decode-summing them in
    member order (so every member gets bit-identical results)."""
    state = ctx.memory.setdefault(key, {})
    payload = encode_with_feedback(ctx.codec, tensor, state, ctx.error_feedback)
    buffer = pack(payload)
    if len(members) == 1:
        tensor.copy_(ctx.codec.decode(payload).view_as(tensor))
        return
    gathered = [torch.empty_like(buffer) for _ in members]
    dist.all_gather(gathered, buffer, group=group)
    ctx.counter.add_ring(hop, ring_allgather_bytes(buffer.numel(), len(members)), members)
    total = tensor.new_zeros(tensor.numel(), dtype=torch.float32)
    for packed in gathered:
        total += ctx.codec.decode(unpack(packed, ctx.codec, tensor.numel()))
    tensor.copy_(total.view_as(tensor))


def _send(tensor: torch.Tensor, dst: int, group: Any, ctx: ReduceContext, hop: str) -> Any:
    ctx.counter.add(hop, tensor.numel() * tensor.element_size(), dst)
    return dist.isend(tensor.contiguous(), dst, group=group)


def chunk_bounds(numel: int, num_columns: int, rack_size: int) -> list[tuple[int, int]]:
    """Element range of each rack-local rank's owned columns."""
    col_edges = [c * numel // num_columns for c in range(num_columns + 1)]
    return [
        (col_edges[i * num_columns // rack_size], col_edges[(i + 1) * num_columns // rack_size])
        for i in range(rack_size)
    ]


def ring_reduce_scatter_(tensor: torch.Tensor, ctx: ReduceContext, bounds: list[tuple[int, int]]) -> None:
    """Ring reduce-scatter inside the rack: afterwards local rank l holds the rack sum of chunk l."""
    rack = ctx.groups.rack_ranks
    m = len(rack)
    me = rack.index(ctx.groups.rank)
    nxt, prv = rack[(me + 1) % m], rack[(me - 1) % m]
    for step in range(m - 1):
        s_lo, s_hi = bounds[(me - step - 1) % m]
        r_lo, r_hi = bounds[(me - step - 2) % m]
        incoming = tensor.new_empty(r_hi - r_lo)
        reqs = [_send(tensor[s_lo:s_hi], nxt, ctx.groups.rack_group, ctx, "rack_reduce_scatter"),
                dist.irecv(incoming, prv, group=ctx.groups.rack_group)]
        for req in reqs:
            req.wait()
        tensor[r_lo:r_hi] += incoming


def ring_all_gather_(tensor: torch.Tensor, ctx: ReduceContext, bounds: list[tuple[int, int]]) -> None:
    """Ring all-gather inside the rack of the chunks reduced by `ring_reduce_scatter_`."""
    rack = ctx.groups.rack_ranks
    m = len(rack)
    me = rack.index(ctx.groups.rank)
    nxt, prv = rack[(me + 1) % m], rack[(me - 1) % m]
    for step in range(m - 1):
        s_lo, s_hi = bounds[(me - step) % m]
        r_lo, r_hi = bounds[(me - step - 1) % m]
        incoming = tensor.new_empty(r_hi - r_lo)
        reqs = [_send(tensor[s_lo:s_hi], nxt, ctx.groups.rack_group, ctx, "rack_all_gather"),
                dist.irecv(incoming, prv, group=ctx.groups.rack_group)]
        for req in reqs:
            req.wait()
        tensor[r_lo:r_hi] = incoming


def star_reduce_(tensor: torch.Tensor, ctx: ReduceContext, key: str) -> None:
    """Members send to the rack leader, which sums in rank order (payloads if compressing all hops)."""
    groups = ctx.groups
    rack, leader, group = groups.rack_ranks, groups.leader, groups.rack_group
    compress = ctx.compressing and ctx.compress_all_hops
    if groups.rank != leader:
        if compress:
            payload = encode_with_feedback(ctx.codec, tensor, ctx.memory.setdefault(key, {}), ctx.error_feedback)
            _send(pack(payload), leader, group, ctx, "rack_reduce").wait()
        else:
            _send(tensor, leader, group, ctx, "rack_reduce").wait()
        return
    if compress:  # the leader's own contribution goes through the codec too
        own = encode_with_feedback(ctx.codec, tensor, ctx.memory.setdefault(key, {}), ctx.error_feedback)
        tensor.copy_(ctx.codec.decode(own).view_as(tensor))
    nbytes = parts_nbytes(ctx.codec.part_specs(tensor.numel()))
    buffers = [tensor.new_empty(nbytes, dtype=torch.uint8) if compress else torch.empty_like(tensor)
               for _ in rack[1:]]
    reqs = [dist.irecv(buf, src, group=group) for buf, src in zip(buffers, rack[1:])]
    for req, buf in zip(reqs, buffers):
        req.wait()
        tensor += ctx.codec.decode(unpack(buf, ctx.codec, tensor.numel())).view_as(tensor) if compress else buf


def star_broadcast_(tensor: torch.Tensor, ctx: ReduceContext) -> None:
    groups = ctx.groups
    rack, leader, group = groups.rack_ranks, groups.leader, groups.rack_group
    if groups.rank == leader:
        for req in [_send(tensor, dst, group, ctx, "rack_broadcast") for dst in rack[1:]]:
            req.wait()
    else:
        incoming = torch.empty_like(tensor)
        dist.irecv(incoming, leader, group=group).wait()
        tensor.copy_(incoming)
