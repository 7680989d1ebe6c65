"""Our rank groups agree with megatron-core's: its RankGenerator (pure) and its parallel_state
groups created by 8 real gloo processes (slow)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybridrec.config.parallel import ParallelConfig
from hybridrec.distributed.layout import MEGATRON_ORDER, ParallelLayout
from hybridrec.distributed.spawn import run_ranks

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


def _worker(rank: int, world: int, tp: int, pp: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    got = {
        "tp": dist.get_process_group_ranks(ps.get_tensor_model_parallel_group()),
        "dp": dist.get_process_group_ranks(ps.get_data_parallel_group()),
        "pp": dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group()),
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "dp_rank": ps.get_data_parallel_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
    }
    ps.destroy_model_parallel()
    return got


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 2), (1, 4), (4, 1)])
def test_groups_match_megatron_parallel_state_with_8_gloo_processes(tp, pp):
    world = 8
    # generous deadline: 8 megatron imports on a loaded machine
    results = dict(enumerate(run_ranks(_worker, world, tp, pp, timeout_s=400, deadline_s=430, start_method="spawn")))
    layout = _layout(tp, pp, world)
    for rank, got in results.items():
        c = layout.coords(rank)
        assert (got["tp_rank"], got["dp_rank"], got["pp_rank"]) == (c.tp, c.dp, c.pp)
        assert got["tp"] == layout.group_of(rank, "tp")
        assert got["dp"] == layout.group_of(rank, "dp")
        assert got["pp"] == layout.group_of(rank, "pp")

