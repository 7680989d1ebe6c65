"""Sync vs bounded-staleness async data parallelism with one slowed rank (GradSync's straggler knob).

A small next-item model (item embedding of the last 3 items -> linear scores over all items) trained
on synthetic Markov sequences by 4 local gloo ranks with Adam; gradients averaged by GradSync (flat
or hierarchical over 2 logical racks). Each configuration trains the same number of steps from the
same initial weights; reported: global samples/s (steps * global batch / wall time of the slowest
rank), the ratio to sync, final training loss, and HR@10 (full ranking over all items) on held-out
transitions.

Straggler patterns (`--patterns`, side by side in one run, each as sync / async s=1 / async s=4, plus one
sync run without stragglers); every pattern delays a rank by `--delay` seconds per step on average, drawn
from one seeded schedule that every rank computes alike (the benchmark sleeps on the delayed rank right
before its gradient sync, where GradSync's own straggler knob sleeps):
  persistent  rank 1 every step (GradSync's knob: the benchmark's default mode without --patterns)
  pareto      each step one random rank, Pareto(shape 1.5) delay (heavy tail, capped at 20x the mean)
  lognormal   each step one random rank, lognormal(sigma 1) delay
  burst       every 10 steps one random rank is delayed 3 steps in a row (10/3 x the mean each)

Usage: .venv/bin/python benchmarks/async_dp.py [--steps 100] [--delay 0.05] [--every 1] [--out FILE]
       .venv/bin/python benchmarks/async_dp.py --patterns pareto,lognormal,burst,persistent --steps 200
       .venv/bin/python benchmarks/async_dp.py --codecs topk,sign1bit --ratio 0.1   (accuracy vs dense)
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrec.config.comm import AllreduceConfig, CompressionConfig
from hybridrec.distributed.allreduce import build_comm_groups
from hybridrec.distributed.grad_sync import GradSync
from hybridrec.distributed.spawn import run_ranks
from hybridrec.io import atomic_write_json
from hybridrec.topology import RackMap

WORLD = 4
RACKS = ["rack1", "rack1", "rack2", "rack2"]


PATTERNS = ("persistent", "pareto", "lognormal", "burst")
PARETO_SHAPE, LOGNORMAL_SIGMA, BURST_EVERY, BURST_LEN, CAP = 1.5, 1.0, 10, 3, 20.0


def delay_schedule(pattern: str, steps: int, world: int, mean_s: float, seed: int = 0) -> list[list[float]]:
    """delays[step][rank] in seconds; every pattern averages `mean_s` per step (before the cap)."""
    rng = random.Random(seed)
    delays = [[0.0] * world for _ in range(steps)]
    if pattern not in PATTERNS:
        raise ValueError(f"straggler pattern {pattern!r}: expected one of {PATTERNS}")
    for step in range(steps):
        if pattern == "persistent":
            delays[step][1 % world] = mean_s
        elif pattern == "pareto":  # x_m * U^(-1/a) has mean x_m a / (a - 1)
            x_m = mean_s * (PARETO_SHAPE - 1) / PARETO_SHAPE
            draw = x_m * (1.0 - rng.random()) ** (-1.0 / PARETO_SHAPE)
            delays[step][rng.randrange(world)] = min(draw, CAP * mean_s)
        elif pattern == "lognormal":
            draw = mean_s * math.exp(rng.gauss(0.0, LOGNORMAL_SIGMA) - LOGNORMAL_SIGMA**2 / 2)
            delays[step][rng.randrange(world)] = min(draw, CAP * mean_s)
        elif step % BURST_EVERY == 0:
            rank = rng.randrange(world)
            for k in range(step, min(steps, step + BURST_LEN)):
                delays[k][rank] = mean_s * BURST_EVERY / BURST_LEN
    return delays


def markov_data(num_items: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(history of 3 items, next item): each item has 3 likely successors (p=0.8), else uniform."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.randint(1, num_items, (num_items, 3), generator=torch.Generator().manual_seed(7))
    seq = torch.empty(n, 4, dtype=torch.long)
    seq[:, 0] = torch.randint(1, num_items, (n,), generator=gen)
    for t in range(1, 4):
        follow = torch.rand(n, generator=gen) < 0.8
        pick = successors[seq[:, t - 1], torch.randint(0, 3, (n,), generator=gen)]
        seq[:, t] = torch.where(follow, pick, torch.randint(1, num_items, (n,), generator=gen))
    return seq[:, :3], seq[:, 3]


class NextItem(torch.nn.Module):
    def __init__(self, num_items: int, dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(num_items, dim)
        self.mix = torch.nn.Linear(3 * dim, dim)
        self.out = torch.nn.Linear(dim, num_items)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mix(self.embed(history).flatten(1))))


def train_worker(rank: int, world: int, cfg: dict) -> dict:
    torch.set_num_threads(1)
    groups = build_comm_groups([list(range(world))], RackMap.from_racks_list(RACKS))
    train_x, train_y = markov_data(cfg["items"], 20_000, seed=1)
    test_x, test_y = markov_data(cfg["items"], 2_000, seed=2)
    results = {}
    for name, mode, staleness, delay, codec, pattern in cfg["runs"]:
        schedule = delay_schedule(pattern, cfg["steps"], world, cfg["delay"]) if pattern else None
        torch.manual_seed(0)
        model = NextItem(cfg["items"], cfg["dim"])
        optim = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        allreduce = AllreduceConfig(algorithm=cfg["algorithm"], mode=mode, staleness=staleness, bucket_mb=4,
                                    straggler_rank=1 if delay > 0 and not pattern else -1, straggler_delay_s=delay,
                                    straggler_every=cfg["every"])
        compression = CompressionConfig(codec=codec, ratio=cfg["ratio"], hops="all")
        sync = GradSync.from_config(groups, allreduce, compression)
        params = [p for p in model.parameters()]
        gen = torch.Generator().manual_seed(100 + rank)
        dist.barrier()
        start = time.perf_counter()
        losses = []
        for step in range(cfg["steps"]):
            rows = torch.randint(0, train_x.shape[0], (cfg["batch"],), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(train_x[rows]), train_y[rows])
            optim.zero_grad()
            loss.backward()
            if schedule is not None and schedule[step][rank] > 0:
                time.sleep(schedule[step][rank])
            sync.sync_([p.grad for p in params])
            optim.step()
            losses.append(loss.item())
        sync.close()
        wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        with torch.no_grad():
            scores = model(test_x)
            target = scores.gather(1, test_y[:, None])
            ranks = (scores > target).sum(dim=1)
            hr10 = float((ranks < 10).float().mean())
        final = torch.tensor([sum(losses[-10:]) / 10], dtype=torch.float64)
        dist.all_reduce(final)
        results[name] = {"wall_s": float(wall), "samples_per_s": cfg["steps"] * cfg["batch"] * world / float(wall),
                         "final_loss": float(final) / world, "hr10": hr10, "mode": mode, "staleness": staleness,
                         "straggler_delay_s": delay, "pattern": pattern or ("persistent knob" if delay else "none"),
                         "total_delay_s": sum(max(d) for d in schedule) if schedule else delay * cfg["steps"] / cfg["every"]}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--delay", type=float, default=0.05, help="straggler sleep (s) on rank 1")
    parser.add_argument("--every", type=int, default=1, help="straggler sleeps every N steps")
    parser.add_argument("--algorithm", default="hierarchical", choices=["flat", "hierarchical"])
    parser.add_argument("--codecs", default="", help="instead: dense vs these codecs (e.g. topk,sign1bit), no straggler")
    parser.add_argument("--ratio", type=float, default=0.1, help="top-k ratio for --codecs")
    parser.add_argument("--patterns", default="", help=f"instead: transient straggler patterns from {PATTERNS}")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    load_before = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    runs = [("sync, no straggler", "sync", 0, 0.0, "none", ""), ("sync", "sync", 0, args.delay, "none", ""),
            ("async s=1", "async", 1, args.delay, "none", ""), ("async s=4", "async", 4, args.delay, "none", "")]
    if args.patterns:
        runs = [("sync, no straggler", "sync", 0, 0.0, "none", "")]
        for pattern in args.patterns.split(","):
            runs += [(f"{pattern}: {label}", mode, s, args.delay, "none", pattern)
                     for label, mode, s in (("sync", "sync", 0), ("async s=1", "async", 1), ("async s=4", "async", 4))]
    if args.codecs:
        runs = [("sync, no straggler", "sync", 0, 0.0, "none", "")] + [
            (f"sync {codec} (ratio {args.ratio}) + EF, all hops", "sync", 0, 0.0, codec, "")
            for codec in args.codecs.split(",")]
    cfg = {**vars(args), "runs": runs}
    started = time.time()
    results = run_ranks(train_worker, WORLD, cfg, timeout_s=1200)[0]
    load_after = subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    what = (f"straggler patterns {args.patterns} (mean {args.delay}s per step)" if args.patterns
            else f"straggler rank 1 sleeps {args.delay}s every {args.every} step(s)")
    print(f"# async DP: {WORLD} ranks ({args.algorithm}), {args.steps} steps x {args.batch}/rank, {what}; "
          f"{time.time() - started:.0f} s\n# load before: {load_before}\n# load after:  {load_after}\n")
    print("samples/s = steps * batch * ranks / wall time of the slowest rank; ratio = samples/s / the sync run "
          "with the same stragglers; dHR = HR@10 / that sync run's - 1\n")
    print("| run | samples/s | ratio vs sync | total injected delay s | final loss (last 10 steps) | HR@10 (full ranking) | dHR |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        pattern = name.split(": ")[0] if ": " in name else None
        base = results[f"{pattern}: sync" if pattern else ("sync" if "sync" in results else "sync, no straggler")]
        print(f"| {name} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x | "
              f"{r['total_delay_s']:.2f} | {r['final_loss']:.3f} | {r['hr10']:.3f} | {r['hr10'] / base['hr10'] - 1:+.1%} |")
    if args.out:
        atomic_write_json(args.out, {"args": vars(args), "results": results, "load_before": load_before,
                                     "load_after": load_after})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
