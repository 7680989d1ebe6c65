"""Bounded-staleness async data parallelism: s=0 equals sync exactly (codec and error feedback
included), s=2 applies the average of the gradients from 2 calls earlier (zeros before)."""

import pytest
import torch

from hybridrec.config.comm import AllreduceConfig, CompressionConfig
from hybridrec.distributed.allreduce import build_comm_groups
from hybridrec.distributed.grad_sync import GradSync
from hybridrec.distributed.spawn import run_ranks
from hybridrec.topology import RackMap

RACKS = ["a", "b", "b", "a"]
STEPS = 5


def grads(rank: int, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(77 * step + rank)
    return [torch.randn(3000, generator=gen), torch.randn(123, generator=gen)]


def _worker(rank: int, world: int) -> dict:
    groups = build_comm_groups([list(range(world))], RackMap.from_racks_list(RACKS))
    out = {}
    for algorithm, codec in (("flat", "none"), ("hierarchical", "topk"), ("hierarchical", "sign1bit")):
        for mode, staleness in (("sync", 0), ("async", 0), ("async", 2)):
            gs = GradSync.from_config(
                groups, AllreduceConfig(algorithm=algorithm, mode=mode, staleness=staleness, bucket_mb=0.01),
                CompressionConfig(codec=codec, ratio=0.05))
            steps = []
            for step in range(STEPS):
                tensors = grads(rank, step)
                gs.sync_(tensors)
                steps.append(tensors)
            gs.close()
            out[(algorithm, codec, mode, staleness)] = steps
    return out


@pytest.fixture(scope="module")
def results():
    return run_ranks(_worker, len(RACKS))


@pytest.mark.parametrize("algorithm,codec", [("flat", "none"), ("hierarchical", "topk"), ("hierarchical", "sign1bit")])
def test_async_staleness_zero_equals_sync_exactly(results, algorithm, codec):
    for rank_out in results:
        for sync_step, async_step in zip(rank_out[(algorithm, codec, "sync", 0)], rank_out[(algorithm, codec, "async", 0)]):
            assert all(torch.equal(a, b) for a, b in zip(sync_step, async_step))


@pytest.mark.parametrize("algorithm,codec", [("flat", "none"), ("hierarchical", "topk")])
def test_async_staleness_two_applies_the_average_from_two_steps_ago(results, algorithm, codec):
    for rank_out in results:
        sync, late = rank_out[(algorithm, codec, "sync", 0)], rank_out[(algorithm, codec, "async", 2)]
        for step in range(STEPS):
            if step < 2:
                assert all(bool((t == 0).all()) for t in late[step])
            else:
                assert all(torch.equal(a, b) for a, b in zip(late[step], sync[step - 2]))
    first = results[0][(algorithm, codec, "async", 2)]
    for rank_out in results[1:]:  # replicas stay identical
        assert all(torch.equal(a, b) for s, t in zip(first, rank_out[(algorithm, codec, "async", 2)]) for a, b in zip(s, t))
