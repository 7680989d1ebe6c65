"""Flat vs rack-then-global all-reduce (dense, top-k, 1-bit) side by side, 1-64 MiB.

Modes:
- loopback (default): 4 local gloo processes on 127.0.0.1; racks are logical (CPU-bound numbers).
- --testbed: 2 racks x 2 nodes of network namespaces (hybridrec.testbed, root) with `--rate` uplinks;
  one process per node, GLOO_SOCKET_IFNAME=eth0; uplink byte counters read around every run.

Both rank orders are measured: `rack` (ranks 0,1 in rack1; 2,3 in rack2) and `interleaved`
(ranks alternate racks). Reported per size (nccl-tests conventions):
  time      = max over ranks of the all-reduce wall time (median of --repeats)
  algbw     = S / time
  busbw     = algbw * 2(n-1)/n                      (ring all-reduce bytes per rank / time)
  xrack     = cross-rack bytes from ByteCounter, summed over ranks (theory from payload sizes)
  uplink    = bytes that left each rack over its uplink (testbed counters), max over racks
  goodput   = xrack per direction * 8 / time / uplink rate (testbed)
Usage: .venv/bin/python benchmarks/allreduce.py [--testbed] [--sizes-mib 1,4,16,64] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrec.config.comm import CompressionConfig
from hybridrec.distributed.accounting import ByteCounter
from hybridrec.distributed.allreduce import (
    ReduceContext,
    build_comm_groups,
    discover_rack_map,
    get_algorithm,
    hierarchical,
)
from hybridrec.distributed.compression import make_codec
from hybridrec.distributed.spawn import run_ranks
from hybridrec.io import atomic_write_json
from hybridrec.topology import RackMap

ORDERS = {"rack": ["rack1", "rack1", "rack2", "rack2"], "interleaved": ["rack1", "rack2", "rack1", "rack2"]}
DEFAULT_ALGOS = "flat,hierarchical,hierarchical+topk,hierarchical+sign1bit"


def _uplinks(fabric: dict | None) -> dict[str, int]:
    if not fabric:
        return {}
    out = {}
    for rack, paths in fabric["counters"].items():
        argv = ["ip", "netns", "exec", fabric["ns"], "cat", paths["out"]]
        out[rack] = int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()[0])
    return out


def bench_worker(rank: int, world: int, cfg: dict) -> list[dict]:
    torch.set_num_threads(1)
    hierarchical.PIPELINE_CHUNK_BYTES = int(cfg["pipeline_chunk_mib"] * 2**20)
    hierarchical.PIPELINE_DEPTH = int(os.environ.get("HYBRIDREC_PIPELINE_DEPTH", hierarchical.PIPELINE_DEPTH))
    if cfg["racks_of_rank"] is None:  # under Slurm: racks from every task's SLURM_TOPOLOGY_ADDR
        rack_map = discover_rack_map("slurm")
    else:
        rack_map = RackMap.from_racks_list(cfg["racks_of_rank"])
    groups = build_comm_groups([list(range(world))], rack_map)
    fabric = cfg.get("fabric") if rank == 0 else None
    warm = torch.ones(1024)
    dist.all_reduce(warm)
    records = []
    for size_mib in cfg["sizes_mib"]:
        numel = int(size_mib * 2**20) // 4
        base = torch.randn(numel, generator=torch.Generator().manual_seed(rank))
        for algo in cfg["algos"]:
            algorithm, _, codec_name = algo.partition("+")
            codec = make_codec(CompressionConfig(codec=codec_name or "none", ratio=cfg["ratio"]))
            fn = get_algorithm(algorithm, cfg["variant"])
            times, uplink = [], {}
            for _ in range(cfg["repeats"]):
                counter = ByteCounter(rack_map, rank)
                ctx = ReduceContext(groups, counter, codec=codec)
                tensor = base.clone()
                before = _uplinks(fabric)
                dist.barrier()
                start = time.perf_counter()
                fn(tensor, ctx, "b0")
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                after = _uplinks(fabric)
                times.append(float(elapsed))
                uplink = {rack: after[rack] - before[rack] for rack in after}
            sent = torch.tensor([counter.totals()["bytes/cross_rack"], counter.totals()["bytes/total"]],
                                dtype=torch.float64)
            dist.all_reduce(sent)
            records.append({"size_mib": size_mib, "algo": algo, "racks": list(rack_map.rack_of_rank),
                            "hosts": list(rack_map.hostname_of_rank), "time_s": statistics.median(times),
                            "times_s": times, "xrack_bytes": int(sent[0]), "total_bytes": int(sent[1]),
                            "uplink_out_bytes": uplink})
    return records


# ---- testbed mode -----------------------------------------------------------------------------------
def _testbed_run(cfg: dict, orders: list[str], rate: str, timeout_s: float) -> dict[str, list[dict]]:
    from hybridrec.testbed.fabric import uplink_counter_paths
    from hybridrec.testbed.racks import RackTestbed

    base = tempfile.mkdtemp(prefix="hybridrec-bench-racks-")
    bed = RackTestbed.create(base, racks=2, nodes_per_rack=2, rate=rate)
    results = {}
    with bed:  # torn down on any failure
        spec = bed.spec
        racks = list(spec.racks)
        rack_nodes = [list(spec.racks[r]) for r in racks]
        rack_of = {node: rack for rack, nodes in spec.racks.items() for node in nodes}
        fabric = {"ns": spec.fabric_ns, "counters": {r: uplink_counter_paths(spec, r) for r in racks}}
        for order in orders:
            placement = ([*rack_nodes[0], *rack_nodes[1]] if order == "rack"
                         else [rack_nodes[0][0], rack_nodes[1][0], rack_nodes[0][1], rack_nodes[1][1]])
            run_cfg = {**cfg, "racks_of_rank": [rack_of[n] for n in placement], "fabric": fabric}
            netns = [spec.node_ns(node) for node in placement]
            results[order] = run_ranks(bench_worker, len(placement), run_cfg, timeout_s=timeout_s,
                                       deadline_s=timeout_s, master_addr=spec.addr(placement[0]), netns=netns)[0]
    return results


# ---- Slurm mode: the local cluster's nodes live in the rack namespaces ------------------------------------
def _slurm_run(cfg: dict, rate: str, timeout_s: float) -> dict[str, list[dict]]:
    from hybridrec.testbed.cluster import LocalCluster
    from hybridrec.testbed.fabric import uplink_counter_paths

    base = Path(tempfile.mkdtemp(prefix="hybridrec-bench-slurm-"))
    os.chmod(base, 0o711)
    cluster = LocalCluster(base)
    try:
        cluster.up(in_racks=True, rate=rate, cpus_per_node=2)
        fab = cluster.racks.spec  # type: ignore[union-attr]
        task_cfg = {**cfg, "racks_of_rank": None,
                    "fabric": {"ns": fab.fabric_ns, "counters": {r: uplink_counter_paths(fab, r) for r in fab.racks}}}
        out = base / "slurm_result.json"
        cluster.run(["srun", "-N4", "-n4", "--ntasks-per-node=1", sys.executable, __file__, "--slurm-task",
                     json.dumps(task_cfg), "--out", str(out)], timeout=timeout_s)
        return {"slurm (rank order by node)": json.loads(out.read_text())}
    finally:
        problems = cluster.down()
        if problems:
            print(f"slurm teardown problems: {problems} (logs in {base})", file=sys.stderr)


def _slurm_task(cfg: dict, out: str) -> None:
    """One srun task: rank/world/master from Slurm, racks from SLURM_TOPOLOGY_ADDR."""
    import datetime

    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()
    port = 20000 + int(os.environ["SLURM_JOB_ID"]) % 20000
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "eth0")
    dist.init_process_group("gloo", init_method=f"tcp://{nodes[0]}:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        records = bench_worker(rank, world, cfg)
        if rank == 0:
            atomic_write_json(out, records)
    finally:
        dist.destroy_process_group()


# ---- report -------------------------------------------------------------------------------------------
def report(results: dict[str, list[dict]], rate_bits: float | None, world: int = 4) -> str:
    factor = 2 * (world - 1) / world
    lines = [
        "time = max over ranks (median of repeats); algbw = S/time; busbw = algbw * 2(n-1)/n "
        f"= algbw * {factor:.2f}; xrack = cross-rack bytes (ByteCounter, all ranks); "
        "flat ring formula: cross edges * 2(n-1)/n * S; rack-then-global: 2(R-1) * S"
        + ("; goodput = (uplink bytes out of the busiest rack) * 8 / time / rate" if rate_bits else ""),
    ]
    for order, records in results.items():
        lines.append(f"\n## rank order: {order}")
        lines.append("| MiB | algorithm | time s | algbw MiB/s | busbw MiB/s | xrack MiB | vs flat | uplink MiB | goodput |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        flat_time = {r["size_mib"]: r["time_s"] for r in records if r["algo"] == "flat"}
        for r in records:
            algbw = r["size_mib"] / r["time_s"]
            up = max(r["uplink_out_bytes"].values()) if r["uplink_out_bytes"] else None
            goodput = (f"{up * 8 / r['time_s'] / rate_bits:.0%}" if up and rate_bits else "-")
            lines.append(
                f"| {r['size_mib']:g} | {r['algo']} | {r['time_s']:.3f} | {algbw:.1f} | {algbw * factor:.1f} | "
                f"{r['xrack_bytes'] / 2**20:.2f} | {flat_time[r['size_mib']] / r['time_s']:.2f}x | "
                f"{(up / 2**20) if up else 0:.2f} | {goodput} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", action="store_true", help="run ranks in rack namespaces (root)")
    parser.add_argument("--rate", default="100mbit", help="testbed uplink rate (tc units)")
    parser.add_argument("--sizes-mib", default="1,4,16,64")
    parser.add_argument("--algos", default=DEFAULT_ALGOS)
    parser.add_argument("--orders", default="rack,interleaved")
    parser.add_argument("--variant", default="leader", choices=["leader", "reduce_scatter"])
    parser.add_argument("--ratio", type=float, default=0.01, help="top-k ratio")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pipeline-chunk-mib", type=float, default=4.0,
                        help="dense leader variant: chunk size of the intra/cross-rack pipeline")
    parser.add_argument("--timeout", type=float, default=170.0, help="seconds per rank order")
    parser.add_argument("--slurm", action="store_true",
                        help="run once as a job of the local Slurm cluster whose nodes sit in the rack namespaces")
    parser.add_argument("--slurm-task", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.slurm_task:
        _slurm_task(json.loads(args.slurm_task), args.out)
        return 0
    cfg = {"sizes_mib": [float(s) for s in args.sizes_mib.split(",")], "algos": args.algos.split(","),
           "variant": args.variant, "ratio": args.ratio, "repeats": args.repeats,
           "pipeline_chunk_mib": args.pipeline_chunk_mib}
    results, started = {}, time.time()
    if args.slurm:
        results = _slurm_run(cfg, args.rate, args.timeout)
    elif args.testbed:
        results = _testbed_run(cfg, args.orders.split(","), args.rate, args.timeout)
    else:
        for order in args.orders.split(","):
            results[order] = run_ranks(bench_worker, 4, {**cfg, "racks_of_rank": ORDERS[order]},
                                       timeout_s=args.timeout, deadline_s=args.timeout)[0]
    rate_bits = None
    if (args.testbed or args.slurm) and args.rate:
        from hybridrec.testbed.fabric import rate_bits as parse_rate

        rate_bits = parse_rate(args.rate)
    mode = (f"{'Slurm job on ' if args.slurm else ''}testbed 2x2, uplinks {args.rate or 'unshaped'}"
            if args.testbed or args.slurm else "loopback (logical racks)")
    print(f"# all-reduce benchmark: {mode}, variant={args.variant}, top-k ratio={args.ratio}, "
          f"{time.time() - started:.0f} s\n")
    print(report(results, rate_bits))
    if args.out:
        atomic_write_json(args.out, {"mode": mode, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
