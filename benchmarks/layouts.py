"""Layouts benchmark: samples/s and communication share of single-mode (pure dp, pure tp, pure pp) and
hybrid layouts training the same recommender on the same global batch, in one run, as a table.

Each layout is launched as tp*pp*dp local gloo ranks (torchrun, `hybridrec.distributed.spawn.run_torchrun`) running the trainer
(megatron schedules, DDP, optimizer; rank program shared with benchmarks/pipeline_balance.py). Figures
are medians over the measured steps: step = wall seconds of `Trainer.train_step` (max over ranks);
samples/s = global batch / step; compute share = megatron's forward-compute + backward-compute timers /
step; collective share = wall time inside synchronous torch.distributed collectives (tp all-reduces,
DDP gradient all-reduce, embedding and loss reductions) / step (tp all-reduces run inside forward/backward,
so they are counted in the compute share too: the shares overlap and need not sum to 1); p2p share = megatron's pipeline
send/recv timers / step (this includes waiting in the pipeline bubble); all averaged over ranks.
The last-step loss is printed as a check that every layout trains the same model (same weights).
On a shared 2-core machine more ranks than cores slow everything: read the CPU figures as shares.
Usage: .venv/bin/python benchmarks/layouts.py [--max-world 4] [--steps 4] [--out runs/...json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridrec.io import atomic_write_json

BALANCE_SCRIPT = Path(__file__).resolve().parent / "pipeline_balance.py"
# name, tp, pp, dp
LAYOUTS = [("single", 1, 1, 1), ("pure dp", 1, 1, 2), ("pure tp", 2, 1, 1), ("pure pp", 1, 2, 1),
           ("hybrid tp x pp", 2, 2, 1), ("hybrid tp x dp", 2, 1, 2), ("hybrid pp x dp", 1, 2, 2),
           ("hybrid tp x pp x dp", 2, 2, 2)]


def summarise(ranks: list[dict], global_batch: int) -> dict:
    records = [r["records"]["even"] for r in ranks]
    steps = len(records[0])
    wall = [max(rec[i]["wall_s"] for rec in records) for i in range(steps)]

    def share(key: str) -> float:
        return statistics.fmean(statistics.median(rec[i].get(key, 0.0) / rec[i]["wall_s"] for i in range(steps))
                                for rec in records)

    step = statistics.median(wall)
    out = {"step_s": step, "samples_per_s": global_batch / step, "compute_share": share("compute_s"),
           "collective_share": share("collective_s"), "p2p_share": share("p2p_s"),
           "loss_last": records[-1][-1]["loss"], "layout": ranks[0]["layout"]}
    out["comm_share"] = out["collective_share"] + out["p2p_share"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-world", type=int, default=4, help="skip layouts with more ranks than this")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--items", type=int, default=4095)
    parser.add_argument("--seq", type=int, default=20)
    parser.add_argument("--mbs", type=int, default=8)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="runs/benchmarks/layouts.json")
    args = parser.parse_args()

    from hybridrec.distributed.spawn import run_torchrun

    results = {}
    for name, tp, pp, dp in LAYOUTS:
        world = tp * pp * dp
        if world > args.max_world:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            spec = {"tp": tp, "pp": pp, "args": vars(args), "partitions": {"even": None},
                    "result": f"{tmp}/ranks.json"}
            Path(f"{tmp}/spec.json").write_text(json.dumps(spec))
            run = run_torchrun(world, str(BALANCE_SCRIPT), ["--worker", f"{tmp}/spec.json"], timeout_s=590,
                               capture=False)
            if run.returncode != 0:
                print(f"{name}: torchrun exited {run.returncode} (its report above names the failed rank)",
                      file=sys.stderr)
                continue
            results[name] = summarise(json.loads(Path(f"{tmp}/ranks.json").read_text()), args.global_batch)
        r = results[name]
        print(f"done {name} ({r['layout']}): {r['samples_per_s']:.1f} samples/s", flush=True)
    print(f"\nglobal batch {args.global_batch}, micro-batch {args.mbs}, {args.layers} layers, hidden {args.hidden}, "
          f"vocab {args.items + 1}, seq {args.seq}; medians of {args.steps} steps")
    print("| layout | tp-pp-dp | step s | samples/s | compute share | collective share | p2p+bubble share "
          "| comm share | loss (last step) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['layout']} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | {r['compute_share']:.3f} | "
              f"{r['collective_share']:.3f} | {r['p2p_share']:.3f} | {r['comm_share']:.3f} | {r['loss_last']:.6f} |")
    atomic_write_json(args.out, {"args": vars(args), "results": results})
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
