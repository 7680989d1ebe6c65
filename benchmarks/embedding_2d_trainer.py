"""Trainer mode of `benchmarks/embedding_2d.py`: the 2D table as the job's item table, side by side.

Runs `jobs.train_job` under torchrun (`--world` local ranks, parallel=auto_dp) with the same data,
model, batches and steps for each layout, and reads each run's summary.json: the `embedding`
record (rows, parameter + optimizer-state bytes per rank, all-to-all bytes per step and the bound),
step time (train_s / steps) and HR@10 / NDCG@10. Layouts (`--layouts`, comma list of names):

    off          megatron's own item table (today's job; Adam)
    e1_adam      E = 1, replica_sync=grad, table on Adam: the unsharded job's numerics
    e1           E = 1 (replicated), replica_sync=grad, row-wise AdaGrad: the 2D runs' reference
    e2           E = 2, replica_sync=weights, momentum-scaled row-wise AdaGrad (c = M): the paper's 2D
    e2_plain     E = 2, replica_sync=weights, plain row-wise AdaGrad (c = 1): the ablation
    full         E = world (full sharding), row-wise AdaGrad
    tp2_off      tp = 2 x dp = world / 2, megatron's vocab-parallel table (Adam)
    tp2_e2       tp = 2 x dp = world / 2, E = 2 over the dp ranks (copied over tp), row-wise AdaGrad

Then prints the per-rank table memory at `--rows` x `--dim` (default 5M x 64) from the trainer's
own accounting (`hybridrec.embedding.trainer_table.table_accounting`) for every E.

    .venv/bin/python benchmarks/embedding_2d.py --trainer --data ml100k --train-steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hybridrec.embedding.memory import mib
from hybridrec.embedding.trainer_table import table_accounting

ROOT = Path(__file__).parents[1]


def layouts(world: int) -> dict[str, list[str]]:
    rowwise = ["embedding.optimizer=rowwise_adagrad"]
    return {
        "off": ["embedding=off"],
        "e1_adam": ["embedding=replicated", "embedding.optimizer=adam"],
        "e1": ["embedding=replicated", *rowwise],
        "e2": ["embedding=two_d", "embedding.group_size=2"],
        "e2_plain": ["embedding=two_d", "embedding.group_size=2", *rowwise],
        "full": ["embedding=full_shard", f"embedding.group_size={world}", *rowwise],
        "tp2_off": ["parallel.tp=2", "embedding=off"],
        "tp2_e2": ["parallel.tp=2", "embedding=two_d", "embedding.group_size=2", *rowwise],
    }


def run_job(name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict:
    run_dir = out / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.world),
           "-m", "jobs.train_job", f"data={args.data}", f"model={args.model}", "parallel=auto_dp",
           f"train.steps={args.train_steps}", f"train.global_batch_size={args.global_batch}",
           f"parallel.micro_batch_size={args.global_batch // args.world}", f"train.lr={args.lr}",
           f"embedding.lr={args.table_lr}", "train.clip_grad=0", "train.save_final=false", "telemetry=off",
           "eval.protocols=[full,uni100]", "eval.baseline=false", f"train.log_every={args.train_steps}",
           f"train.seed={1234 + args.seed}", f"model.init_seed={args.seed}",
           *overrides, f"hydra.run.dir={run_dir}", f"data.cache_dir={args.cache_dir or out / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=args.timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    emb = summary.get("embedding") or {}
    return {
        "layout": name, "overrides": overrides, "wall_s": round(time.perf_counter() - start, 1),
        "E": emb.get("group_size", "-"), "M": emb.get("replicas", "-"), "optimizer": emb.get("optimizer", "adam (megatron)"),
        "momentum_scale": emb.get("momentum_scale"), "rows_per_rank": emb.get("max_rows_over_ranks", summary["data"]["vocab_size"]),
        "table_bytes_per_rank": (emb.get("parameter_bytes_per_rank", 0) + emb.get("optimizer_state_bytes_per_rank", 0))
        if emb else summary["data"]["vocab_size"] * _hidden(summary) * 4 * 3,
        "alltoall_bytes_per_step": emb.get("alltoall_bytes_per_step_mean", 0.0),
        "alltoall_bound": emb.get("alltoall_bound_bytes_per_step", 0),
        "scoring_bytes_per_step": emb.get("scoring_bytes_per_step_mean", 0.0),
        "replica_bytes_per_step": emb.get("replica_sync_bytes_per_step_mean", 0.0),
        "step_s": summary["train_s"] / max(summary["steps"], 1),
        "final_loss": summary["loss_curve"][-1][1], "seed": args.seed,
        "HR@10": summary["metrics"]["uni100"]["HR@10"], "NDCG@10": summary["metrics"]["uni100"]["NDCG@10"],
        "HR@10_full": summary["metrics"]["full"]["HR@10"], "num_items": summary["data"]["num_items"],
    }


def _hidden(summary: dict) -> int:
    return int(summary["config"]["model"]["hidden_size"])


def print_results(results: list[dict], args: argparse.Namespace) -> None:
    ref = next((r for r in results if r["layout"] == "e1"), results[0])
    print(f"\nTrainer mode: {args.data}, {args.model}, seed {args.seed}, {args.world} ranks (auto_dp), {args.train_steps} steps x "
          f"{args.global_batch}, dense lr {args.lr}, table lr {args.table_lr} (row-wise AdaGrad); uni100 test")
    print("| layout | E | M | table optimizer | rows/rank | table params+state / rank | all-to-all B/step (bound) "
          "| scoring B/step | replica B/step | step s | final train loss | HR@10 | NDCG@10 | dHR@10 vs e1 | HR@10 full |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        opt = r["optimizer"] + (f" c={r['momentum_scale']:g}" if r["momentum_scale"] not in (None, 1.0) else "")
        print(f"| {r['layout']} | {r['E']} | {r['M']} | {opt} | {r['rows_per_rank']:,} | {mib(r['table_bytes_per_rank'])} "
              f"| {r['alltoall_bytes_per_step']:,.0f} ({r['alltoall_bound']:,}) | {r['scoring_bytes_per_step']:,.0f} "
              f"| {r['replica_bytes_per_step']:,.0f} | {r['step_s']:.3f} | {r['final_loss']:.4f} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} "
              f"| {r['HR@10'] - ref['HR@10']:+.4f} | {r['HR@10_full']:.4f} |")


def accounting_at_scale(args: argparse.Namespace) -> list[dict]:
    tokens = (args.scale_batch_per_rank * args.scale_seq_len)
    rows = []
    for e in [1, *[d for d in range(2, args.world + 1) if args.world % d == 0]]:
        for opt in ("rowwise_adagrad", "adam"):
            acct = table_accounting(args.rows, args.dim, e, args.world, opt, tokens_per_step=tokens)
            rows.append({"E": e, "optimizer": opt, **acct})
    print(f"\nPer-rank table memory at {args.rows:,} items x {args.dim} (trainer accounting, "
          f"table_accounting; fp32; {args.world} ranks; all-to-all bound at {tokens:,} ids per rank and step)")
    print("| E | M | optimizer | rows/rank | params / rank | optimizer state / rank | grad buffer / rank | total / rank "
          "| vs replicated | all-to-all bound B/step |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        total = r["parameter_bytes"] + r["optimizer_state_bytes"] + r["gradient_buffer_bytes"]
        full = r["replicated_parameter_bytes"] + r["replicated_optimizer_state_bytes"] + r["replicated_parameter_bytes"]
        print(f"| {r['E']} | {args.world // r['E']} | {r['optimizer']} | {r['rows_per_rank']:,} | {mib(r['parameter_bytes'])} "
              f"| {mib(r['optimizer_state_bytes'])} | {mib(r['gradient_buffer_bytes'])} | {mib(total)} "
              f"| {total / full:.3f} | {r['alltoall_bound_bytes_per_step']:,} |")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("trainer mode (--trainer)")
    group.add_argument("--data", default="ml100k")
    group.add_argument("--model", default="sasrec_tiny")
    group.add_argument("--train-steps", type=int, default=300)
    group.add_argument("--global-batch", type=int, default=128)
    group.add_argument("--lr", type=float, default=0.005)
    group.add_argument("--table-lr", type=float, default=0.05)
    group.add_argument("--layouts", default="e1,e2,e2_plain,full")
    group.add_argument("--seed", type=int, default=0, help="every run: train.seed=1234+seed (batches), model.init_seed=seed (weights); 0 = the defaults")
    group.add_argument("--run-dir", default="", help="keep the runs here (default: a temporary directory)")
    group.add_argument("--timeout", type=float, default=3600)
    group.add_argument("--scale-batch-per-rank", type=int, default=128)
    group.add_argument("--scale-seq-len", type=int, default=50)


def run_trainer(args: argparse.Namespace) -> dict:
    import tempfile

    names = args.layouts.split(",")
    table = layouts(args.world)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"--layouts: unknown {unknown}; choose from {sorted(table)}")
    with tempfile.TemporaryDirectory(prefix="emb2d-trainer-") as tmp:
        out = Path(args.run_dir or tmp)
        results = []
        for name in names:
            results.append(run_job(name, table[name], args, out))
            print(f"  {name}: HR@10 {results[-1]['HR@10']:.4f}, step {results[-1]['step_s']:.3f} s", flush=True)
    print_results(results, args)
    return {"trainer": results, "accounting_at_scale": accounting_at_scale(args)}
