"""GradSync on real gloo processes: bucketed averaging (buckets spanning tensors) equals the mean
for every algorithm, residuals survive a state_dict round trip, local SGD averages parameters
every period, configs are validated."""

import os

import pytest
import torch

from hybridrec.config.comm import AllreduceConfig, CompressionConfig
from hybridrec.distributed.allreduce import build_comm_groups, discover_rack_map
from hybridrec.distributed.grad_sync import GradSync, plan_buckets
from hybridrec.distributed.spawn import run_ranks
from hybridrec.errors import ConfigError
from hybridrec.topology import RackMap

RACKS = ["a", "b", "a"]
SIZES = [1000, 37, 5000]


def grads(rank: int, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(n, generator=gen) for n in SIZES]


def make(groups, algorithm="flat", variant="leader", codec="none", **kw):
    allreduce = AllreduceConfig(algorithm=algorithm, variant=variant, bucket_mb=1500 * 4 / 2**20, **kw)
    return GradSync.from_config(groups, allreduce, CompressionConfig(codec=codec, ratio=0.1))


def _worker(rank: int, world: int) -> dict:
    groups = build_comm_groups([list(range(world))], RackMap.from_racks_list(RACKS))
    out = {}
    # rack map discovery from each task's Slurm variables (as Slurm's topology/tree plugin sets them)
    os.environ.update({"SLURMD_NODENAME": f"n{rank + 1}", "SLURM_TOPOLOGY_ADDR_PATTERN": "switch.switch.node",
                       "SLURM_TOPOLOGY_ADDR": f"spine.rack{1 + rank % 2}.n{rank + 1}"})
    out["discovered"] = [discover_rack_map("slurm"),
                         discover_rack_map("config", {"r1": ["n1", "n2"], "r2": ["n3"]}),
                         discover_rack_map("single")]
    for algorithm, variant in (("flat", "leader"), ("hierarchical", "leader"), ("hierarchical", "reduce_scatter")):
        sync = make(groups, algorithm, variant)
        tensors = grads(rank, 0)
        sync.sync_(tensors)
        out[("mean", algorithm, variant)] = tensors
        out[("bytes", algorithm, variant)] = sync.counter.step_end()
    # residuals in checkpoints: two instances, one restored from the other's state after 3 steps
    first = make(groups, "hierarchical", codec="topk")
    for step in range(3):
        first.sync_(grads(rank, step))
    restored = make(groups, "hierarchical", codec="topk")
    restored.load_state_dict(first.state_dict())
    a, b = grads(rank, 3), grads(rank, 3)
    first.sync_(a)
    restored.sync_(b)
    out["restored"] = (a, b, sorted(first.state_dict()["memory"]))
    fresh = make(groups, "hierarchical", codec="topk")
    c = grads(rank, 3)
    fresh.sync_(c)
    out["fresh"] = c
    # local SGD: gradients untouched, parameters averaged every 2nd step
    local = make(groups, "flat", mode="local_sgd", local_sgd_period=2)
    g = grads(rank, 0)
    local.sync_(g)
    out["local_grads"] = g
    params = grads(rank, 5)
    out["local_avg"] = [local.after_optimizer_step_(params), [p.clone() for p in params],
                        local.after_optimizer_step_(params), params]
    return out


@pytest.fixture(scope="module")
def results():
    return run_ranks(_worker, len(RACKS))


def test_bucketed_average_equals_mean_for_every_algorithm(results):
    expected = [sum(grads(r, 0)[i] for r in range(3)) / 3 for i in range(len(SIZES))]
    for key in [k for k in results[0] if k[0] == "mean"]:
        for rank_out in results:
            for got, want in zip(rank_out[key], expected):
                assert torch.allclose(got, want, atol=1e-6), key


def test_bytes_are_counted_per_step(results):
    total = sum(r[("bytes", "flat", "leader")]["bytes/total"] for r in results)
    assert total == pytest.approx(3 * 2 * 2 / 3 * sum(SIZES) * 4, rel=0.01)
    cross = sum(r[("bytes", "hierarchical", "leader")]["bytes/cross_rack"] for r in results)
    assert cross == 2 * sum(SIZES) * 4  # 2 racks: each leader sends S


def test_error_feedback_residuals_survive_state_dict(results):
    for rank, rank_out in enumerate(results):
        restored_a, restored_b, keys = rank_out["restored"]
        # rack leaders (ranks 0 and 1) encode the cross-rack hop: one residual per bucket
        assert keys == (["b0/cross", "b1/cross", "b2/cross", "b3/cross", "b4/cross"] if rank < 2 else [])
        for x, y, z in zip(restored_a, restored_b, rank_out["fresh"]):
            assert torch.equal(x, y)
        assert not all(torch.equal(x, z) for x, z in zip(restored_a, rank_out["fresh"]))


def test_local_sgd_averages_parameters_every_period(results):
    mean = [sum(grads(r, 5)[i] for r in range(3)) / 3 for i in range(len(SIZES))]
    for rank, rank_out in enumerate(results):
        assert all(torch.equal(g, w) for g, w in zip(rank_out["local_grads"], grads(rank, 0)))
        averaged_1, params_1, averaged_2, params_2 = rank_out["local_avg"]
        assert not averaged_1 and averaged_2
        assert all(torch.equal(p, w) for p, w in zip(params_1, grads(rank, 5)))
        assert all(torch.allclose(p, m, atol=1e-6) for p, m in zip(params_2, mean))


def test_rack_map_discovered_from_every_ranks_slurm_variables(results):
    slurm, config, single = results[0]["discovered"]
    assert slurm.rack_of_rank == ("rack1", "rack2", "rack1") and slurm.hostname_of_rank == ("n1", "n2", "n3")
    assert config.rack_of_rank == ("r1", "r1", "r2")
    assert single.racks_of([0, 1, 2]) == [[0, 1, 2]]
    assert all(r["discovered"] == results[0]["discovered"] for r in results)


def test_conf_groups_compose_and_validate():
    from hydra import compose, initialize_config_dir

    from hybridrec.config import register_configs, to_run_config
    from hybridrec.config.comm import validate_comm

    register_configs()
    conf_dir = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf_dir), version_base="1.3"):
        for algorithm in ("flat", "hierarchical"):
            for codec in ("none", "fp16", "bf16", "topk", "sign1bit"):
                cfg = to_run_config(compose("config", overrides=[f"allreduce={algorithm}", f"compression={codec}"]))
                validate_comm(cfg.allreduce, cfg.compression)
                assert (cfg.allreduce.algorithm, cfg.compression.codec) == (algorithm, codec)
        cfg = to_run_config(compose("config", overrides=["allreduce=megatron", "compression=none"]))
        validate_comm(cfg.allreduce, cfg.compression)
        assert cfg.allreduce.algorithm == "megatron" and cfg.allreduce.variant == "leader"


def test_plan_buckets_cuts_the_stream():
    assert plan_buckets([5, 3, 10], 4) == [[(0, 0, 4)], [(0, 4, 5), (1, 0, 3)], [(2, 0, 4)], [(2, 4, 8)], [(2, 8, 10)]]


def test_bad_configs_are_refused():
    from hybridrec.config.comm import validate_comm
    with pytest.raises(ConfigError, match="allreduce.mode"):
        validate_comm(AllreduceConfig(mode="eventually"), CompressionConfig())
    with pytest.raises(ConfigError, match="compression.codec"):
        validate_comm(AllreduceConfig(algorithm="megatron"), CompressionConfig(codec="topk"))
    with pytest.raises(ConfigError, match="allreduce.staleness"):
        validate_comm(AllreduceConfig(algorithm="flat", staleness=-1), CompressionConfig())
