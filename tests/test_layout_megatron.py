"""Our rank groups agree with megatron-core's: its RankGenerator (pure) and its parallel_state
groups created by 8 real gloo processes (slow)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from hybridrec.config.parallel import ParallelConfig
from hybridrec.distributed.env import free_port
from hybridrec.distributed.layout import MEGATRON_ORDER, ParallelLayout

LAYOUTS = [(1, 1, 8), (2, 1, 8), (1, 2, 8), (2, 2, 8), (4, 2, 8), (2, 4, 8), (8, 1, 8), (3, 2, 12), (2, 3, 12)]


def _layout(tp: int, pp: int, world: int) -> ParallelLayout:
    return ParallelLayout.build(replace(ParallelConfig(), tp=tp, pp=pp, micro_batch_size=1), world, world * 8)


@pytest.mark.parametrize("tp,pp,world", LAYOUTS)
def test_groups_match_megatron_rank_generator(tp, pp, world):
    from megatron.core.parallel_state import RankGenerator

    layout = _layout(tp, pp, world)
    gen = RankGenerator(tp=tp, ep=1, dp=layout.dp, pp=pp, cp=1, order=MEGATRON_ORDER)
    assert layout.tp_groups() == gen.get_ranks("tp")
    assert layout.dp_groups() == gen.get_ranks("dp")
    assert layout.pp_groups() == gen.get_ranks("pp")
    assert layout.model_parallel_groups() == gen.get_ranks("tp-pp")


def _worker(rank: int, world: int, port: int, tp: int, pp: int, queue) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
        queue.put((rank, {
            "tp": dist.get_process_group_ranks(ps.get_tensor_model_parallel_group()),
            "dp": dist.get_process_group_ranks(ps.get_data_parallel_group()),
            "pp": dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()),
            "tp_rank": ps.get_tensor_model_parallel_rank(),
            "dp_rank": ps.get_data_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(),
        }))
        ps.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 2), (1, 4), (4, 1)])
def test_groups_match_megatron_parallel_state_with_8_gloo_processes(tp, pp):
    import torch.multiprocessing as mp

    world = 8
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, world, port, tp, pp, queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=400) for _ in range(world))  # generous: 8 megatron imports on a loaded machine
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    layout = _layout(tp, pp, world)
    for rank, got in results.items():
        c = layout.coords(rank)
        assert (got["tp_rank"], got["dp_rank"], got["pp_rank"]) == (c.tp, c.dp, c.pp)
        assert got["tp"] == layout.group_of(rank, "tp")
        assert got["dp"] == layout.group_of(rank, "dp")
        assert got["pp"] == layout.group_of(rank, "pp")

