"""PNG plots of a sweep (matplotlib, Agg backend; owns what each figure shows). Each function returns the
written path, or a string saying why the plot was skipped (no data of that kind in the sweep)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from analysis.runs import Run
from hybridrec.io import atomic_path
from hybridrec.telemetry.timers import PHASES

PHASE_COLORS = {
    "forward": "#4c72b0", "backward": "#55a868", "optimizer": "#8172b2", "dp_comm_intra": "#dd8452",
    "dp_comm_cross": "#c44e52", "dp_comm": "#e8a33d", "tp_comm": "#937860", "pp_p2p": "#da8bc3",
    "pp_bubble": "#64b5cd", "other": "#cccccc",
}


def _save(fig: plt.Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def throughput(runs: list[Run], path: Path) -> Path | str:
    done = [r for r in runs if r.status == "done" and r.samples_per_s is not None]
    if not done:
        return "no finished run with a throughput"
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(done) + 2), 3.8))
    ax.bar(range(len(done)), [r.samples_per_s for r in done], color="#4c72b0")
    ax.set_xticks(range(len(done)), [r.scheme for r in done], rotation=30, ha="right")
    ax.set_ylabel("throughput (global samples/s)")
    ax.set_title("Throughput per scheme (summary.json samples_per_s)")
    return _save(fig, path)


def time_breakdown(runs: list[Run], path: Path) -> Path | str:
    done = [r for r in runs if r.status == "done" and r.phase_share]
    if not done:
        return "no finished run with phase timers"
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(done) + 3), 4))
    bottom = [0.0] * len(done)
    for phase in PHASES:
        values = [100 * r.phase_share.get(phase, 0.0) for r in done]
        if not any(values):
            continue
        ax.bar(range(len(done)), values, bottom=bottom, label=phase, color=PHASE_COLORS[phase])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(done)), [r.scheme for r in done], rotation=30, ha="right")
    ax.set_ylabel("share of step wall time (%)")
    ax.set_title("Step time by phase (mean over steps, then ranks)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def utilization(runs: list[Run], path: Path) -> Path | str:
    series = [r for r in runs if r.util_series is not None and len(r.util_series[0])]
    if not series:
        return "no utilization samples"
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = set()
    for run in series:
        t, values, what = run.util_series  # type: ignore[misc]
        ax.plot(t, values, label=run.scheme, linewidth=1)
        labels.add(what.split(", rank")[0])
    ax.set_xlabel("time since sampler start (s)")
    ax.set_ylabel(" / ".join(sorted(labels)))
    ax.set_title("Utilization over time (rank 0 of each run)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _topk_runs(runs: list[Run]) -> list[Run]:
    return sorted([r for r in runs if r.status == "done" and r.codec in ("topk", "none")], key=lambda r: r.ratio)


def hr_vs_ratio(runs: list[Run], path: Path, protocol: str) -> Path | str:
    points = [(r.ratio, r.metric(protocol, "HR@10"), r) for r in _topk_runs(runs)]
    points = [p for p in points if p[1] is not None]
    if not any(r.codec == "topk" for _, _, r in points):
        return "no finished top-k run with HR@10"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    topk = [(x, y) for x, y, r in points if r.codec == "topk"]
    ax.plot([x for x, _ in topk], [y for _, y in topk], "o-", label="top-k + error feedback")
    dense = [y for _, y, r in points if r.codec == "none"]
    if dense:
        ax.axhline(sum(dense) / len(dense), color="k", linestyle="--", linewidth=1,
                   label=f"dense (mean of {len(dense)})")
    ax.set_xscale("log")
    ax.set_xlabel("top-k ratio k (fraction of gradient entries sent)")
    ax.set_ylabel(f"HR@10 ({protocol})")
    ax.set_title("Recommendation quality vs compression")
    ax.legend(fontsize=8)
    return _save(fig, path)


def bytes_vs_k(runs: list[Run], path: Path) -> Path | str:
    points = [r for r in _topk_runs(runs) if r.dp_bytes_intra is not None or r.dp_bytes_cross is not None]
    if not any(r.codec == "topk" for r in points):
        return "no finished top-k run with byte counts"
    if not all((r.dp_bytes_intra or 0) + (r.dp_bytes_cross or 0) > 0 for r in points):
        return "some runs recorded 0 dp bytes (the trainer did not feed ByteCounter counts to the timers)"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [r.ratio for r in points]
    total = [(r.dp_bytes_intra or 0) + (r.dp_bytes_cross or 0) for r in points]
    ax.plot(xs, total, "o-", label="intra + cross rack")
    if any(r.dp_bytes_cross for r in points):
        ax.plot(xs, [r.dp_bytes_cross or 0 for r in points], "s--", label="cross rack")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("top-k ratio k (1.0 = dense)")
    ax.set_ylabel("dp gradient bytes sent per rank per step")
    ax.set_title("Gradient traffic vs k")
    ax.legend(fontsize=8)
    return _save(fig, path)


def validation_curve(runs: list[Run], path: Path) -> Path | str:
    """Validation HR@10 / NDCG@10 (both full-ranking conventions) against the step, per run, with the
    best-validation step (whose weights gave the test metrics) marked."""
    done = [r for r in runs if r.status == "done" and r.validation_curve]
    if not done:
        return "no finished run with a validation curve (train.eval_every=0)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for ax, name in zip(axes, ("HR@10", "NDCG@10")):
        for run in done:
            for protocol, style in (("full", "-"), ("full_excl", "--")):
                points = [(p["step"], p["metrics"][protocol][name]) for p in run.validation_curve
                          if name in (p.get("metrics") or {}).get(protocol, {})]
                if points:
                    ax.plot(*zip(*points), style, marker=".", label=f"{run.scheme} ({protocol})")
            if run.best_step is not None:
                ax.axvline(run.best_step, color="#888888", lw=0.8, ls=":")
        ax.set_xlabel("training step (dotted: best validation step)")
        ax.set_ylabel(f"validation {name}")
        ax.set_title(f"Validation {name}, full ranking")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _save(fig, path)


def all_plots(runs: list[Run], out_dir: str | os.PathLike, protocol: str) -> dict[str, Path | str]:
    out = Path(out_dir)
    makers: dict[str, Callable[[], Path | str]] = {
        "throughput.png": lambda: throughput(runs, out / "throughput.png"),
        "time_breakdown.png": lambda: time_breakdown(runs, out / "time_breakdown.png"),
        "utilization.png": lambda: utilization(runs, out / "utilization.png"),
        "hr_vs_ratio.png": lambda: hr_vs_ratio(runs, out / "hr_vs_ratio.png", protocol),
        "bytes_vs_k.png": lambda: bytes_vs_k(runs, out / "bytes_vs_k.png"),
        "validation_curve.png": lambda: validation_curve(runs, out / "validation_curve.png"),
    }
    results: dict[str, Path | str] = {}
    for name, make in makers.items():
        try:
            results[name] = make()
        except Exception as exc:  # noqa: BLE001 - a broken plot must never take the table down with it
            plt.close("all")
            results[name] = f"failed: {type(exc).__name__}: {exc}"
    return results
