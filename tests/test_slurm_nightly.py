"""Nightly benchmark runs: regression check and dated HDF5 store (pure + real HDF5), and a real
self-resubmitting nightly job on the private cluster (marker `slurm`)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from jobs import nightly
from jobs.sbatch import Resources


def test_regression_direction_follows_metric_name():
    prev = {"allreduce_16MiB_s": 1.0, "busbw_16MiB_gbit": 10.0, "only_before": 1.0}
    now = {"allreduce_16MiB_s": 1.25, "busbw_16MiB_gbit": 9.5, "only_now": 3.0}
    found = nightly.regressions(prev, now, tolerance=0.10)
    assert [(r.metric, round(r.change, 3)) for r in found] == [("allreduce_16MiB_s", 0.25)]
    # faster / higher is never a regression
    assert nightly.regressions(prev, {"allreduce_16MiB_s": 0.5, "busbw_16MiB_gbit": 20.0}, 0.0) == []


def test_store_appends_dated_nights_and_compares_with_the_previous_one(tmp_path):
    assert nightly.record(tmp_path, "2026-11-20", {"x_s": 1.0, "bw": 5.0}, 0.1, {"job_id": "7"}) == []
    assert nightly.record(tmp_path, "2026-11-21", {"x_s": 1.05, "bw": 5.1}, 0.1) == []
    found = nightly.record(tmp_path, "2026-11-22", {"x_s": 1.5, "bw": 2.0}, 0.1)
    assert sorted(r.metric for r in found) == ["bw", "x_s"]
    assert found[0].previous == 5.1  # compared with the night before, not the first night
    # a rerun of an earlier night compares with the night before it and replaces its group
    assert nightly.record(tmp_path, "2026-11-21", {"x_s": 1.0, "bw": 5.0}, 0.1) == []
    nights = nightly.read_nights(tmp_path)
    assert list(nights) == ["2026-11-20", "2026-11-21", "2026-11-22"]
    assert nights["2026-11-21"] == {"x_s": 1.0, "bw": 5.0}
    with h5py.File(tmp_path / nightly.STORE_FILE, "r") as handle:
        assert handle["nights/2026-11-20"].attrs["job_id"] == "7"
        assert json.loads(handle["nights/2026-11-22"].attrs["regressions"])[0].startswith("bw: 5.1 -> 2")
    report = json.loads((tmp_path / "report-2026-11-22.json").read_text())
    assert report["previous"] == "2026-11-21" and len(report["regressions"]) == 2


@pytest.mark.slurm
def test_nightly_job_runs_suite_stores_results_and_queues_next_night(slurm_env, tmp_path):
    store = tmp_path / "nightly"
    job_id, script = nightly.queue(store, "02:00", "jobs.nightly:allreduce_suite", 0.5,
                                   Resources(nodes=2, timeout_min=10), begin="now", env=slurm_env)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    deadline = time.monotonic() + 90
    while not (store / f"report-{today}.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (store / f"report-{today}.json").exists(), (store / f"nightly-{job_id}.out").read_text()
    metrics = nightly.read_nights(store)[today]
    assert set(metrics) == {"allreduce_1MiB_s", "allreduce_16MiB_s", "busbw_1MiB_gbit", "busbw_16MiB_gbit"}
    assert all(value > 0 for value in metrics.values())
    # the job queued tomorrow's run of the same script before running the suite
    next_id = (store / "next_job_id").read_text().strip()
    shown = subprocess.run(["scontrol", "show", "job", next_id], env=slurm_env, capture_output=True, text=True,
                           check=True).stdout
    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
    assert "JobState=PENDING" in shown and f"StartTime={tomorrow}T02:00:00" in shown, shown
    assert f"Command={script}" in shown
    subprocess.run(["scancel", next_id], env=slurm_env, check=True)
    assert Path(script).read_text().count("sbatch --begin=") == 1
