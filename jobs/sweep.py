"""State of a detached sweep, from its directory and Slurm: `python -m jobs.sweep status|wait|collect|rerun DIR`.

A point is `queued` or `running` while Slurm lists its job (squeue), `done` when rank 0 wrote its
summary.json, `failed` with a reason otherwise: the first error a rank reported through submitit
(its result pickle), Slurm's accounting when there is a slurmdbd (sacct), or "left the queue without a
result" plus the tail of the job's log. Without slurmdbd (`sacct` fails) the state is inferred from
result files and squeue alone; with it every finished point also carries Slurm's own state, exit code,
elapsed time and MaxRSS (`slurm`). When Slurm cannot be reached at all (the cluster is gone, no
configuration) `status` and `collect` still answer from the sweep's own files and say so
(`SlurmUnreachable` note; unfinished points are `unknown`). The state logic (`point_state`) is pure. `rerun` queues only the failed
points again (`--set key=value` to change their config first). `wait` polls until every point is
done or failed, printing a line whenever the count of points per state changes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from jobs.submit import MANIFEST, environ_overlay

SQUEUE_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STOPPED", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def point_state(squeue_state: str | None, summary: Mapping[str, Any] | None, task_errors: list[str],
                sacct_state: str | None, log_tail: str) -> tuple[str, str]:
    """(state, reason) of one point from what could be observed. Pure."""
    if summary is not None and summary.get("status", "done") == "done":
        return "done", ""
    if squeue_state is not None:
        if squeue_state in SQUEUE_RUNNING:
            return "running", ""
        return "queued", squeue_state.lower()
    # the ranks' own errors first: rank 0's summary may only hold the broken connection to the rank
    # that failed first
    if task_errors:
        more = f" (then {len(task_errors) - 1} other rank(s) failed)" if len(task_errors) > 1 else ""
        return "failed", task_errors[0] + more
    if summary is not None:
        return "failed", str(summary.get("error") or f"summary status {summary.get('status')}")
    if sacct_state and sacct_state not in ("RUNNING", "PENDING", "COMPLETED"):
        return "failed", f"slurm: {sacct_state}"
    return "failed", "left the queue without a result" + (f"; log: {log_tail}" if log_tail else "")


class SlurmUnreachable(RuntimeError):
    """squeue could not answer (no controller, no configuration, not installed)."""


def _squeue(env: Mapping[str, str] | None) -> dict[str, str]:
    """job id (array ids as 12_3) -> state, for every job Slurm still lists."""
    conf = _slurm_conf(env)
    if conf is not None and not conf.exists():  # squeue would retry reading it for 60 s
        raise SlurmUnreachable(f"no Slurm configuration at {conf}")
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=20,
                              env=dict(env) if env else None, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise SlurmUnreachable(f"squeue: {err}") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[0]
        raise SlurmUnreachable(f"squeue failed: {first}")
    return dict(line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)


def _slurm_conf(env: Mapping[str, str] | None) -> Path | None:
    """The slurm.conf the clients would read (None when a configless setup may apply)."""
    import os

    conf = (env if env is not None else os.environ).get("SLURM_CONF")
    if conf:
        return Path(conf)
    default = Path("/etc/slurm/slurm.conf")
    return default if not Path("/run/slurm/conf").exists() else None


SACCT_FIELDS = ("JobID", "State", "ExitCode", "Elapsed", "MaxRSS")


def parse_sacct(text: str) -> dict[str, dict[str, str]]:
    """`sacct -n -P -o JobID,State,ExitCode,Elapsed,MaxRSS` lines -> {job id: {state, exit_code, elapsed,
    max_rss}}: state, exit code and elapsed from the job's own line, MaxRSS the largest of its steps'. Pure."""
    jobs: dict[str, dict[str, str]] = {}
    rss: dict[str, tuple[float, str]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SACCT_FIELDS):
            continue
        job_id, state, exit_code, elapsed, max_rss = parts[:5]
        base, _, step = job_id.partition(".")
        if not step:
            jobs[base] = {"state": state.split()[0] if state else "", "exit_code": exit_code, "elapsed": elapsed}
        size = _rss_bytes(max_rss)
        if size is not None and size >= rss.get(base, (-1.0, ""))[0]:
            rss[base] = (size, max_rss)
    for base, info in jobs.items():
        info["max_rss"] = rss.get(base, (0.0, ""))[1]
    return jobs


def _rss_bytes(text: str) -> float | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not match:
        return None
    return float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " ")


def _sacct(job_ids: list[str], env: Mapping[str, str] | None) -> dict[str, dict[str, str]]:
    """Slurm accounting for these jobs, or {} without slurmdbd ('accounting storage is disabled')."""
    if not job_ids:
        return {}
    try:
        proc = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(SACCT_FIELDS)],
                              capture_output=True, text=True, timeout=30, env=dict(env) if env else None,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_sacct(proc.stdout) if proc.returncode == 0 else {}


def _task_errors(folder: Path, job_id: str) -> list[str]:
    """Errors reported by the ranks of a submitit job (their result pickles), earliest first: the rank
    that failed first is the cause, the others usually saw its connection close."""
    errors = []
    reported = set()
    for path in sorted(folder.glob(f"{job_id}_*_result.pkl"), key=lambda p: p.stat().st_mtime_ns):
        rank = path.name[len(job_id) + 1:].split("_")[0]
        reported.add(rank)
        try:
            with open(path, "rb") as handle:
                outcome, payload = pickle.load(handle)
        except Exception:  # noqa: BLE001, S112 - a half-written or foreign pickle is no evidence
            continue
        if outcome == "error":
            lines = [line for line in str(payload).strip().splitlines() if line.strip()]
            errors.append(f"rank {rank}{_rank_host(folder, job_id, rank)}: {lines[-1] if lines else 'error'}")
    # a rank that started but left no result while others reported died silently (SIGKILL, OOM killer):
    # it is the cause, the others only saw its connection close
    started = {p.name[len(job_id) + 1:].split("_")[0] for p in folder.glob(f"{job_id}_*_log.out")}
    silent = sorted(started - reported, key=lambda r: int(r) if r.isdigit() else 0) if reported else []
    return [f"rank {rank}{_rank_host(folder, job_id, rank)}: ended without a result (killed by a signal "
            f"or the OOM killer?)" for rank in silent] + errors


def _rank_host(folder: Path, job_id: str, rank: str) -> str:
    """' on <node>' from submitit's log of that rank ('' when unknown)."""
    path = folder / f"{job_id}_{rank}_log.out"
    try:
        match = re.search(r"hostname=([^,\s)]+)", path.read_text(errors="replace"))
    except OSError:
        return ""
    return f" on {match.group(1)}" if match else ""


def _log_tail(folder: Path, job_id: str, lines: int = 3) -> str:
    for name in (f"{job_id}_0_log.err", f"{job_id}_0_log.out"):
        path = folder / name
        if path.exists():
            tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
            return " | ".join(tail)
    return ""


def status(sweep_dir: Path, env: Mapping[str, str] | None = None,
           notes: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per point. When Slurm cannot be reached the rows come from the sweep's files alone
    (done / failed where they say so, `unknown` otherwise) and a sentence saying so goes to `notes`."""
    manifest = json.loads((Path(sweep_dir) / MANIFEST).read_text())
    folder = Path(manifest["submitit_folder"])
    try:
        queue: dict[str, str] | None = _squeue(env)
    except SlurmUnreachable as err:
        queue = None
        if notes is not None:
            notes.append(f"Slurm is unreachable ({err}); states from the sweep's files")
    summaries = {}
    for point in manifest["points"]:
        summary_path = Path(point["dir"]) / "summary.json"
        summaries[point["job_id"]] = json.loads(summary_path.read_text()) if summary_path.exists() else None
    gone = [p["job_id"] for p in manifest["points"] if queue is not None and p["job_id"] not in queue]
    accounting = _sacct(gone, env) if gone else {}
    rows = []
    for point in manifest["points"]:
        job_id, summary = point["job_id"], summaries[point["job_id"]]
        in_queue = queue.get(job_id) if queue is not None else None
        finished = in_queue is None and (summary is None or summary.get("status", "done") != "done")
        errors = _task_errors(folder, job_id) if finished else []
        slurm = accounting.get(job_id)
        if queue is None and finished and not errors and (summary is None or summary.get("status") == "preempted"):
            state, reason = "unknown", "Slurm unreachable and no result in the sweep's files yet"
        else:
            state, reason = point_state(in_queue, summary, errors, slurm["state"] if slurm else None,
                                        _log_tail(folder, job_id) if finished else "")
        row = {"index": point["index"], "job_id": job_id, "overrides": point["overrides"],
               "state": state, "reason": reason, "dir": point["dir"]}
        if slurm:
            row["slurm"] = slurm
        rows.append(row)
    return rows


def collect(sweep_dir: Path, env: Mapping[str, str] | None = None,
            notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The summary of every done point, with its overrides and job id (from the files when Slurm is gone)."""
    out = []
    for row in status(sweep_dir, env, notes):
        if row["state"] == "done":
            summary = json.loads((Path(row["dir"]) / "summary.json").read_text())
            out.append({"index": row["index"], "job_id": row["job_id"], "overrides": row["overrides"], **summary})
    return out


def rerun(sweep_dir: Path, env: Mapping[str, str] | None = None, overrides: list[str] | None = None) -> list[int]:
    """Queue the failed points again (one new array), as they were or with `key=value` overrides applied
    to their config.yaml; done, queued and running points are left alone. The failed attempt's
    summary.json is kept as summary.attempt<k>.json and the manifest records each point's earlier job
    ids under `history`. Returns the indices queued again."""

    import submitit
    import yaml
    from omegaconf import OmegaConf

    from hybridrec.io import atomic_write_bytes, atomic_write_json
    from jobs.requeue import RequeueableTask

    sweep_dir = Path(sweep_dir)
    manifest = json.loads((sweep_dir / MANIFEST).read_text())
    failed = [row["index"] for row in status(sweep_dir, env) if row["state"] == "failed"]
    if not failed:
        return []
    cfgs = []
    for index in failed:
        point = manifest["points"][index]
        cfg = OmegaConf.create(yaml.safe_load((Path(point["dir"]) / "config.yaml").read_text()))
        for item in overrides or []:
            key, _, value = item.partition("=")
            OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
        plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        atomic_write_bytes(Path(point["dir"]) / "config.yaml", yaml.safe_dump(plain, sort_keys=False).encode())
        summary = Path(point["dir"]) / "summary.json"
        if summary.exists():
            summary.rename(summary.with_name(f"summary.attempt{len(point.get('history', [])) + 1}.json"))
        cfgs.append(plain)
    with environ_overlay(env):  # submitit runs sbatch with os.environ
        executor = submitit.SlurmExecutor(folder=manifest["submitit_folder"])
        executor.update_parameters(job_name=sweep_dir.resolve().name, **manifest["resources"])
        jobs = executor.map_array(RequeueableTask(manifest["task"]), cfgs)
    for index, job in zip(failed, jobs, strict=True):
        point = manifest["points"][index]
        point["history"] = [*point.get("history", []), point["job_id"]]
        point["job_id"] = job.job_id
        if overrides:
            point["rerun_overrides"] = [*point.get("rerun_overrides", []), *overrides]
    atomic_write_json(sweep_dir / MANIFEST, manifest)
    return failed


FINAL_STATES = frozenset({"done", "failed"})


def progress_line(rows: list[dict[str, Any]]) -> str:
    """'2 done, 1 failed, 1 running' (states in a fixed order)."""
    counts = Counter(row["state"] for row in rows)
    order = ["done", "failed", "running", "queued"]
    return ", ".join(f"{counts[state]} {state}" for state in [*order, *sorted(set(counts) - set(order))]
                     if counts[state])


_PROGRESS = re.compile(r"^step\s+(\d+)\s+loss\s+(\S+).*?step_s\s+(\S+)", re.MULTILINE)


def point_progress(log_text: str, total_steps: int | None) -> str | None:
    """'step 40/100 loss 5.123 eta 31 s' from the last progress line of a point's rank-0 log (pure)."""
    found = _PROGRESS.findall(log_text)
    if not found:
        return None
    step, loss, step_s = int(found[-1][0]), found[-1][1], float(found[-1][2])
    if not total_steps:
        return f"step {step} loss {loss}"
    eta = max(total_steps - step, 0) * step_s
    return f"step {step}/{total_steps} loss {loss} eta {eta:.0f} s"


def _running_progress(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """'point <i>: <progress>' for each running point whose rank-0 log has a progress line."""
    manifest = json.loads((Path(sweep_dir) / MANIFEST).read_text())
    folder = Path(manifest["submitit_folder"])
    out = []
    for row in rows:
        if row["state"] != "running":
            continue
        try:
            text = (folder / f"{row['job_id']}_0_log.out").read_text(errors="replace")
            cfg = yaml.safe_load((Path(row["dir"]) / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        progress = point_progress(text, (cfg.get("train") or {}).get("steps"))
        if progress:
            out.append(f"point {row['index']}: {progress}")
    return out


def wait(sweep_dir: Path, env: Mapping[str, str] | None = None, timeout_s: float = 3600.0, poll_s: float = 0.5,
         final: frozenset[str] | set[str] = FINAL_STATES, report: Any = None,
         settle_s: float = 10.0) -> list[dict[str, Any]]:
    """Poll `status` until every point's state is in `final` or `timeout_s` passes; returns the last rows.
    A point failed only by its absence from the queue must stay so for `settle_s` first (`_only_absent`).
    `report(line)` is called whenever the per-state counts or a running point's progress (step, loss,
    ETA from its log) change."""
    deadline, seen = time.monotonic() + timeout_s, ""
    unsettled_since: dict[str, float] = {}
    while True:
        notes: list[str] = []
        rows = status(sweep_dir, env, notes)
        line = "; ".join([progress_line(rows), *_running_progress(sweep_dir, rows), *notes])
        if report is not None and line != seen:
            report(line)
            seen = line
        now = time.monotonic()
        unsettled_since = {row["job_id"]: unsettled_since.get(row["job_id"], now) for row in rows
                           if row["state"] == "failed" and _only_absent(row)}
        settled = all(now - since >= settle_s for since in unsettled_since.values())
        if notes or (settled and all(row["state"] in final for row in rows)) or now > deadline:
            return rows  # nothing more to learn from an unreachable Slurm
        time.sleep(poll_s)


def _only_absent(row: Mapping[str, Any]) -> bool:
    """A failure known only from the job's absence from squeue (no rank error, no summary): during a
    requeue Slurm can drop a job from squeue for a moment (sacct then says FAILED, elapsed 0), so wait
    reads it again before it believes it."""
    return str(row.get("reason", "")).startswith(("slurm: ", "left the queue without a result"))


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        reason = f"  ({row['reason']})" if row["reason"] else ""
        slurm = row.get("slurm")
        acct = (f"\tslurm {slurm['state']} exit {slurm['exit_code']} elapsed {slurm['elapsed']}"
                f"{' maxrss ' + slurm['max_rss'] if slurm.get('max_rss') else ''}") if slurm else ""
        print(f"{row['index']}\t{row['job_id']}\t{row['state']}{reason}{acct}\t{' '.join(row['overrides'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["status", "wait", "collect", "rerun"])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="rerun: override applied to every failed point's config")
    parser.add_argument("--timeout", type=float, default=3600.0, help="wait: give up after this many seconds")
    args = parser.parse_args(argv)
    if not (args.sweep_dir / MANIFEST).exists():
        print(f"no {MANIFEST} in {args.sweep_dir}", file=sys.stderr)
        return 2
    notes: list[str] = []
    if args.action in ("status", "wait"):
        if args.action == "wait":
            rows = wait(args.sweep_dir, timeout_s=args.timeout, poll_s=5.0,
                        report=lambda line: print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True))
            if not all(row["state"] in FINAL_STATES for row in rows):
                print(f"not finished after {args.timeout:.0f} s (or Slurm unreachable)", file=sys.stderr)
                return 3
        else:
            rows = status(args.sweep_dir, notes=notes)
        for note in notes:
            print(note, file=sys.stderr)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_rows(rows)
        return 0 if all(row["state"] != "failed" for row in rows) else 1
    if args.action == "rerun":
        queued = rerun(args.sweep_dir, overrides=args.set)
        print(f"queued again: {queued}" if queued else "no failed point")
        return 0
    rows = collect(args.sweep_dir, notes=notes)
    for note in notes:
        print(note, file=sys.stderr)
    print(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
