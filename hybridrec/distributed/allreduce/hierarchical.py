"""Rack-then-global all-reduce, two variants (both correct for uneven racks and any rank order):

- `leader`: members send their bucket to the rack leader (lowest rank of the rack), leaders
  all-reduce across racks, leaders send the result back. Cross-rack: each leader sends
  2(R-1)/R * S; intra-rack: S per member, (m-1) S from the leader.
- `reduce_scatter`: ring reduce-scatter inside the rack (each rank ends with the rack sum of its
  shard columns), all-reduce of each shard column across racks by its owners, ring all-gather
  inside the rack. Cross-rack: 2(R-1)/R * S/P per column owner and column; intra: 2(m-1)/m * S.

Both send 2(R-1) * S across racks in total (R racks, S bytes), vs the flat ring's
(#ring edges joining two racks) * 2(n-1)/n * S. The cross-rack hop uses the codec when one is set;
intra-rack hops use it only with hops=all (the final intra-rack gather/broadcast of already
reduced values stays dense: compressing it would need a second error memory). With hops=all the
reduce-scatter variant's rack stage becomes an all-gather of payloads, (m-1) * P per rank instead of
the ring's (m-1)/m * S: it saves bytes only when P < S/m (top-k, 1-bit; not fp16 at m >= 2).

On gloo, the leader variant measured faster (NOTES.md section 3: gloo's reduce_scatter is slow on
2 cores); it is the default (`allreduce.variant`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from hybridrec.distributed.accounting import ring_allreduce_bytes
from hybridrec.distributed.allreduce.common import (
    ReduceContext,
    chunk_bounds,
    compressed_sum_,
    ring_all_gather_,
    ring_reduce_scatter_,
    star_broadcast_,
    star_reduce_,
)


def _cross_rack_sum_(tensor: torch.Tensor, members: tuple[int, ...], group, ctx: ReduceContext, key: str):
    """Sum across racks; returns a handle to wait on for the dense case (None when done)."""
    if len(members) == 1:
        return None
    if ctx.compressing:
        compressed_sum_(tensor, members, group, ctx, key, "cross_rack")
        return None
    ctx.counter.add_ring("cross_rack", ring_allreduce_bytes(tensor.numel() * tensor.element_size(), len(members)),
                         members)
    return dist.all_reduce(tensor, group=group, async_op=True)


PIPELINE_CHUNK_BYTES = 4 * 2**20
PIPELINE_DEPTH = 2  # cross-rack chunks in flight


def _pipelined_leader_sum_(tensor: torch.Tensor, ctx: ReduceContext) -> None:
    """Dense leader variant in chunks: while chunk k crosses the uplink, chunk k+1 is reduced inside
    the rack and chunk k-1 is sent back to the members, so the slow link never waits on the fast ones."""
    groups = ctx.groups
    rack, leader, rack_group = groups.rack_ranks, groups.leader, groups.rack_group
    step = max(1, PIPELINE_CHUNK_BYTES // tensor.element_size())
    chunks = [tensor[i:i + step] for i in range(0, tensor.numel(), step)]
    if groups.rank != leader:
        sends = []
        for chunk in chunks:
            ctx.counter.add("rack_reduce", chunk.numel() * chunk.element_size(), leader)
            sends.append(dist.isend(chunk, leader, group=rack_group))
        for req in sends:
            req.wait()
        incoming = [torch.empty_like(c) for c in chunks] if len(rack) > 1 else []
        recvs = [dist.irecv(buf, leader, group=rack_group) for buf in incoming]
        for req, chunk, buf in zip(recvs, chunks, incoming):
            req.wait()
            chunk.copy_(buf)
        return
    members = rack[1:]
    inbox = [[torch.empty_like(c) for _ in members] for c in chunks]
    recvs = [[dist.irecv(buf, src, group=rack_group) for buf, src in zip(bufs, members)] for bufs in inbox]
    leaders = groups.plan.leaders
    in_flight: list[tuple[int, object]] = []
    sends: list = []

    def finish(index: int, handle) -> None:
        if handle is not None:
            handle.wait()
        for dst in members:
            ctx.counter.add("rack_broadcast", chunks[index].numel() * chunks[index].element_size(), dst)
            sends.append(dist.isend(chunks[index], dst, group=rack_group))

    for index, chunk in enumerate(chunks):
        for req, buf in zip(recvs[index], inbox[index]):
            req.wait()
            chunk += buf
        in_flight.append((index, _cross_rack_sum_(chunk, leaders, groups.leader_group, ctx, "")))
        while len(in_flight) >= PIPELINE_DEPTH:
            finish(*in_flight.pop(0))
    while in_flight:
        finish(*in_flight.pop(0))
    for req in sends:
        req.wait()


def leader_sum_(tensor: torch.Tensor, ctx: ReduceContext, key: str) -> None:
    groups = ctx.groups
    if not ctx.compressing:
        _pipelined_leader_sum_(tensor, ctx)
        return
    if len(groups.rack_ranks) > 1:
        star_reduce_(tensor, ctx, f"{key}/rack")
    if groups.rank == groups.leader:
        handle = _cross_rack_sum_(tensor, groups.plan.leaders, groups.leader_group, ctx, f"{key}/cross")
        if handle is not None:
            handle.wait()
    if len(groups.rack_ranks) > 1:
        star_broadcast_(tensor, ctx)


def reduce_scatter_sum_(tensor: torch.Tensor, ctx: ReduceContext, key: str) -> None:
    groups = ctx.groups
    plan, rack = groups.plan, groups.rack_ranks
    numel, num_columns = tensor.numel(), plan.num_columns
    bounds = chunk_bounds(numel, num_columns, len(rack))
    if len(rack) > 1:
        if ctx.compressing and ctx.compress_all_hops:
            compressed_sum_(tensor, rack, groups.rack_group, ctx, f"{key}/rack", "rack_all_gather_payloads")
        else:
            ring_reduce_scatter_(tensor, ctx, bounds)
    col_edges = [c * numel // num_columns for c in range(num_columns + 1)]
    handles = []
    for run in plan.column_runs(groups.rank):
        piece = tensor[col_edges[run.lo]:col_edges[run.hi]]
        handles.append(_cross_rack_sum_(piece, run.members, groups.column_groups.get(run.members), ctx,
                                        f"{key}/cross/{run.lo}"))
    for handle in handles:
        if handle is not None:
            handle.wait()
    if len(rack) > 1:
        ring_all_gather_(tensor, ctx, bounds)
