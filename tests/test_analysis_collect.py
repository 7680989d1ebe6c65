"""analysis.collect on a real small sweep (tiny gloo DP training runs with this project's telemetry): the table
has one row per finished run with numbers taken from the files, failed / killed / empty runs are listed with
their reason, the CSV round-trips, and every plot is a valid PNG."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_telemetry_tinyrun import TinyJob, run_tiny_jobs

from analysis.collect import collect, main
from analysis.runs import load_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    jobs = [
        TinyJob(out_dir=str(root / "0"), name="dense dp2", steps=5),
        TinyJob(out_dir=str(root / "1"), name="topk 0.01", codec="topk", ratio=0.01, steps=5),
        TinyJob(out_dir=str(root / "2"), name="topk 0.1", codec="topk", ratio=0.1, steps=5),
        TinyJob(out_dir=str(root / "3"), name="broken", world_size=1, fail_at_step=2, steps=5),
        TinyJob(out_dir=str(root / "4"), name="killed", world_size=1, crash_at_step=3, steps=6),
    ]
    run_tiny_jobs(jobs)
    (root / "5" / ".hydra").mkdir(parents=True)  # a job that died before writing anything
    (root / "5" / "train_job.log").write_text("[INFO] start\nRuntimeError: CUDA out of memory\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_table_rows_come_from_the_run_files(sweep: Path) -> None:
    result = collect(sweep)
    runs = {r.path.name: r for r in result["runs"]}
    assert sorted(runs) == ["0", "1", "2", "3", "4", "5"]
    assert [runs[k].status for k in "012345"] == ["done", "done", "done", "failed", "partial", "failed"]
    assert result["protocol"] == "uni100"
    md = result["markdown"]
    dense = runs["0"]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    row = next(line for line in md.splitlines() if line.startswith("| dense dp2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1×1×2"
    assert cells[2] == f"{summary['samples_per_s']:.1f}"
    header = next(line for line in md.splitlines() if line.startswith("| scheme |"))
    column = {name.strip(): i for i, name in enumerate(header.strip("|").split("|"))}
    for protocol in [p for p in ("uni100", "full", "full_excl") if p in summary["metrics"]]:
        for name in ("HR@10", "NDCG@10"):
            assert cells[column[f"{name} {protocol} [8]"]] == f"{summary['metrics'][protocol][name]:.4f}"
    assert len(cells) == len(column)
    assert cells[6] == "n/a" and cells[7] == "n/a"  # no NVML here: no GPU numbers
    assert cells[4] == f"{100 * dense.comm_share_dp:.1f}" and cells[5] == "0.0"  # exposed; nothing overlapped
    assert "NVML Shared Library Not Found" in md or "nvmlInit failed" in md
    assert 0 < dense.comm_share_all < 1 and dense.comm_share_all == dense.comm_share_dp
    assert cells[3] == f"{100 * dense.comm_share_all:.1f}"
    assert dense.cpu_util_pct is not None and dense.cpu_util_pct > 0
    # phase shares sum to 1 (timers cover the step wall time, 'other' included)
    assert math.isclose(sum(dense.phase_share.values()), 1.0, rel_tol=1e-9)
    # bytes per step: top-k sends k values + int64 indices per rank, dense sends the fp32 gradient
    assert runs["1"].dp_bytes_intra < runs["2"].dp_bytes_intra < dense.dp_bytes_intra


def test_failed_partial_and_empty_runs_are_listed_with_reasons(sweep: Path) -> None:
    md = collect(sweep, make_plots=False)["markdown"]
    failed = md.split("## Failed or partial runs")[1]
    assert "(broken): **failed**: status 'failed': RuntimeError: injected failure at step 2" in failed
    assert "(killed): **partial**: no summary.json (job did not finish); telemetry holds 4 steps" in failed
    assert "**failed**: no summary.json (job did not finish); no telemetry either; " \
           "train_job.log: RuntimeError: CUDA out of memory" in failed
    assert "| broken |" not in md and "| killed |" not in md


def test_csv_has_every_run_with_raw_numbers(sweep: Path) -> None:
    result = collect(sweep, make_plots=False)
    rows = list(csv.DictReader(io.StringIO((result["out"] / "table.csv").read_text())))
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed", "partial", "failed"]
    dense = rows[0]
    assert float(dense["samples_per_s"]) == json.loads((sweep / "0" / "summary.json").read_text())["samples_per_s"]
    shares = [float(dense[k]) for k in dense if k.startswith("share_")]
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-9)
    assert rows[1]["codec"] == "topk" and float(rows[1]["topk_ratio"]) == 0.01


def test_plots_are_valid_pngs(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(sweep), "--out", str(out)]) == 0
    for name in ("throughput.png", "time_breakdown.png", "utilization.png", "hr_vs_ratio.png", "bytes_vs_k.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, (name, image.shape)
        assert np.ptp(image[..., :3]) > 0, f"{name} is blank"
    assert (out / "table.md").exists() and (out / "table.csv").exists()


def test_collector_survives_garbage(sweep: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(sweep / "0", bad / "0")
    (bad / "0" / "summary.json").write_text("{not json")
    (bad / "0" / "telemetry" / "rank1.h5").write_bytes(b"truncated")
    (bad / "1").mkdir()
    (bad / "1" / "summary.json").write_text(json.dumps({"status": "done", "config": "weird", "metrics": None}))
    runs = {r.path.name: r for r in load_sweep(bad)}
    assert runs["0"].status == "failed" and runs["0"].reason.startswith("summary.json unreadable")
    assert any("rank1.h5 unreadable" in n for n in runs["0"].notes)
    assert runs["1"].status == "done" and runs["1"].samples_per_s is None
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 0
    assert main([str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1


def test_table_has_a_most_popular_row_from_the_summaries(tmp_path: Path) -> None:
    run = tmp_path / "0"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({
        "status": "done", "config": {"name": "dense"}, "layout": {"tp": 1, "pp": 1, "dp": 1}, "steps": 3,
        "samples_per_s": 10.0, "metrics": {"uni100": {"HR@10": 0.5, "NDCG@10": 0.3}},
        "baseline_most_popular": {"uni100": {"HR@10": 0.405, "NDCG@10": 0.2643}}}))
    md = collect(tmp_path)["markdown"]
    row = next(line for line in md.splitlines() if line.startswith("| most-popular baseline"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2:] == ["0.4050", "0.2643"] and len(cells) == 12  # one protocol in the summaries: one pair


def test_both_full_ranking_conventions_sit_beside_the_main_protocol_in_table_and_csv(tmp_path: Path) -> None:
    metrics = {"uni100": {"HR@10": 0.5, "NDCG@10": 0.3}, "full": {"HR@10": 0.13, "NDCG@10": 0.061},
               "full_excl": {"HR@10": 0.2, "NDCG@10": 0.1}}
    baseline = {p: {"HR@10": v["HR@10"] / 2, "NDCG@10": v["NDCG@10"] / 2} for p, v in metrics.items()}
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text(json.dumps({
        "status": "done", "config": {"name": "dense"}, "layout": {"tp": 1, "pp": 1, "dp": 1}, "steps": 3,
        "samples_per_s": 10.0, "metrics": metrics, "baseline_most_popular": baseline}))
    result = collect(tmp_path, make_plots=False)
    lines = result["markdown"].splitlines()
    header = [c.strip() for c in next(x for x in lines if x.startswith("| scheme |")).strip("|").split("|")]
    assert header[-6:] == ["HR@10 uni100 [8]", "NDCG@10 uni100 [8]", "HR@10 full [8]", "NDCG@10 full [8]",
                           "HR@10 full_excl [8]", "NDCG@10 full_excl [8]"]
    row = [c.strip() for c in next(x for x in lines if x.startswith("| dense |")).strip("|").split("|")]
    base = [c.strip() for c in next(x for x in lines if x.startswith("| most-popular")).strip("|").split("|")]
    assert row[-6:] == ["0.5000", "0.3000", "0.1300", "0.0610", "0.2000", "0.1000"]
    assert base[-6:] == ["0.2500", "0.1500", "0.0650", "0.0305", "0.1000", "0.0500"]
    assert len(header) == len(row) == len(base)
    csv_row = next(csv.DictReader(io.StringIO((result["out"] / "table.csv").read_text())))
    assert (csv_row["protocol"], float(csv_row["hr_at_10"])) == ("uni100", 0.5)
    assert float(csv_row["hr_at_10_full"]) == 0.13 and float(csv_row["ndcg_at_10_full_excl"]) == 0.1


def test_validation_curve_plot_comes_from_the_summary_curve(tmp_path: Path) -> None:
    curve = [{"step": s, "metrics": {"full": {"HR@10": h, "NDCG@10": h / 2}, "full_excl": {"HR@10": h + .05,
              "NDCG@10": h / 2 + .02}}, "value": h / 2, "best": h == .13, "seconds": .2}
             for s, h in ((100, .07), (200, .11), (300, .13), (400, .12))]
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text(json.dumps({
        "status": "done", "config": {"name": "ml100k"}, "layout": {"tp": 1, "pp": 1, "dp": 1}, "steps": 400,
        "metrics": {"full": {"HR@10": .13, "NDCG@10": .065}},
        "validation": {"curve": curve, "best_step": 300, "stopped": "steps"}}))
    run = load_sweep(tmp_path)[0]
    assert [p["step"] for p in run.validation_curve] == [100, 200, 300, 400] and run.best_step == 300
    result = collect(tmp_path)
    path = result["plots"]["validation_curve.png"]
    assert isinstance(path, Path) and path.read_bytes()[:8] == PNG_SIGNATURE
    assert np.ptp(matplotlib.image.imread(path)[..., :3]) > 0
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"status": "done", "config": {"name": "x"}}))
    assert "no finished run with a validation curve" in collect(tmp_path)["plots"]["validation_curve.png"]
