"""2D sparse parallelism of a large synthetic item table, side by side in one run.

For each embedding-parallel size E (default: E = world = full sharding, and E = world/2), spawn
`world` gloo processes, build a `rows` x `dim` row-sharded table, and run training steps of
lookup (batch_per_rank x seq_len ids, popularity-skewed) -> backward -> replica sync ->
row-wise AdaGrad. Prints per-rank memory (accounting from hybridrec.embedding.memory and the
measured peak RSS), the median step time, and the all-to-all / replica bytes per step and rank
(measured = bytes handed to the collectives for other ranks; bound = accounting without dedup).
`--quality` also trains the small synthetic-sequence recommender of hybridrec.embedding.quality
with the unsharded baseline and 2D layouts and prints HR@10 / NDCG@10.

    .venv/bin/python benchmarks/embedding_2d.py --rows 5000000 --dim 64 --group-sizes 4,2

`--trainer` (benchmarks/embedding_2d_trainer.py): the same comparison through the real job
(jobs.train_job under torchrun, the 2D table as the trainer's item table): per-rank table memory,
step time and HR@10 for replicated, E=2 and full sharding in one run, plus the 5M x 64 per-rank
memory from the trainer's own accounting.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hybridrec.distributed.spawn import run_ranks
from hybridrec.embedding.groups import EmbeddingGroups
from hybridrec.embedding.memory import embedding_memory, mib
from hybridrec.embedding.rowwise_adagrad import RowWiseAdagrad
from hybridrec.embedding.sharded import ShardedEmbedding, create_process_groups
from hybridrec.io import atomic_write_json


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def skewed_ids(rows: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Popularity-skewed ids: id = rows * u**3 puts most lookups on the low (hot) ids."""
    return (torch.rand(shape, generator=gen).pow(3) * rows).long().clamp_(max=rows - 1)


def bench_rank(rank: int, world: int, args: argparse.Namespace, e: int) -> dict:
    base_rss = rss_mib("VmRSS")
    groups = EmbeddingGroups.build(args.world, e)
    table = ShardedEmbedding(args.rows, args.dim, groups, rank, create_process_groups(groups, rank),
                             replica_sync_mode="grad", layout_independent_init=False, seed=1)
    opt = RowWiseAdagrad([table.weight], lr=0.05)
    gen = torch.Generator().manual_seed(1000 + rank)
    times, alltoall, replica = [], [], []
    for step in range(args.warmup + args.steps):
        ids = skewed_ids(args.rows, (args.batch_per_rank, args.seq_len), gen)
        signal = torch.randn(args.batch_per_rank, args.seq_len, args.dim, generator=gen)
        table.counter.reset()
        dist.barrier()
        started = time.perf_counter()
        loss = (table(ids) * signal).sum() / ids.numel()
        loss.backward()
        table.finish_grad_sync()
        opt.step()
        table.weight.grad = None
        dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            alltoall.append(table.counter.lookup.total)
            replica.append(table.counter.replica_ids + table.counter.replica_values)
    return {"rank": rank, "step_s": statistics.median(times), "alltoall": statistics.mean(alltoall),
            "replica": statistics.mean(replica), "peak_rss_mib": rss_mib("VmHWM"), "base_rss_mib": base_rss}


def run_layout(args: argparse.Namespace, e: int) -> dict:
    ranks = run_ranks(bench_rank, args.world, args, e, timeout_s=1800, start_method="spawn")
    acct = embedding_memory(args.rows, args.dim, e, args.world, args.batch_per_rank, args.seq_len)
    return {"E": e, "M": args.world // e, "accounting": acct.as_dict(),
            "step_s_max_rank": max(r["step_s"] for r in ranks),
            "alltoall_bytes_mean_rank": statistics.mean(r["alltoall"] for r in ranks),
            "replica_bytes_mean_rank": statistics.mean(r["replica"] for r in ranks),
            "peak_rss_mib_max_rank": max(r["peak_rss_mib"] for r in ranks),
            "base_rss_mib": max(r["base_rss_mib"] for r in ranks), "ranks": ranks}


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\n{args.rows:,} rows x {args.dim} dims fp32, world {args.world}, {args.batch_per_rank} x "
          f"{args.seq_len} ids per rank per step, {args.steps} timed steps (median; slowest rank)")
    head = ("E", "M", "shard rows", "params", "adagrad state", "step buffers", "peak RSS (meas.)",
            "step s", "all-to-all B/step (meas.)", "(bound)", "replica B/step (meas.)", "(bound)")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in results:
        a = r["accounting"]
        cells = (r["E"], r["M"], f"{a['shard_rows']:,}", mib(a["parameters"]), mib(a["optimizer_state"]),
                 mib(a["lookup_forward"] + a["lookup_backward"] + a["replica_sync"]),
                 f"{r['peak_rss_mib_max_rank']:,.0f} MiB", f"{r['step_s_max_rank']:.3f}",
                 f"{r['alltoall_bytes_mean_rank']:,.0f}", f"{a['alltoall_bytes_per_step']:,}",
                 f"{r['replica_bytes_mean_rank']:,.0f}",
                 f"{a['replica_sync'] if a['num_replicas'] > 1 else 0:,}")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print("measured bytes: sent to other ranks by one rank per step (ids+counts+embeddings+gradients);"
          " bound: (E-1)/E * n * (8 + 2 * dim * 4) + (E-1) * 8 with n ids and no dedup."
          f" Process baseline RSS before the table: {results[0]['base_rss_mib']:.0f} MiB.")


def quality_rank(rank: int, world: int, layouts: list, setup) -> list[dict]:
    from hybridrec.embedding.quality import load_data, train_sharded

    data = load_data(setup)
    return [train_sharded(rank, world, e, mode, c, setup, data) for e, mode, c in layouts]


def run_quality(args: argparse.Namespace) -> list[dict]:
    from hybridrec.embedding.quality import QualitySetup, load_data, train_baseline

    setup = QualitySetup(steps=args.quality_steps, cache_dir=args.cache_dir)
    data = load_data(setup)  # build the cache once before the ranks read it
    results = [train_baseline(setup, data)]
    m = args.world // 2
    layouts = [(2, "grad", 1.0), (2, "weights", float(m)), (2, "weights", 1.0)]
    results += run_ranks(quality_rank, args.world, layouts, setup, timeout_s=1800, start_method="spawn")[0]
    print(f"\nQuality: synthetic tiny ({data.num_users} users, {data.num_items} items), {setup.steps} steps, "
          f"global batch {setup.global_batch}, dim {setup.dim}, lr {setup.lr}; test split, 100 uniform negatives")
    print("| layout | HR@10 | NDCG@10 | dHR@10 vs unsharded | wall s |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['layout']} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | "
              f"{r['HR@10'] - results[0]['HR@10']:+.4f} | {r['wall_s']} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--group-sizes", default="4,2", help="comma list of E (E=world first)")
    parser.add_argument("--batch-per-rank", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--out", default="", help="write all figures here as JSON")
    parser.add_argument("--trainer", action="store_true",
                        help="trainer mode: the 2D table as the job's item table (benchmarks/embedding_2d_trainer.py)")
    try:
        from benchmarks.embedding_2d_trainer import add_arguments, run_trainer
    except ImportError:  # run as a script from another directory: its own folder is on sys.path
        from embedding_2d_trainer import add_arguments, run_trainer

    add_arguments(parser)
    args = parser.parse_args()
    report: dict = {"args": vars(args)}
    if args.trainer:
        report.update(run_trainer(args))
        if args.out:
            atomic_write_json(args.out, report)
        return
    if not args.quality_only:
        report["layouts"] = [run_layout(args, int(e)) for e in args.group_sizes.split(",")]
        print_table(report["layouts"], args)
    if args.quality or args.quality_only:
        report["quality"] = run_quality(args)
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
