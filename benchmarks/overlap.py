"""Overlapped vs after-backward gradient sync, side by side in one run, on the rack testbed.

2 racks x 2 nodes of network namespaces (hybridrec.testbed.racks: 198.18.0.0/15, no default route,
htb-shaped uplinks, torn down on exit), one gloo rank per node. Each rank trains a megatron-core
GPTModel in megatron DDP (overlap_grad_reduce=True, `--bucket-mb` buckets) whose backward time is
close to the gradient sync time over the shaped uplink, and syncs with GradSync through the job's
hook (`megatron_grad_hook.make_finalize_model_grads(grad_sync, overlap)`), for
hierarchical dense and hierarchical + top-k 1%: first after backward (overlap=False), then
overlapped (overlap=True), same model, same data.

Per step (max over ranks, median over the steps after `--warmup`; megatron's first step never
overlaps): step time, exposed sync (time the step waited in finalize), worker busy / overlapped
seconds (GradSync's CommClock), compute (forward+backward without waiting). exposed share =
exposed / step. Last line: `overlap: <ratio>x` (hierarchical dense step time, off / on).
Defaults (150 Mbit uplinks, GPT 4x256, batch 40x64, 0.5 MiB buckets) put the dense sync (~1.0 s) close
to the backward time on this 2-core machine.
Usage (root): .venv/bin/python benchmarks/overlap.py [--rate 150mbit] [--batch 40] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrec.distributed.spawn import run_ranks
from hybridrec.io import atomic_write_json

CONFIGS = {"hierarchical": ("none", 1.0), "hierarchical+topk1%": ("topk", 0.01)}


def _model(cfg: dict):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.transformer_config import TransformerConfig

    torch.manual_seed(1)
    model_parallel_cuda_manual_seed(1)
    h = cfg["hidden"]
    config = TransformerConfig(
        num_layers=cfg["layers"], hidden_size=h, num_attention_heads=4, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0, bias_dropout_fusion=False, masked_softmax_fusion=False,
        gradient_accumulation_fusion=False, apply_rope_fusion=False)
    model = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=cfg["vocab"],
                     max_sequence_length=cfg["seq"], position_embedding_type="learned_absolute")
    bucket = int(cfg["bucket_mb"] * 2**20) // 4
    return DistributedDataParallel(config, DistributedDataParallelConfig(overlap_grad_reduce=True,
                                                                         bucket_size=bucket), model)


def _steps(rank: int, ddp, finalize, grad_sync, cfg: dict) -> list[dict]:
    import torch.distributed as dist

    seq, batch = cfg["seq"], cfg["batch"]
    position_ids = torch.arange(seq).unsqueeze(0).expand(batch, -1)
    mask = torch.tril(torch.ones(seq, seq, dtype=torch.bool)).logical_not().view(1, 1, seq, seq)
    rows = []
    for step in range(cfg["steps"]):
        gen = torch.Generator().manual_seed(1000 * step + rank)
        tokens = torch.randint(1, cfg["vocab"], (batch, seq), generator=gen)
        dist.barrier()
        t0 = time.perf_counter()
        ddp.zero_grad_buffer()
        loss = ddp(tokens, position_ids, mask, labels=tokens)
        loss.float().mean().backward()
        t1 = time.perf_counter()
        finalize([ddp])
        t2 = time.perf_counter()
        clock = grad_sync.clock.step()
        rows.append({"step_s": t2 - t0, "compute_s": t1 - t0, "exposed_s": t2 - t1, **clock})
    return rows


def bench_worker(rank: int, world: int, cfg: dict) -> dict:
    from megatron.core import parallel_state

    from hybridrec.config.comm import AllreduceConfig, CompressionConfig
    from hybridrec.distributed import backend
    from hybridrec.distributed.allreduce import build_comm_groups
    from hybridrec.distributed.grad_sync import GradSync
    from hybridrec.distributed.megatron_grad_hook import make_finalize_model_grads
    from hybridrec.topology import RackMap

    torch.set_num_threads(1)
    backend.setup("cpu")
    parallel_state.initialize_model_parallel(1, 1)
    groups = build_comm_groups([list(range(world))], RackMap.from_racks_list(cfg["racks_of_rank"]))
    out: dict = {"params": None, "runs": {}}
    for name, (codec, ratio) in CONFIGS.items():
        for overlap in (False, True):
            grad_sync = GradSync.from_config(
                groups, AllreduceConfig(algorithm="hierarchical", variant="leader", bucket_mb=cfg["bucket_mb"]),
                CompressionConfig(codec=codec, ratio=ratio))
            ddp = _model(cfg)
            out["params"] = sum(p.numel() for p in ddp.module.parameters())
            finalize = make_finalize_model_grads(grad_sync, overlap)
            finalize.attach([ddp])
            rows = _steps(rank, ddp, finalize, grad_sync, cfg)
            out["runs"][f"{name}|{'on' if overlap else 'off'}"] = {
                "rows": rows, "cross_rack_bytes": grad_sync.counter.totals()["bytes/cross_rack"]}
            grad_sync.close()
            del ddp
    parallel_state.destroy_model_parallel()
    return out


def summarise(per_rank: list[dict], warmup: int) -> dict[str, dict]:
    """Per run: medians over steps (after warmup) of the max over ranks."""
    out = {}
    for key in per_rank[0]["runs"]:
        steps = len(per_rank[0]["runs"][key]["rows"])
        med = {}
        for field in ("step_s", "compute_s", "exposed_s", "worker_s", "overlapped_s"):
            med[field] = statistics.median(max(r["runs"][key]["rows"][s][field] for r in per_rank)
                                           for s in range(warmup, steps))
        # share of a step the ranks spent waiting for the sync (mean over ranks, median over steps)
        med["exposed_share"] = statistics.median(
            sum(r["runs"][key]["rows"][s]["exposed_s"] for r in per_rank)
            / sum(r["runs"][key]["rows"][s]["step_s"] for r in per_rank) for s in range(warmup, steps))
        med["cross_rack_mib_per_step"] = sum(r["runs"][key]["cross_rack_bytes"] for r in per_rank) / steps / 2**20
        out[key] = med
    return out


def report(summary: dict[str, dict], cfg: dict, params: int, load: str) -> str:
    lines = [(f"# overlap: testbed 2x2, uplinks {cfg['rate']}, GPT {cfg['layers']}x{cfg['hidden']} "
             f"({params / 1e6:.2f} M params, {params * 4 / 2**20:.1f} MiB fp32 grads), batch {cfg['batch']}x{cfg['seq']}, "
             f"buckets {cfg['bucket_mb']} MiB, {cfg['steps']} steps ({cfg['warmup']} warm-up); load: {load}"),
             ("| sync | overlap | step s | compute s | exposed sync s | worker s | overlapped s | exposed share "
             "| cross-rack MiB/step |"), "|---|---|---|---|---|---|---|---|---|"]
    for key, m in summary.items():
        name, flag = key.split("|")
        lines.append(f"| {name} | {flag} | {m['step_s']:.3f} | {m['compute_s']:.3f} | {m['exposed_s']:.3f} | "
                     f"{m['worker_s']:.3f} | {m['overlapped_s']:.3f} | {m['exposed_share']:.1%} | "
                     f"{m['cross_rack_mib_per_step']:.2f} |")
    for name in CONFIGS:
        ratio = summary[f"{name}|off"]["step_s"] / summary[f"{name}|on"]["step_s"]
        lines.append(f"{name}: overlapped step {ratio:.2f}x faster")
    lines.append(f"overlap: {summary['hierarchical|off']['step_s'] / summary['hierarchical|on']['step_s']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="150mbit", help="uplink rate (tc units)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--bucket-mb", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default="", help="write the summary JSON here")
    args = parser.parse_args(argv)
    import os

    from hybridrec.testbed.racks import RackTestbed

    cfg = {"rate": args.rate, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "seq": args.seq,
           "batch": args.batch, "bucket_mb": args.bucket_mb, "steps": args.steps, "warmup": args.warmup}
    import megatron.core.models.gpt  # noqa: F401  (imported once, inherited by the forked ranks)

    base = tempfile.mkdtemp(prefix="hybridrec-bench-overlap-")
    with RackTestbed.create(base, racks=2, nodes_per_rack=2, rate=args.rate) as bed:  # torn down on any failure
        spec = bed.spec
        rack_of = {node: rack for rack, nodes in spec.racks.items() for node in nodes}
        placement = [node for rack in spec.racks for node in spec.racks[rack]]
        cfg["racks_of_rank"] = [rack_of[n] for n in placement]
        per_rank = run_ranks(bench_worker, len(placement), cfg, timeout_s=args.timeout,
                             master_addr=spec.addr(placement[0]), netns=[spec.node_ns(n) for n in placement])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = summarise(per_rank, args.warmup)
    if args.out:
        atomic_write_json(args.out, {"config": cfg, "load": load, "summary": summary})
    print(report(summary, cfg, per_rank[0]["params"], load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
