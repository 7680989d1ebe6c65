"""ParallelLayout: validation of impossible layouts and the pure rank-group arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybridrec.config.parallel import ParallelConfig
from hybridrec.distributed.layout import ParallelLayout
from hybridrec.errors import ConfigError


def build(world: int = 8, gbs: int = 64, **kw) -> ParallelLayout:
    return ParallelLayout.build(replace(ParallelConfig(), **kw), world, gbs)


def test_dp_is_derived_and_micro_batches_counted():
    layout = build(world=8, gbs=64, tp=2, pp=2, micro_batch_size=4)
    assert (layout.tp, layout.pp, layout.dp, layout.vpp) == (2, 2, 2, 1)
    assert layout.num_micro_batches == 64 // (2 * 4)
    assert layout.global_batch_size == 64
    assert layout.name() == "tp2-pp2-dp2"


@pytest.mark.parametrize(
    "kw, world, gbs, field",
    [
        ({"tp": 3}, 8, 64, "parallel.tp*parallel.pp"),
        ({"tp": 2, "pp": 2, "dp": 4}, 8, 64, "parallel.dp"),
        ({"tp": 0}, 8, 64, "parallel.tp"),
        ({"micro_batch_size": 0}, 8, 64, "parallel.micro_batch_size"),
        ({"micro_batch_size": 3}, 4, 64, "train.global_batch_size"),
        ({"vpp": 2, "pp": 1}, 4, 64, "parallel.vpp"),
        # interleaving needs num_micro_batches % pp == 0: 24/(1*4) = 6 micro-batches, pp=4
        ({"vpp": 2, "pp": 4, "micro_batch_size": 4}, 4, 24, "train.global_batch_size"),
        ({"dp": -1}, 4, 64, "parallel.dp"),
    ],
)
def test_impossible_layouts_name_the_field(kw, world, gbs, field):
    with pytest.raises(ConfigError) as info:
        build(world=world, gbs=gbs, **kw)
    assert info.value.field == field
    assert field in str(info.value)


def test_world_size_mismatch_message_mentions_world():
    with pytest.raises(ConfigError, match="world size 6"):
        build(world=6, gbs=64, tp=4)


def test_coords_round_trip_and_megatron_rank_formula():
    layout = build(world=8, gbs=64, tp=2, pp=2, micro_batch_size=4)
    for rank in range(8):
        c = layout.coords(rank)
        assert rank == c.tp + 2 * c.dp + 4 * c.pp
        assert layout.rank_of(c.tp, c.dp, c.pp) == rank


def test_groups_tp2_pp2_dp2_known_answer():
    layout = build(world=8, gbs=64, tp=2, pp=2, micro_batch_size=4)
    assert layout.tp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.dp_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.pp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.model_parallel_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert layout.group_of(5, "dp") == [5, 7]
    assert layout.is_first_stage(3) and layout.is_last_stage(4)


@pytest.mark.parametrize("tp,pp,world", [(1, 1, 4), (4, 1, 4), (1, 4, 4), (2, 3, 12), (3, 2, 12)])
def test_every_group_kind_partitions_the_world(tp, pp, world):
    layout = build(world=world, gbs=world * 12, tp=tp, pp=pp, micro_batch_size=1)
    for dims, size in [("tp", tp), ("pp", pp), ("dp", layout.dp)]:
        groups = layout.groups(dims)
        assert all(len(g) == size for g in groups)
        assert sorted(r for g in groups for r in g) == list(range(world))


def test_bubble_fraction_theory():
    layout = build(world=4, gbs=32, pp=4, micro_batch_size=4)  # m = 8
    assert layout.bubble_fraction() == pytest.approx(3 / 11)
    inter = build(world=4, gbs=32, pp=4, vpp=2, micro_batch_size=4)
    assert inter.bubble_fraction() == pytest.approx(3 / 19)
