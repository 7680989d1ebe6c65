"""Overlapped gradient sync (hybridrec.distributed.overlap) on a real tiny megatron-core GPTModel in
megatron DDP with overlap_grad_reduce=True and small buckets, 4 gloo ranks in 2 racks x 2:

- for every algorithm (flat, hierarchical leader / reduce_scatter), codec (dense, top-k with error
  feedback, fp16, 1-bit on all hops) and mode (sync, async s=1, local_sgd), the grad buffers after
  each of 3 steps are bit-identical with overlap on and off (same megatron buckets, same order);
- with overlap on, bucket syncs really start during backward (before finalize) from step 2 on;
- dense results equal megatron's own DDP reduction (within summation order);
- the worker's busy time shows up as overlapped seconds only when it ran outside the waits (pure).
"""

from __future__ import annotations

import pytest
import torch

from hybridrec.distributed.overlap import CommClock, overlapped_seconds
from hybridrec.distributed.spawn import run_ranks

RACKS = ["a", "a", "b", "b"]
STEPS = 3
# case -> (algorithm, variant, codec, hops, mode, staleness)
CASES = {
    "flat": ("flat", "leader", "none", "cross_rack", "sync", 0),
    "flat_topk": ("flat", "leader", "topk", "cross_rack", "sync", 0),
    "leader": ("hierarchical", "leader", "none", "cross_rack", "sync", 0),
    "leader_topk": ("hierarchical", "leader", "topk", "cross_rack", "sync", 0),
    "leader_sign_all_hops": ("hierarchical", "leader", "sign1bit", "all", "sync", 0),
    "reduce_scatter": ("hierarchical", "reduce_scatter", "none", "cross_rack", "sync", 0),
    "reduce_scatter_fp16": ("hierarchical", "reduce_scatter", "fp16", "cross_rack", "sync", 0),
    "async_s1_topk": ("hierarchical", "leader", "topk", "cross_rack", "async", 1),
    "local_sgd": ("hierarchical", "leader", "none", "cross_rack", "local_sgd", 0),
}
BUCKET_ELEMS = 3000  # megatron buckets (~10 for the tiny model); GradSync splits them further


def _tiny_gpt_ddp(overlap_grad_reduce: bool):
    from test_grad_sync_megatron import tiny_gpt_ddp

    return tiny_gpt_ddp(overlap_grad_reduce=overlap_grad_reduce, bucket_size=BUCKET_ELEMS)


def _backward(ddp, rank: int, step: int) -> None:
    gen = torch.Generator().manual_seed(100 * step + rank)
    tokens = torch.randint(1, 64, (4, 16), generator=gen)
    labels = torch.randint(1, 64, (4, 16), generator=gen)
    position_ids = torch.arange(16).unsqueeze(0).expand(4, -1)
    mask = torch.tril(torch.ones(16, 16, dtype=torch.bool)).logical_not().view(1, 1, 16, 16)
    ddp.zero_grad_buffer()
    loss = ddp(tokens, position_ids, mask, labels=labels)
    loss.float().mean().backward()


def _run(rank: int, groups, case: tuple, overlap: bool) -> dict:
    from hybridrec.config.comm import AllreduceConfig, CompressionConfig
    from hybridrec.distributed.grad_sync import GradSync
    from hybridrec.distributed.megatron_grad_hook import make_finalize_model_grads

    algorithm, variant, codec, hops, mode, staleness = case
    grad_sync = GradSync.from_config(
        groups, AllreduceConfig(algorithm=algorithm, variant=variant, mode=mode, staleness=staleness,
                                bucket_mb=0.004),
        CompressionConfig(codec=codec, hops=hops, ratio=0.05))
    ddp = _tiny_gpt_ddp(True)
    finalize = make_finalize_model_grads(grad_sync, overlap)
    finalize.attach([ddp])
    grads, started = [], []
    for step in range(STEPS):
        _backward(ddp, rank, step)
        (state,) = finalize.bucketed._states.values()
        started.append(sum(h is not None for h in state.handles))
        finalize([ddp])
        grads.append(torch.cat([b.grad_data.clone() for b in ddp.buffers]))
    seconds = grad_sync.clock.step()
    grad_sync.close()
    return {"grads": grads, "started": started, "groups": len(ddp.bucket_groups), "seconds": seconds,
            "bytes": grad_sync.counter.totals()["bytes/total"]}


def _worker(rank: int, world: int) -> dict:
    from megatron.core import parallel_state
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    from hybridrec.distributed import backend
    from hybridrec.distributed.allreduce import build_comm_groups
    from hybridrec.topology import RackMap

    backend.setup("cpu")
    parallel_state.initialize_model_parallel(1, 1)
    groups = build_comm_groups([list(range(world))], RackMap.from_racks_list(RACKS))
    out: dict = {}
    reference = _tiny_gpt_ddp(False)
    _backward(reference, rank, 0)
    out["local0"] = torch.cat([b.grad_data.clone() for b in reference.buffers])
    finalize_model_grads([reference])
    out["megatron0"] = torch.cat([b.grad_data.clone() for b in reference.buffers])
    for name, case in CASES.items():
        out[name] = {overlap: _run(rank, groups, case, overlap) for overlap in (False, True)}
    parallel_state.destroy_model_parallel()
    return out


@pytest.mark.slow
def test_overlapped_sync_bit_identical_to_non_overlapped_for_every_algorithm_codec_mode():
    import megatron.core.models.gpt  # noqa: F401  (imported once here, inherited by the forked ranks)

    results = run_ranks(_worker, len(RACKS), timeout_s=600)
    assert not torch.equal(results[0]["local0"], results[1]["local0"])  # ranks differ before the sync
    for rank, res in enumerate(results):
        for name in CASES:
            off, on = res[name][False], res[name][True]
            assert on["groups"] > 3, "the tiny model must span several megatron buckets"
            for step in range(STEPS):
                assert torch.equal(off["grads"][step], on["grads"][step]), (name, rank, step)
            assert off["bytes"] == on["bytes"], name
            assert off["started"] == [0] * STEPS  # non-overlapped: nothing starts during backward
            # overlapped: megatron's first step only learns the hook counts; then buckets start early
            assert on["started"][0] == 0 and min(on["started"][1:]) > 0, (name, on["started"])
            if CASES[name][4] == "sync":
                assert off["seconds"]["overlapped_s"] == 0.0
        # dense sync equals megatron's own all-reduce (summation order differs: allclose)
        for name in ("flat", "leader", "reduce_scatter"):
            assert torch.allclose(res[name][True]["grads"][0], res["megatron0"], rtol=1e-6, atol=1e-8), name
        # local SGD leaves the gradients local (scaled by megatron's 1/dp, as megatron's DDP does)
        assert torch.equal(res["local_sgd"][True]["grads"][0], res["local0"] * (1 / len(RACKS)))
        # the codecs changed something, so the bit-identity above is not vacuous
        assert not torch.equal(res["leader_topk"][True]["grads"][1], res["leader"][True]["grads"][1])
    # every rank ends with the same averaged gradients (sync modes)
    for name in ("flat", "leader_topk", "reduce_scatter_fp16"):
        assert torch.equal(results[0][name][True]["grads"][2], results[3][name][True]["grads"][2]), name


def test_overlapped_seconds_counts_busy_time_outside_the_waits():
    assert overlapped_seconds([(0.0, 1.0)], []) == 1.0
    assert overlapped_seconds([(0.0, 1.0)], [(0.5, 2.0)]) == 0.5
    assert overlapped_seconds([(0.0, 1.0), (2.0, 3.0)], [(0.0, 1.0), (2.5, 2.75)]) == 0.75
    assert overlapped_seconds([(0.0, 1.0), (0.5, 1.5)], [(1.0, 1.25)]) == 1.25  # merged busy


def test_comm_clock_records_worker_and_waits():
    from concurrent.futures import ThreadPoolExecutor

    ticks = iter([0.0, 1.0, 1.0, 3.0])  # worker 0..1, then a wait 1..3 (nothing busy in it)
    clock = CommClock(clock=lambda: next(ticks))
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(clock.timed, lambda: 7)
        future.result()
        assert clock.wait(future) == 7
    assert clock.step() == {"worker_s": 1.0, "overlapped_s": 1.0}
    assert clock.step() == {"worker_s": 0.0, "overlapped_s": 0.0}
