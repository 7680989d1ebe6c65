"""Calibrate and validate `analysis.scaling` on the rack testbed (2 racks x 2 nodes, shaped uplinks).

One testbed session, one process per node namespace, ranks in rack order (0,1 in rack1; 2,3 in rack2):
1. calibration per link class, intra-rack (0<->1) and cross-rack (1<->2), several sizes: a 2-rank
   all-reduce and a 2-rank all-gather over the pair (the fit's inputs: a ring all-reduce step and an
   all-gather step, both directions at once) and, for reference, a bidirectional isend + irecv;
   the reduction rate (fp32 `+=`) and the codecs' encode+decode time per element, measured on the two
   rack leaders at once (what the compressed cross-rack hop runs concurrently);
2. validation, collectives: `benchmarks/allreduce.py`'s worker (flat, hierarchical, hierarchical + top-k /
   1-bit / fp16 on the cross-rack hop, flat + top-k) at a few sizes;
3. validation, training steps: a small next-item model (the async benchmark's) trained by 4 ranks with
   GradSync (flat / hierarchical / hierarchical + top-k 1%); its compute step measured on rank 0 alone
   and with all 4 ranks computing at once (no communication) as the model's input.
Writes one JSON (`--out`, default analysis/results/scaling/calibration.json) with raw samples, `uptime`
before and after, and the machine's CPU count; `python -m analysis.scaling` fits and predicts from it.

Usage (root): .venv/bin/python benchmarks/scaling_calibration.py [--rate 100mbit] [--sizes-mib 1,4,16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from allreduce import bench_worker
from async_dp import NextItem, markov_data

from hybridrec.config.comm import AllreduceConfig, CompressionConfig
from hybridrec.distributed.allreduce import build_comm_groups
from hybridrec.distributed.compression import make_codec
from hybridrec.distributed.grad_sync import GradSync
from hybridrec.distributed.spawn import run_ranks
from hybridrec.io import atomic_write_json
from hybridrec.topology import RackMap

RACKS = ["rack1", "rack1", "rack2", "rack2"]
PAIRS = {"intra_rack": (0, 1), "cross_rack": (1, 2)}
CODECS = {"topk": {"codec": "topk", "ratio": 0.01}, "sign1bit": {"codec": "sign1bit"}, "fp16": {"codec": "fp16"}}


def _exchange(rank: int, pair: tuple[int, int], nbytes: int, repeats: int) -> list[float]:
    times = []
    send = torch.ones(max(1, nbytes // 4))
    recv = torch.empty_like(send)
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if rank in pair:
            peer = pair[1] if rank == pair[0] else pair[0]
            reqs = [dist.isend(send, peer), dist.irecv(recv, peer)]
            for req in reqs:
                req.wait()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    return times


def _pair_allreduce(group, members: tuple[int, int], rank: int, nbytes: int, repeats: int) -> list[float]:
    """A 2-rank all-reduce (gloo's ring: each end sends S/2 twice, both directions at once)."""
    times = []
    tensor = torch.ones(max(1, nbytes // 4))
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if rank in members:
            dist.all_reduce(tensor, group=group)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    return times


def _pair_allgather(group, members: tuple[int, int], rank: int, nbytes: int, repeats: int) -> list[float]:
    """A 2-rank all-gather of `nbytes` per rank (the compressed hop's transfer)."""
    times = []
    tensor = torch.ones(max(1, nbytes // 4))
    out = [torch.empty_like(tensor) for _ in members]
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        if rank in members:
            dist.all_gather(out, tensor, group=group)
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        times.append(float(elapsed))
    return times


def _rates(rank: int, numel: int, repeats: int) -> dict:
    """Seconds per element of the fp32 sum and of each codec's encode and decode, on both leaders at once."""
    out: dict = {}
    active = rank in (0, 2)
    x = torch.randn(numel, generator=torch.Generator().manual_seed(rank))
    y = torch.randn(numel)
    jobs = [("sum", None, "sum")] + [(f"{n}/{part}", s, part) for n, s in CODECS.items() for part in ("encode", "decode")]
    for name, spec, part in jobs:
        times = []
        codec = make_codec(CompressionConfig(**spec)) if spec else None
        payload = codec.encode(x, {}) if codec is not None else None
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            if active:
                if codec is None:
                    x += y
                elif part == "encode":
                    codec.encode(x, {})
                else:
                    codec.decode(payload)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            times.append(float(elapsed))
        out[name] = {"numel": numel, "times_s": times, "s_per_elem": statistics.median(times) / numel}
    return out


def _train(rank: int, world: int, cfg: dict, groups, algorithm: str, codec: str, sync_on: bool,
           active: bool) -> float:
    """Median seconds per step after warm-up (max over ranks) and of its compute part (forward,
    backward, optimizer: everything but the sync; max over ranks)."""
    torch.manual_seed(0)
    model = NextItem(cfg["items"], cfg["dim"])
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    x, y = markov_data(cfg["items"], 4096, seed=1)
    gen = torch.Generator().manual_seed(rank)
    sync = None
    if sync_on:
        sync = GradSync.from_config(groups, AllreduceConfig(algorithm=algorithm, bucket_mb=64),
                                    CompressionConfig(codec=codec, ratio=0.01))
    times, computes = [], []
    for step in range(cfg["train_steps"]):
        dist.barrier()
        start = time.perf_counter()
        compute = 0.0
        if active:
            rows = torch.randint(0, x.shape[0], (cfg["batch"],), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            optim.zero_grad()
            loss.backward()
            compute = time.perf_counter() - start
            if sync is not None:
                sync.sync_([p.grad for p in params])
            before_optim = time.perf_counter()
            optim.step()
            compute += time.perf_counter() - before_optim
        elapsed = torch.tensor([time.perf_counter() - start, compute], dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        if step >= cfg["warmup"]:
            times.append(float(elapsed[0]))
            computes.append(float(elapsed[1]))
    if sync is not None:
        sync.close()
    return {"step_s": statistics.median(times), "compute_s": statistics.median(computes)}


def worker(rank: int, world: int, cfg: dict) -> dict:
    torch.set_num_threads(1)
    rack_map = RackMap.from_racks_list(RACKS)
    groups = build_comm_groups([list(range(world))], rack_map)
    pair_groups = {link: dist.new_group(list(pair)) for link, pair in PAIRS.items()}
    dist.barrier()
    p2p, pair_ar, pair_ag = {}, {}, {}
    for link, pair in PAIRS.items():
        p2p[link] = [{"nbytes": nbytes, "times_s": _exchange(rank, pair, nbytes, cfg["p2p_repeats"])}
                     for nbytes in cfg["p2p_sizes"]]
        pair_ar[link] = [{"nbytes": nbytes,
                          "times_s": _pair_allreduce(pair_groups[link], pair, rank, nbytes, cfg["p2p_repeats"])}
                         for nbytes in cfg["p2p_sizes"]]
        pair_ag[link] = [{"nbytes": nbytes,
                          "times_s": _pair_allgather(pair_groups[link], pair, rank, nbytes, cfg["p2p_repeats"])}
                         for nbytes in cfg["p2p_sizes"]]
    rates = {str(numel): _rates(rank, numel, 3) for numel in cfg["rate_numels"]}
    grad_numel = sum(p.numel() for p in NextItem(cfg["items"], cfg["dim"]).parameters())
    train = {"grad_numel": grad_numel, "batch": cfg["batch"], "items": cfg["items"], "dim": cfg["dim"],
             "compute_single_s": _train(rank, world, cfg, groups, "flat", "none", False, rank == 0)["step_s"],
             "compute_concurrent_s": _train(rank, world, cfg, groups, "flat", "none", False, True)["step_s"],
             "runs": {}}
    for algorithm, codec in (("flat", "none"), ("hierarchical", "none"), ("hierarchical", "topk")):
        train["runs"][f"{algorithm}+{codec}"] = _train(rank, world, cfg, groups, algorithm, codec, True, True)
    collectives = bench_worker(rank, world, {**cfg["collective_cfg"], "racks_of_rank": RACKS})
    return {"p2p": p2p, "pair_allreduce": pair_ar, "pair_allgather": pair_ag, "rates": rates, "train": train, "collectives": collectives}


def _uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", default="100mbit")
    parser.add_argument("--sizes-mib", default="1,4,16", help="collective sizes (validation)")
    parser.add_argument("--algos", default="flat,hierarchical,hierarchical+topk,hierarchical+sign1bit,"
                                           "hierarchical+fp16,flat+topk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=14)
    parser.add_argument("--timeout", type=float, default=400.0)
    parser.add_argument("--out", default=str(ROOT / "analysis/results/scaling/calibration.json"))
    args = parser.parse_args(argv)
    from hybridrec.testbed.racks import RackTestbed

    kib = 1024
    cfg = {"p2p_sizes": [4 * kib, 64 * kib, 256 * kib, 1024 * kib, 4096 * kib], "p2p_repeats": 3,
           "rate_numels": [2**20 // 4, 4 * 2**20 // 4, 16 * 2**20 // 4], "items": args.items, "dim": args.dim, "batch": args.batch,
           "train_steps": args.train_steps, "warmup": 2,
           "collective_cfg": {"sizes_mib": [float(s) for s in args.sizes_mib.split(",")],
                              "algos": args.algos.split(","), "variant": "leader", "ratio": 0.01,
                              "repeats": args.repeats, "pipeline_chunk_mib": 4.0, "fabric": None}}
    load_before, started = _uptime(), time.time()
    base = tempfile.mkdtemp(prefix="hybridrec-scaling-")
    bed = RackTestbed.create(base, racks=2, nodes_per_rack=2, rate=args.rate)
    with bed:  # torn down on any failure
        nodes = [n for rack in bed.spec.racks.values() for n in rack]
        result = run_ranks(worker, 4, cfg, timeout_s=args.timeout, master_addr=bed.spec.addr(nodes[0]),
                           netns=[bed.spec.node_ns(n) for n in nodes])[0]
    record = {"rate": args.rate, "racks_of_rank": RACKS, "cpus": os.cpu_count(), "load_before": load_before,
              "load_after": _uptime(), "wall_s": time.time() - started, "cfg": cfg, **result}
    atomic_write_json(args.out, record)
    print(f"wrote {args.out} in {record['wall_s']:.0f} s; load before: {load_before}; after: {record['load_after']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
