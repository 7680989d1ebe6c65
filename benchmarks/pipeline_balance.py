"""Pipeline balance benchmark: the even split vs the profiled (balanced) split of the same recommender,
side by side in one run, on real gloo pipeline ranks with megatron-core's 1F1B schedule.

The model is deliberately imbalanced the way a recommender is: a large item vocabulary makes the output
layer + loss (last stage) heavy. Steps: (1) profile every piece on one process (`hybridrec.train.profile`,
process CPU time, 1 thread); (2) choose the balanced split (`hybridrec.train.balance`); (3) for each
pp, launch pp ranks that build BOTH models and alternate their training steps (so load changes on a
shared machine hit both alike) and time them.

Figures (medians over the measured steps, plus the best step: interference from other processes only
adds time, so the fastest step is the least disturbed): step = wall seconds of `Trainer.train_step` (max over
ranks); samples/s = global batch / step; stage compute = megatron's forward-compute + backward-compute
timers per step (wall, and process CPU time = the work without waiting for a core on a shared
machine); measured bubble = 1 - stage compute / megatron's forward-backward window, averaged
over stages, next to the 1F1B theory (p-1)/(m+p-1); ratio = balanced samples/s / uniform samples/s;
slowest-stage CPU ratio = max stage CPU work uniform / balanced (the speed-up 1F1B gets when every stage
has its own core; on an oversubscribed machine the wall ratio falls toward 1 because the stages then
share cores and the total work, not the slowest stage, sets the pace).
Usage: .venv/bin/python benchmarks/pipeline_balance.py [--pp 2 4] [--steps 6] [--out runs/...json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from hybridrec.config.model import ModelConfig
from hybridrec.io import atomic_write_json


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=args.heads,
                       ffn_hidden_size=4 * args.hidden, dropout=0.0, vocab_pad_multiple=128)


def worker(spec_path: str) -> None:
    """One rank: build every model variant of the spec (e.g. uniform and balanced splits), alternate
    their training steps, gather per-step timings on rank 0. Also used by benchmarks/layouts.py."""
    import torch.distributed as dist

    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.distributed import backend
    from hybridrec.distributed.env import DistEnv, init_process_group
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.model import parallel, sasrec
    from hybridrec.telemetry.timers import PhaseTimers
    from hybridrec.train.loop import Batch, Trainer
    from hybridrec.train.profile import timed_collectives

    spec = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(1)
    device = backend.setup("cpu")
    env = DistEnv.from_environ()
    init_process_group(env, "gloo", timeout_s=600)
    tp = spec.get("tp", 1)
    layout = ParallelLayout.build(ParallelConfig(tp=tp, pp=spec["pp"], micro_batch_size=args.mbs), env.world_size,
                                  args.global_batch)
    parallel.initialize(layout.tp, layout.pp, 1, seed=7)
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(args.items, 128, tp), args.seq, args.items)
    trainers = {}
    for name, counts in spec["partitions"].items():
        first, last = (counts[0], counts[-1]) if counts and len(set(counts)) > 1 else (None, None)
        mcfg = replace(model_config(args), num_layers_in_first_pipeline_stage=first,
                       num_layers_in_last_pipeline_stage=last)
        tconfig = sasrec.transformer_config(mcfg, layout.tp, layout.pp, 1, device)
        chunks = sasrec.build_chunks(mcfg, shape, tconfig, backend.device())
        timers = PhaseTimers(cuda_sync=False)
        trainers[name] = (Trainer(chunks, tconfig, layout, TrainConfig(lr=1e-3), timers=timers), timers,
                          len(chunks[0].decoder.layers))
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, args.items + 1, (args.global_batch, args.seq), generator=gen)
    labels = torch.randint(1, args.items + 1, (args.global_batch, args.seq), generator=gen)
    per_dp = args.global_batch // layout.dp
    rows = slice(layout.coords(env.rank).dp * per_dp, (layout.coords(env.rank).dp + 1) * per_dp)
    batch = Batch(inputs[rows], labels[rows], torch.ones(per_dp, args.seq))
    records: dict[str, list[dict]] = {name: [] for name in trainers}
    names = list(trainers)
    for step in range(args.warmup + args.steps):
        order = names if step % 2 == 0 else names[::-1]
        for name in order:
            trainer, timers, _ = trainers[name]
            totals: dict[str, float] = {}
            dist.barrier()
            timers.snapshot(reset=True)
            cpu0, began = time.process_time(), time.perf_counter()
            with timed_collectives(totals):
                result = trainer.train_step(batch)
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu0
            if step >= args.warmup:
                snap = timers.snapshot(reset=True)
                records[name].append({"wall_s": wall, "cpu_s": cpu, "loss": result.loss,
                                      "fb_s": snap.get("forward-backward", 0.0), **totals,
                                      **{k: v for k, v in snap.items() if k.endswith("_s")}})
    mine = {"rank": env.rank, "stage": layout.coords(env.rank).pp, "records": records, "layout": layout.name(),
            "layers": {name: t[2] for name, t in trainers.items()}}
    gathered = [None] * env.world_size if env.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if env.rank == 0:
        Path(spec["result"]).write_text(json.dumps(gathered))
    dist.barrier()
    parallel.destroy()
    dist.destroy_process_group()


def summarise(pp: int, m: int, global_batch: int, ranks: list[dict], partitions: dict) -> dict:
    ranks = sorted(ranks, key=lambda r: r["stage"])
    out = {}
    for name in partitions:
        steps = len(ranks[0]["records"][name])
        wall = [max(r["records"][name][i]["wall_s"] for r in ranks) for i in range(steps)]
        compute = [statistics.median(rec["compute_s"] for rec in r["records"][name]) for r in ranks]
        compute_cpu = [statistics.median(rec["compute_cpu_s"] for rec in r["records"][name]) for r in ranks]
        fb = [statistics.median(rec["fb_s"] for rec in r["records"][name]) for r in ranks]
        bubble = [1 - c / f if f > 0 else 0.0 for c, f in zip(compute, fb, strict=True)]
        step = statistics.median(wall)
        out[name] = {
            "layers_per_stage": [r["layers"][name] for r in ranks],
            "step_s": step, "samples_per_s": global_batch / step,
            "stage_compute_s": compute, "stage_max_over_mean": max(compute) / statistics.fmean(compute),
            "stage_compute_cpu_s": compute_cpu,
            "stage_cpu_max_over_mean": max(compute_cpu) / statistics.fmean(compute_cpu),
            "step_s_per_step": wall, "step_s_best": min(wall), "samples_per_s_best": global_batch / min(wall),
            "bubble_measured": statistics.fmean(bubble), "bubble_per_stage": bubble,
            "bubble_theory": (pp - 1) / (m + pp - 1),
            "collective_s": statistics.median(max(rec.get("collective_s", 0.0) for rec in
                                                  (r["records"][name][i] for r in ranks)) for i in range(steps)),
            "loss_last": ranks[-1]["records"][name][-1]["loss"],
        }
    out["ratio_balanced_over_uniform"] = out["balanced"]["samples_per_s"] / out["uniform"]["samples_per_s"]
    # interference on a shared machine only adds time: the fastest step is the least disturbed one
    out["ratio_best_step"] = out["balanced"]["samples_per_s_best"] / out["uniform"]["samples_per_s_best"]
    # 1F1B with a core per stage runs at the pace of the slowest stage: the ratio of the slowest stages'
    # CPU work is the throughput ratio to expect on dedicated cores (a prediction, not a wall-clock figure)
    out["cpu_slowest_stage_ratio"] = (max(out["uniform"]["stage_compute_cpu_s"])
                                      / max(out["balanced"]["stage_compute_cpu_s"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--pp", type=int, nargs="+", default=[2])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--items", type=int, default=16383, help="item vocabulary (heavy output layer)")
    parser.add_argument("--seq", type=int, default=20)
    parser.add_argument("--mbs", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="profiling repetitions per piece")
    parser.add_argument("--out", default="runs/benchmarks/pipeline_balance.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    import tempfile

    from hybridrec.distributed.spawn import run_torchrun
    from hybridrec.model.sasrec import padded_vocab_size
    from hybridrec.train import profile as P
    from hybridrec.train.balance import balanced_partition, uniform_partition

    torch.set_num_threads(1)
    shape = P.ProfileShape(padded_vocab_size(args.items, 128, 1), args.seq, args.mbs)
    began = time.perf_counter()
    costs = P.profile_model(model_config(args), shape, repeats=args.repeats)
    print(P.describe(costs), f"\n(clock: {P.clock_name()}, profiling took {time.perf_counter() - began:.1f} s)")
    report: dict = {"args": vars(args), "profile": {p.name: p.time_s for p in (costs.embedding, *costs.layers,
                                                                              costs.output)}, "runs": {}}
    for pp in args.pp:
        uniform, balanced = uniform_partition(costs, pp), balanced_partition(costs, pp)
        print(f"\npp={pp}: {balanced.reason}")
        partitions = {"uniform": list(uniform.layers_per_stage), "balanced": list(balanced.layers_per_stage)}
        m = args.global_batch // args.mbs
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"pp": pp, "args": vars(args), "partitions": partitions, "result": f"{tmp}/ranks.json"}
            Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
            run = run_torchrun(pp, __file__, ["--worker", f"{tmp}/spec.json"], timeout_s=590, capture=False)
            if run.returncode != 0:
                raise SystemExit(f"pp={pp}: torchrun exited {run.returncode} (its report above names the failed rank)")
            ranks = json.loads(Path(f"{tmp}/ranks.json").read_text())
        summary = summarise(pp, m, args.global_batch, ranks, partitions)
        summary["predicted_stage_s"] = {"uniform": list(uniform.stage_times), "balanced": list(balanced.stage_times)}
        summary["reason"] = balanced.reason
        report["runs"][f"pp{pp}"] = summary
        print_table(pp, m, summary)
    atomic_write_json(args.out, report)
    print(f"\nwritten {args.out}")


def print_table(pp: int, m: int, s: dict) -> None:
    print(f"\n| pp={pp}, m={m} | layers/stage | stage compute wall ms/step | max/mean | stage compute CPU ms/step "
          f"| max/mean | step s (median, best) | samples/s (median, best) | bubble measured | bubble theory (p-1)/(m+p-1) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("uniform", "balanced"):
        r = s[name]
        print(f"| {name} | {r['layers_per_stage']} | {[round(c * 1e3, 1) for c in r['stage_compute_s']]} | "
              f"{r['stage_max_over_mean']:.3f} | {[round(c * 1e3, 1) for c in r['stage_compute_cpu_s']]} | "
              f"{r['stage_cpu_max_over_mean']:.3f} | {r['step_s']:.3f}, {r['step_s_best']:.3f} | "
              f"{r['samples_per_s']:.1f}, {r['samples_per_s_best']:.1f} | "
              f"{r['bubble_measured']:.3f} | {r['bubble_theory']:.3f} |")
    print(f"throughput ratio balanced / uniform (wall): median step {s['ratio_balanced_over_uniform']:.3f}, "
          f"best step {s['ratio_best_step']:.3f}; slowest-stage CPU "
          f"work uniform / balanced = {s['cpu_slowest_stage_ratio']:.3f} (expected ratio with a core per stage)")


if __name__ == "__main__":
    main()
