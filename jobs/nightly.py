"""Nightly benchmark runs for admins: one command queues a self-resubmitting Slurm job.

    python -m jobs.nightly queue --store /shared/hybridrec-nightly --at 02:00 --nodes 2
    python -m jobs.nightly report --store /shared/hybridrec-nightly

`queue` renders `slurm/templates/nightly.sbatch` into `<store>/nightly.sbatch` and submits it with
`sbatch --begin`; each run first queues the next night's run of the same script, then runs the suite
on all ranks (`run`), and rank 0 appends the metrics to `<store>/nightly.h5` under `/nights/<date>`
(atomically: copy, append, rename) and compares them with the previous night: a metric worse by more
than the tolerance is a regression (exit status 3, so the job shows FAILED). Metric direction: names
ending in `_s` (seconds) are lower-is-better, everything else higher-is-better.
A suite is `module:function` taking the options dict and returning {metric: float}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridrec.io import atomic_path, atomic_write_json
from jobs.sbatch import Resources, render

STORE_FILE = "nightly.h5"
LOWER_IS_BETTER_SUFFIXES = ("_s",)


@dataclass(frozen=True)
class Regression:
    metric: str
    previous: float
    current: float
    change: float  # relative change in the bad direction (0.25 = 25% worse)

    def __str__(self) -> str:
        return f"{self.metric}: {self.previous:.6g} -> {self.current:.6g} ({self.change:+.1%} worse)"


def lower_is_better(metric: str) -> bool:
    return metric.endswith(LOWER_IS_BETTER_SUFFIXES)


def regressions(previous: Mapping[str, float], current: Mapping[str, float], tolerance: float) -> list[Regression]:
    """Metrics present in both nights that got worse by more than `tolerance` (relative). Pure."""
    found = []
    for metric in sorted(set(previous) & set(current)):
        old, new = float(previous[metric]), float(current[metric])
        if old == 0:
            continue
        worse = (new - old) / abs(old) if lower_is_better(metric) else (old - new) / abs(old)
        if worse > tolerance:
            found.append(Regression(metric, old, new, worse))
    return found


def read_nights(store: Path) -> dict[str, dict[str, float]]:
    """date -> metrics, oldest first."""
    import h5py

    path = Path(store) / STORE_FILE
    if not path.exists():
        return {}
    with h5py.File(path, "r") as handle:
        nights = handle.get("nights", {})
        return {date: {name: float(ds[()]) for name, ds in nights[date].items()} for date in sorted(nights)}


def append_night(store: Path, date: str, metrics: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
    """Add (or replace) one night's group, atomically: readers see the old or the new file."""
    import h5py

    path = Path(store) / STORE_FILE
    with atomic_path(path) as tmp:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as handle:
            nights = handle.require_group("nights")
            if date in nights:
                del nights[date]
            group = nights.create_group(date)
            for name, value in metrics.items():
                group.create_dataset(name, data=float(value))
            for key, value in attrs.items():
                group.attrs[key] = value if isinstance(value, int | float | str) else json.dumps(value, default=str)


def record(store: Path, date: str, metrics: Mapping[str, float], tolerance: float,
           attrs: Mapping[str, Any] | None = None) -> list[Regression]:
    """Compare with the latest night before `date`, append, and write `<store>/report-<date>.json`."""
    earlier = {d: m for d, m in read_nights(store).items() if d < date}
    previous_date = max(earlier) if earlier else ""
    found = regressions(earlier[previous_date], metrics, tolerance) if previous_date else []
    report = {"date": date, "previous": previous_date, "metrics": dict(metrics), "tolerance": tolerance,
              "regressions": [str(r) for r in found]}
    append_night(store, date, metrics, {**(attrs or {}), "previous": previous_date,
                                        "regressions": report["regressions"]})
    atomic_write_json(Path(store) / f"report-{date}.json", report)
    return found


def allreduce_suite(options: Mapping[str, Any]) -> dict[str, float]:
    """Default suite: gloo all_reduce time (median of 3) and bus bandwidth among the job's ranks."""
    import torch
    import torch.distributed as dist

    from hybridrec.distributed.env import DistEnv, init_process_group

    init_process_group(DistEnv.from_environ(), "gloo", timeout_s=120)
    world = dist.get_world_size()
    metrics: dict[str, float] = {}
    for mib in (1, 16):
        tensor = torch.ones(mib * 2**18)
        times = []
        for _ in range(3):
            dist.barrier()
            tick = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - tick)
        median = sorted(times)[1]
        metrics[f"allreduce_{mib}MiB_s"] = median
        # nccl-tests' bus bandwidth: algbw * 2(n-1)/n, algbw = bytes / time
        metrics[f"busbw_{mib}MiB_gbit"] = mib * 2**20 * 8 / median * 2 * (world - 1) / max(world, 1) / 1e9
    dist.destroy_process_group()
    return metrics


def _load(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run(store: Path, suite: str, tolerance: float, date: str = "") -> int:
    metrics = _load(suite)({"store": str(store)})
    if int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) != 0:
        return 0
    date = date or time.strftime("%Y-%m-%d", time.gmtime())
    found = record(store, date, metrics, tolerance,
                   {"job_id": os.environ.get("SLURM_JOB_ID", ""), "suite": suite, "created": time.time()})
    print(json.dumps({"date": date, "metrics": metrics}, sort_keys=True))
    for reg in found:
        print(f"REGRESSION {reg}", file=sys.stderr)
    return 3 if found else 0


def queue(store: Path, at: str, suite: str, tolerance: float, resources: Resources, begin: str = "",
          env: Mapping[str, str] | None = None) -> tuple[str, Path]:
    """Write `<store>/nightly.sbatch` and submit it to begin at `begin` (default: the next `at`)."""
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    script = store / "nightly.sbatch"
    text = render("nightly.sbatch", resources, job_name="hybridrec-nightly", log_dir=store, workdir=Path.cwd(),
                  python=sys.executable, script=script,
                  next_begin=f"$(date -d 'tomorrow {at}' +%Y-%m-%dT%H:%M:%S)",
                  run_args=["--store", str(store), "--suite", suite, "--tolerance", str(tolerance)])
    script.write_text(text)
    first = begin or subprocess.run(["date", "-d", at, "+%Y-%m-%dT%H:%M:%S"], capture_output=True, text=True,
                                    check=True).stdout.strip()
    if not begin and first <= time.strftime("%Y-%m-%dT%H:%M:%S"):
        first = subprocess.run(["date", "-d", f"tomorrow {at}", "+%Y-%m-%dT%H:%M:%S"], capture_output=True,
                               text=True, check=True).stdout.strip()
    proc = subprocess.run(["sbatch", "--parsable", f"--begin={first}", str(script)], capture_output=True,
                          text=True, env=dict(env) if env else None, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0], script


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.nightly", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["queue", "run", "report"])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--suite", default="jobs.nightly:allreduce_suite")
    parser.add_argument("--tolerance", type=float, default=0.10, help="relative worsening that counts")
    parser.add_argument("--at", default="02:00", help="time of day of the nightly run")
    parser.add_argument("--begin", default="", help="first run (sbatch --begin syntax); default: next --at")
    parser.add_argument("--date", default="", help="(run) the night's date, default today (UTC)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--tasks-per-node", type=int, default=1)
    parser.add_argument("--partition", default="")
    parser.add_argument("--timeout-min", type=int, default=60)
    args = parser.parse_args(argv)
    if args.action == "run":
        return run(args.store, args.suite, args.tolerance, args.date)
    if args.action == "report":
        for date, metrics in read_nights(args.store).items():
            print(date, json.dumps(metrics, sort_keys=True))
        return 0
    res = Resources(nodes=args.nodes, tasks_per_node=args.tasks_per_node, partition=args.partition,
                    timeout_min=args.timeout_min)
    job_id, script = queue(args.store, args.at, args.suite, args.tolerance, res, args.begin)
    print(f"queued nightly job {job_id} ({script}); it resubmits itself for the next night")
    return 0


if __name__ == "__main__":
    sys.exit(main())
