"""Find the run dirs of a sweep and reduce each to one `Run` record (owns how a run's numbers are derived).

A run dir is any directory holding `summary.json`, `telemetry/` or `.hydra/` (a Hydra job dir that may have
died before writing anything else). Nothing here raises on a bad run: problems become `status`/`reason`.

Derived numbers (all documented in the table footnotes, see analysis/table.py):
- phase shares: per rank, mean over steps (after `skip_steps` warm-up steps) of t_<phase>_s / wall_s;
  then the mean over ranks.
- comm share (all) = dp_comm_intra + dp_comm_cross + dp_comm + tp_comm + pp_p2p, as a share of step time;
  dp comm share = the three dp phases only.
- GPU util / GPU mem util: mean over every NVML sample of every GPU of every rank (gpu*_util_pct,
  gpu*_mem_util_pct); None when no rank had NVML. CPU util: mean process CPU % where NVML was absent.
- dp bytes per step: mean over steps and ranks of dp_bytes_intra / dp_bytes_cross (bytes sent per rank).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrec.errors import DataError
from hybridrec.telemetry.recorder import read_rank_file
from hybridrec.telemetry.timers import COMM_PHASES, DP_PHASES, PHASES


@dataclass
class Run:
    path: Path
    status: str = "failed"  # done | failed | partial
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    scheme: str = ""
    layout: dict[str, int] = field(default_factory=dict)
    algorithm: str = ""
    codec: str = "none"
    ratio: float = 1.0
    steps: int = 0
    samples_per_s: float | None = None
    wall_s: float | None = None
    summary_comm_share: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)  # most-popular on the same candidates
    validation_curve: list[dict[str, Any]] = field(default_factory=list)  # summary.json validation.curve
    best_step: int | None = None  # the step whose weights gave the test metrics (validation.best_step)
    ranks: int = 0
    steps_recorded: int = 0
    phase_share: dict[str, float] = field(default_factory=dict)
    phase_mean_s: dict[str, float] = field(default_factory=dict)
    comm_share_all: float | None = None
    comm_share_dp: float | None = None  # exposed: the dp phases (what the step waited for) / step time
    dp_overlapped_share: float | None = None  # dp sync seconds hidden behind compute (GradSync worker) / step time
    gpu_util_pct: float | None = None
    gpu_mem_util_pct: float | None = None
    cpu_util_pct: float | None = None
    nvml_absent_reason: str = ""
    peak_mem_bytes: float | None = None
    dp_bytes_intra: float | None = None
    dp_bytes_cross: float | None = None
    util_series: tuple[np.ndarray, np.ndarray, str] | None = None  # (t_s, values, what) of rank 0

    def metric(self, protocol: str, name: str) -> float | None:
        value = self.metrics.get(protocol, {}).get(name)
        return None if value is None else float(value)


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """Run dirs under `sweep_dir` (itself included), in natural path order; dot-dirs are not entered."""
    found: list[Path] = []
    for root, dirs, files in os.walk(sweep_dir):
        here = Path(root)
        is_run = "summary.json" in files or "telemetry" in dirs or ".hydra" in dirs
        if is_run:
            found.append(here)
            dirs[:] = [d for d in dirs if d not in ("telemetry", ".hydra") and not d.startswith(".")]
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=_natural_key)


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _describe_config(run: Run, config: dict[str, Any], layout: Any) -> None:
    lay = layout if isinstance(layout, dict) else {}
    par = _get(config, "parallel", default={}) or {}
    for key in ("tp", "pp", "dp"):
        value = lay.get(key, par.get(key))
        if isinstance(value, int | float) and value:
            run.layout[key] = int(value)
    run.algorithm = str(_get(config, "allreduce", "algorithm", default="") or "")
    run.codec = str(_get(config, "compression", "codec", default="none") or "none")
    ratio = _get(config, "compression", "ratio", default=1.0)
    run.ratio = float(ratio) if run.codec == "topk" and ratio is not None else 1.0
    name = str(config.get("name") or "")
    if not name:
        name = "-".join(f"{k}{run.layout[k]}" for k in ("tp", "pp", "dp") if k in run.layout) or run.path.name
        if run.algorithm and run.algorithm != "megatron":
            name += f" {run.algorithm}"
        if run.codec != "none":
            name += f" {run.codec}" + (f"{run.ratio:g}" if run.codec == "topk" else "")
    run.scheme = name


def _last_error_line(run_dir: Path) -> str:
    """The last line mentioning an error in the run dir's logs (Hydra job log, submitit .err)."""
    for pattern in ("*.err", "*.log"):
        for log in sorted(run_dir.glob(pattern)):
            try:
                lines = log.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in reversed(lines):
                if re.search(r"error|exception|killed|cancelled", line, re.IGNORECASE):
                    return f"{log.name}: {line.strip()[:200]}"
    return ""


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _reduce_telemetry(run: Run, ranks: dict[int, dict[str, Any]], skip_steps: int) -> None:
    shares: dict[str, list[float]] = {p: [] for p in PHASES}
    means: dict[str, list[float]] = {p: [] for p in PHASES}
    comm_all, comm_dp, intra, cross, peak, overlapped = [], [], [], [], [], []
    gpu_util, gpu_mem, cpu_util, reasons = [], [], [], set()
    for rank, data in sorted(ranks.items()):
        steps = data["steps"]
        n = len(steps.get("step", []))
        run.steps_recorded = max(run.steps_recorded, n)
        sel = slice(skip_steps if n > skip_steps else 0, None)
        wall = steps.get("wall_s")
        if wall is not None and n:
            wall = wall[sel]
            for p in PHASES:
                col = steps.get(f"t_{p}_s")
                if col is not None:
                    shares[p].append(float(np.nanmean(col[sel] / wall)))
                    means[p].append(float(np.nanmean(col[sel])))
            comm_all.append(float(np.nanmean(sum(steps.get(f"t_{p}_s", 0 * wall)[sel] for p in COMM_PHASES)
                                             / wall)))
            comm_dp.append(float(np.nanmean(sum(steps.get(f"t_{p}_s", 0 * wall)[sel] for p in DP_PHASES)
                                            / wall)))
            if "dp_comm_overlapped_s" in steps:
                overlapped.append(float(np.nanmean(steps["dp_comm_overlapped_s"][sel] / wall)))
        for key, sink in (("dp_bytes_intra", intra), ("dp_bytes_cross", cross)):
            if key in steps and n:
                sink.append(float(np.nanmean(steps[key][sel])))
        if "peak_mem_bytes" in steps and n:
            peak.append(float(np.nanmax(steps["peak_mem_bytes"])))
        samples, info = data["samples"], data["samples_info"]
        for key, values in samples.items():
            if re.fullmatch(r"gpu\d+_util_pct", key):
                gpu_util.extend(values[np.isfinite(values)].tolist())
            elif re.fullmatch(r"gpu\d+_mem_util_pct", key):
                gpu_mem.extend(values[np.isfinite(values)].tolist())
            elif key == "cpu_util_pct":
                cpu_util.extend(values[np.isfinite(values)].tolist())
        if info.get("nvml_absent_reason"):
            reasons.add(str(info["nvml_absent_reason"]))
        if run.util_series is None and "t_s" in samples:
            util_key = "gpu0_util_pct" if "gpu0_util_pct" in samples else "cpu_util_pct"
            if util_key in samples:
                what = "GPU util (%)" if util_key.startswith("gpu") else "process CPU (%), no NVML"
                run.util_series = (samples["t_s"], samples[util_key], f"{what}, rank {rank}")
    run.phase_share = {p: v for p in PHASES if (v := _mean(shares[p])) is not None}
    run.phase_mean_s = {p: v for p in PHASES if (v := _mean(means[p])) is not None}
    run.comm_share_all, run.comm_share_dp = _mean(comm_all), _mean(comm_dp)
    run.dp_overlapped_share = _mean(overlapped)
    run.dp_bytes_intra, run.dp_bytes_cross = _mean(intra), _mean(cross)
    run.peak_mem_bytes = max(peak) if peak else None
    run.gpu_util_pct, run.gpu_mem_util_pct = _mean(gpu_util), _mean(gpu_mem)
    run.cpu_util_pct = _mean(cpu_util)
    run.nvml_absent_reason = "; ".join(sorted(reasons))
    if not any(len(data["samples"].get("t_s", [])) for data in ranks.values()):
        run.notes.append("no utilization samples in telemetry (the trainer ran without the sampler)")


def load_run(run_dir: Path, skip_steps: int = 1) -> Run:
    """Everything the table and plots need from one run dir; never raises for a broken run."""
    run = Run(path=run_dir)
    summary: dict[str, Any] | None = None
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise TypeError("top level is not an object")
        except (OSError, ValueError, TypeError) as exc:
            run.reason = f"summary.json unreadable: {exc}"
            summary = None
    ranks: dict[int, dict[str, Any]] = {}
    tele = run_dir / "telemetry"
    for path in sorted(tele.glob("rank*.h5"), key=_natural_key) if tele.is_dir() else []:
        digits = path.stem[len("rank"):]
        if not digits.isdigit():
            continue
        try:
            ranks[int(digits)] = read_rank_file(path)
        except DataError as exc:
            run.notes.append(f"telemetry/{path.name} unreadable ({str(exc)[-120:]})")
    run.ranks = len(ranks)
    config = _get(summary, "config", default=None)
    if not isinstance(config, dict) and ranks:
        config = _get(next(iter(ranks.values())), "metadata", "config", default={})
    layout = _get(summary, "layout", default=None)
    if layout is None and ranks:
        layout = _get(next(iter(ranks.values())), "metadata", "layout", default={})
    _describe_config(run, config if isinstance(config, dict) else {}, layout)
    if ranks:
        _reduce_telemetry(run, ranks, skip_steps)
    elif tele.is_dir() or summary is not None:
        run.notes.append("no readable telemetry/rank*.h5")
    if summary is not None:
        run.steps = int(summary.get("steps") or 0)
        run.samples_per_s = summary.get("samples_per_s")
        run.wall_s = summary.get("wall_s")
        run.summary_comm_share = summary.get("comm_share")
        run.metrics = summary.get("metrics") or {}
        run.baseline = summary.get("baseline_most_popular") or {}
        validation = summary.get("validation") if isinstance(summary.get("validation"), dict) else {}
        run.validation_curve = [p for p in validation.get("curve") or [] if isinstance(p, dict) and "step" in p]
        run.best_step = validation.get("best_step")
        status = str(summary.get("status", ""))
        if status == "done":
            run.status, run.reason = "done", ""
        else:
            run.status = "failed"
            run.reason = f"status '{status}': {summary.get('error') or 'no error message'}"
    elif not run.reason:
        run.status = "partial" if ranks else "failed"
        what = f"telemetry holds {run.steps_recorded} steps" if ranks else "no telemetry either"
        run.reason = f"no summary.json (job did not finish); {what}"
    if run.status != "done":
        log_line = _last_error_line(run_dir)
        if log_line:
            run.reason += f"; {log_line}"
    return run


def load_sweep(sweep_dir: str | os.PathLike, skip_steps: int = 1) -> list[Run]:
    return [load_run(path, skip_steps) for path in find_run_dirs(sweep_dir)]
