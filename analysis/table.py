"""The paper's Table 2 as markdown and CSV from `Run` records (pure formatting; owns the column meanings)."""

from __future__ import annotations

import csv
import io

from analysis.runs import Run
from hybridrec.telemetry.timers import PHASES

PROTOCOL_PREFERENCE = ("uni100", "pop100", "full")
# the two full-ranking conventions (history included / input window excluded) always shown beside the main one
FULL_RANKING = ("full", "full_excl")


def pick_protocol(runs: list[Run], requested: str | None) -> str:
    if requested:
        return requested
    present = {p for run in runs for p in run.metrics}
    for protocol in PROTOCOL_PREFERENCE:
        if protocol in present:
            return protocol
    return min(present) if present else "uni100"


def shown_protocols(runs: list[Run], protocol: str) -> list[str]:
    """The protocol asked for first, then each full-ranking convention the runs have (side by side)."""
    present = {p for run in runs for p in run.metrics}
    return [protocol] + [p for p in FULL_RANKING if p in present and p != protocol]


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def _layout(run: Run) -> str:
    return "×".join(str(run.layout.get(k, "?")) for k in ("tp", "pp", "dp"))


def _comm(run: Run) -> tuple[float | None, str]:
    if run.comm_share_all is not None:
        return run.comm_share_all, ""
    return run.summary_comm_share, "*" if run.summary_comm_share is not None else ""


def markdown(runs: list[Run], protocol: str, skip_steps: int) -> str:
    done = [r for r in runs if r.status == "done"]
    protocols = shown_protocols(done, protocol)
    metric_heads = "".join(f"| HR@10 {p} [8] | NDCG@10 {p} [8] " for p in protocols)
    lines = [
        f"# Results: {len(done)} finished run(s), {len(runs) - len(done)} failed or partial",
        "",
        ("| scheme | layout tp×pp×dp | throughput (samples/s) [1] | comm share (%) [2] | dp comm exposed (%) [3] "
         "| dp comm overlapped (%) [3] | GPU util (%) [4] | GPU mem util (%) [5] | process CPU (%) [6] | peak mem (MiB) [7] "
         + metric_heads + "|"),
        "|---|---|" + "---:|" * (8 + 2 * len(protocols)),
    ]
    for run in done:
        comm, mark = _comm(run)
        metrics = "".join(f"| {_fmt(run.metric(p, 'HR@10'), '.4f')} | {_fmt(run.metric(p, 'NDCG@10'), '.4f')} "
                          for p in protocols)
        lines.append(
            f"| {run.scheme} | {_layout(run)} | {_fmt(run.samples_per_s, '.1f')} | {_fmt(comm, '.1f', 100)}{mark} "
            f"| {_fmt(run.comm_share_dp, '.1f', 100)} | {_fmt(run.dp_overlapped_share, '.1f', 100)} "
            f"| {_fmt(run.gpu_util_pct, '.1f')} "
            f"| {_fmt(run.gpu_mem_util_pct, '.1f')} | {_fmt(run.cpu_util_pct, '.0f')} "
            f"| {_fmt(run.peak_mem_bytes, '.0f', 1 / 2**20)} " + metrics + "|")
    if not done:
        lines.append("| (no finished runs) |" + "  |" * (9 + 2 * len(protocols)))
    # the same data and candidates for every run of a sweep: one reference row
    baselines = {p: next((r.baseline[p] for r in done if r.baseline.get(p)), None) for p in protocols}
    if any(baselines.values()):
        cells = "".join(f"| {_fmt((b or {}).get('HR@10'), '.4f')} | {_fmt((b or {}).get('NDCG@10'), '.4f')} "
                        for b in baselines.values())
        lines.append("| most-popular baseline [9] " + "|  " * 9 + cells + "|")
    reasons = sorted({r.nvml_absent_reason for r in done if r.nvml_absent_reason})
    lines += [
        "",
        ("[1] Global training samples per second over the whole run, from the trainer's summary.json "
         "(steps × global batch / training wall time)."),
        ("[2] Communication share of step time, from the per-rank phase timers: (dp_comm_intra + dp_comm_cross "
         f"+ dp_comm + tp_comm + pp_p2p) / step wall time, mean over steps (first {skip_steps} skipped as "
         "warm-up) and then over ranks. Pipeline bubble (waiting for the neighbouring stage) is not counted as "
         "communication. `*` = no telemetry: the trainer's summary comm_share (dp comm time / step time)."),
        ("[3] Data-parallel gradient communication only. Exposed: what the step waited for, (dp_comm_intra + "
         "dp_comm_cross + dp_comm) / step time (all of it when the sync runs after backward). Overlapped: "
         "seconds GradSync's worker communicated while the step computed (allreduce.overlap, async), "
         "dp_comm_overlapped_s / step time; hidden, so not part of the step time. n/a = no GradSync or "
         "telemetry without it."),
        ("[4] NVML GPU utilization (percent of time a kernel ran), mean over all samples of all GPUs of all "
         "ranks. n/a = no NVML samples: NVML absent" + (f" ({'; '.join(reasons)})" if reasons else "")
         + " or no sampler in the run (see Notes); no GPU numbers are made up."),
        "[5] NVML memory used / total, mean over the same samples.",
        ("[6] CPU time of the training process per wall second × 100 (100 = one core busy), mean over "
         "samples and ranks; sampled only where NVML is absent."),
        "[7] Peak memory per rank, max over ranks: torch.cuda.max_memory_allocated on GPU, max RSS on CPU.",
        (f"[8] Leave-one-out evaluation, protocols {', '.join(protocols)} (uni100/pop100: target ranked against "
         "100 fixed uniform/popularity-sampled negatives; full: against all items, the user's history included; "
         "full_excl: against all items but the input window, as most published SASRec numbers use), from "
         "summary.json."),
        ("[9] Items ranked by training-set popularity, on the same users, split and candidates "
         "(summary.json baseline_most_popular); a model below it has not learned the sequences."),
    ]
    failed = [r for r in runs if r.status != "done"]
    if failed:
        lines += ["", "## Failed or partial runs", ""]
        lines += [f"- `{r.path}` ({r.scheme}): **{r.status}**: {r.reason}" for r in failed]
    notes = [(r, n) for r in runs for n in r.notes]
    if notes:
        lines += ["", "## Notes", ""] + [f"- `{r.path}`: {n}" for r, n in notes]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
    "scheme", "status", "reason", "path", "tp", "pp", "dp", "allreduce_algorithm", "codec", "topk_ratio",
    "steps", "samples_per_s", "wall_s", "comm_share_all", "comm_share_dp", "dp_overlapped_share", "summary_comm_share",
    "gpu_util_pct", "gpu_mem_util_pct", "process_cpu_util_pct", "peak_mem_bytes",
    "dp_bytes_intra_per_step", "dp_bytes_cross_per_step", "hr_at_10", "ndcg_at_10", "protocol",
] + [f"{m}_at_10_{p}" for p in FULL_RANKING for m in ("hr", "ndcg")] \
  + [f"share_{p}" for p in PHASES] + [f"mean_{p}_s" for p in PHASES]


def csv_text(runs: list[Run], protocol: str) -> str:
    """All runs (failed ones too), raw numbers; shares are fractions of step time (0..1)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        row = {
            "scheme": run.scheme, "status": run.status, "reason": run.reason, "path": str(run.path),
            "tp": run.layout.get("tp"), "pp": run.layout.get("pp"), "dp": run.layout.get("dp"),
            "allreduce_algorithm": run.algorithm, "codec": run.codec, "topk_ratio": run.ratio,
            "steps": run.steps, "samples_per_s": run.samples_per_s, "wall_s": run.wall_s,
            "comm_share_all": run.comm_share_all, "comm_share_dp": run.comm_share_dp,
            "dp_overlapped_share": run.dp_overlapped_share,
            "summary_comm_share": run.summary_comm_share, "gpu_util_pct": run.gpu_util_pct,
            "gpu_mem_util_pct": run.gpu_mem_util_pct, "process_cpu_util_pct": run.cpu_util_pct,
            "peak_mem_bytes": run.peak_mem_bytes, "dp_bytes_intra_per_step": run.dp_bytes_intra,
            "dp_bytes_cross_per_step": run.dp_bytes_cross, "hr_at_10": run.metric(protocol, "HR@10"),
            "ndcg_at_10": run.metric(protocol, "NDCG@10"), "protocol": protocol,
        }
        for p in FULL_RANKING:
            row.update({f"hr_at_10_{p}": run.metric(p, "HR@10"), f"ndcg_at_10_{p}": run.metric(p, "NDCG@10")})
        row.update({f"share_{p}": run.phase_share.get(p) for p in PHASES})
        row.update({f"mean_{p}_s": run.phase_mean_s.get(p) for p in PHASES})
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
