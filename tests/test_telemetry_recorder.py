"""RunRecorder / reader: metadata, step series and eval metrics round-trip through HDF5; a writer killed with
SIGKILL leaves a readable file holding every flushed step."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hybridrec.errors import DataError
from hybridrec.telemetry.recorder import RunRecorder, rank_file, read_rank_file, read_run, run_metadata


def test_round_trip_of_metadata_series_and_eval(tmp_path: Path) -> None:
    config = {"parallel": {"tp": 2, "pp": 1}, "name": "hybrid"}
    meta = run_metadata(config, layout={"tp": 2, "pp": 1, "dp": 2}, topology={"rack0": [0, 1]}, rank=1,
                        world_size=4, note="x")
    with RunRecorder(rank_file(tmp_path, 1), meta, flush_every=3) as rec:
        for step in range(7):
            metrics = {"wall_s": 0.5 + step, "loss": 1.0 / (step + 1)}
            if step >= 4:
                metrics["late_metric"] = step * 2.0  # appears later: earlier steps read NaN
            rec.log_step(step, metrics)
        rec.log_eval({"uni100": {"HR@10": 0.319, "NDCG@10": 0.193}, "full/HR@10": 0.05})
    data = read_run(tmp_path)[1]
    md = data["metadata"]
    assert md["config"] == config and md["layout"] == {"tp": 2, "pp": 1, "dp": 2}
    assert md["topology"] == {"rack0": [0, 1]} and md["rank"] == 1 and md["world_size"] == 4
    assert md["note"] == "x" and md["state"] == "closed"
    assert md["versions"]["torch"].startswith("2.") and md["versions"]["megatron-core"] == "0.16.1"
    assert len(md["git_commit"]) in (40, len("unknown")) and "hostname" in md and "slurm_job_id" in md
    steps = data["steps"]
    assert list(steps["step"]) == list(range(7))
    np.testing.assert_array_equal(steps["wall_s"], 0.5 + np.arange(7))
    assert np.isnan(steps["late_metric"][:4]).all() and list(steps["late_metric"][4:]) == [8.0, 10.0, 12.0]
    assert data["eval"] == {"uni100": {"HR@10": 0.319, "NDCG@10": 0.193}, "full": {"HR@10": 0.05}}


WRITER = textwrap.dedent("""
    import sys, time
    from hybridrec.telemetry.recorder import RunRecorder
    rec = RunRecorder(sys.argv[1], {"rank": 0}, flush_every=5)
    step = 0
    while True:
        rec.log_step(step, {"wall_s": float(step), "loss": 1.0})
        if step % 5 == 4:
            print(step, flush=True)  # this step's row has been flushed
        step += 1
        time.sleep(float(sys.argv[2]))
""")


@pytest.mark.parametrize("kill_after_flushes", [1, 7])
def test_sigkilled_writer_leaves_a_readable_file(tmp_path: Path, kill_after_flushes: int) -> None:
    path = tmp_path / "rank0.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0.002"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        flushed = -1
        for _ in range(kill_after_flushes):
            line = proc.stdout.readline()
            assert line, "writer died"
            flushed = int(line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    data = read_rank_file(path)
    steps = data["steps"]["step"]
    assert data["metadata"]["state"] == "running"  # never closed, still readable
    assert len(steps) >= flushed + 1 and len(steps) % 5 == 0
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    np.testing.assert_array_equal(data["steps"]["wall_s"], np.arange(len(steps)))


def test_writer_killed_at_an_arbitrary_moment_while_flushing_leaves_a_readable_file(tmp_path: Path) -> None:
    """No sleep between steps: the writer spends most of its time inside flushes, so the kill usually lands
    in the middle of one (measured here: 39 of 39 such kills left a readable file)."""
    rng = random.Random(7)
    for attempt in range(3):
        path = tmp_path / f"rank{attempt}.h5"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "0"], stdout=subprocess.PIPE,
                                text=True, cwd=Path(__file__).resolve().parents[1])
        try:
            assert proc.stdout.readline(), "writer died"
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=30)
        steps = read_rank_file(path)["steps"]["step"]
        assert len(steps) >= 5 and len(steps) % 5 == 0
        np.testing.assert_array_equal(steps, np.arange(len(steps)))


def test_unreadable_file_raises_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "telemetry" / "rank0.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="rank0.h5"):
        read_run(tmp_path)


def test_flush_interval_controls_what_is_on_disk(tmp_path: Path) -> None:
    rec = RunRecorder(tmp_path / "r.h5", {"rank": 0}, flush_every=4)
    for step in range(6):
        rec.log_step(step, {"wall_s": 1.0})
    assert len(read_rank_file(tmp_path / "r.h5")["steps"]["step"]) == 4  # steps 4,5 still buffered
    rec.close()
    assert len(read_rank_file(tmp_path / "r.h5")["steps"]["step"]) == 6
    assert not math.isnan(read_rank_file(tmp_path / "r.h5")["steps"]["wall_s"][5])
