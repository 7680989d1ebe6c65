"""Fault injection under torchrun (marker `faults`): a rank killed / raising / simulated OOM / exiting at
step s ends every other rank within a bounded time, torchrun's report names the rank, its exit code and
host, and no process is left behind; a hanging rank makes the others hit the collective timeout. Real
gloo processes (`python -m hybridrec.faults worker`: one all_reduce per step), plus the knob's parser."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hybridrec.distributed.spawn import RankFailure, live_processes_with_env, root_cause, run_torchrun
from hybridrec.errors import ConfigError
from hybridrec.faults import FaultSpec

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parent.parent


def test_fault_spec_parses_and_refuses_bad_knobs() -> None:
    assert FaultSpec.parse("kind=kill,at=step,rank=1,step=3") == FaultSpec("kill", "step", 1, 3)
    assert FaultSpec.parse("kind=hang") == FaultSpec("hang", "step", 0, 1)
    assert FaultSpec("raise", "ckpt_file", -1, 4).matches("ckpt_file", 4, 7)
    assert not FaultSpec("raise", "step", 1, 4).matches("step", 4, 0)
    with pytest.raises(ConfigError, match="HYBRIDREC_FAULT.kind.*'explode'.*one of kill"):
        FaultSpec.parse("kind=explode")
    with pytest.raises(ConfigError, match="HYBRIDREC_FAULT.at"):
        FaultSpec.parse("kind=kill,at=nowhere")
    with pytest.raises(ConfigError, match="HYBRIDREC_FAULT.step.*an integer"):
        FaultSpec.parse("kind=kill,step=three")
    with pytest.raises(ConfigError, match="kind=..,at=.."):
        FaultSpec.parse("kind=kill,when=now")


def launch_worker(fault: str, nproc: int = 3, steps: int = 40, timeout: float = 60.0,
                  limit: float = 240.0) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run the gloo worker under torchrun with the knob (hard deadline `limit`); returns (process, wall
    seconds, seconds from the injected fault to torchrun's exit)."""
    token = uuid.uuid4().hex
    env = {**os.environ, "HYBRIDREC_FAULT": fault, "FAULT_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = run_torchrun(nproc, "hybridrec.faults", ["worker", "--steps", str(steps), "--step-seconds", "0.05",
                                                    "--timeout", str(timeout)], timeout_s=limit, env=env, cwd=REPO)
    end = time.time()
    injected = re.search(r"\[fault\] injecting .* t=(\d+\.\d+)", proc.stderr)
    after = end - float(injected.group(1)) if injected else None
    assert live_processes_with_env("FAULT_TOKEN", token) == [], "processes left behind"
    return proc, end - start, after


@pytest.mark.parametrize("kind", ["kill", "raise", pytest.param("oom", marks=pytest.mark.slow),
                                  pytest.param("exit", marks=pytest.mark.slow)])
def test_dying_rank_ends_every_rank_and_is_named_with_its_host(kind: str) -> None:
    proc, wall, after = launch_worker(f"kind={kind},rank=1,step=3")
    host = socket.gethostname()
    assert proc.returncode == 1  # torchrun's code when a rank failed
    assert "done" not in proc.stdout
    # torchrun names the failed rank (first observed failure), its exit code and its host
    expected = {"kill": -9, "exit": 3, "raise": 1, "oom": 1}[kind]
    assert f"rank      : 1 (local_rank: 1)\n  exitcode  : {expected} " in proc.stderr, proc.stderr[-2000:]
    assert root_cause(proc.stderr) == RankFailure(1, 1, expected, socket.getfqdn()), proc.stderr[-2000:]
    if kind == "raise":
        assert f"injected fault: rank 1 on host {host}" in proc.stderr
    if kind == "oom":
        assert "OutOfMemoryError: injected out-of-memory error: rank 1" in proc.stderr
    # bounded: the others are gone well before their 60 s collective timeout
    assert after is not None and after < 20, (after, proc.stderr[-2000:])
    print(f"{kind}: torchrun exited {after:.2f} s after the fault (wall {wall:.1f} s)")


def test_hanging_rank_makes_the_others_time_out_with_a_clear_error() -> None:
    proc, wall, after = launch_worker("kind=hang,rank=1,step=3", timeout=8.0)
    assert proc.returncode != 0
    # ranks 0 and 2 give up after the collective timeout and say so; torchrun ends the hung rank
    assert "collective failed at step 4 (another rank died or hung)" in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"[Tt]imed out|[Tt]imeout", proc.stderr)
    failure = root_cause(proc.stderr)
    assert proc.returncode == 1 and failure is not None and failure.rank in (0, 2), proc.stderr[-2000:]
    assert after is not None and 8.0 <= after < 40, after
    print(f"hang: torchrun exited {after:.2f} s after the hang began (collective timeout 8 s, wall {wall:.1f} s)")


def test_sweep_status_names_the_rank_that_failed_first_not_rank0s_broken_connection() -> None:
    from jobs.sweep import point_state

    summary = {"status": "failed", "error": "RuntimeError: Connection reset by peer"}
    errors = ["rank 1 on n2: ended without a result (killed by a signal or the OOM killer?)",
              "rank 0 on n1: RuntimeError: Connection reset by peer"]
    assert point_state(None, summary, errors, None, "") == (
        "failed", errors[0] + " (then 1 other rank(s) failed)")
    assert point_state(None, summary, [], None, "") == ("failed", summary["error"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["kill", "raise"])
def test_real_trainer_rank_dying_ends_the_job_without_a_done_result(kind: str, tmp_path: Path) -> None:
    """dp2 training under torchrun, rank 1 dies at step 2: the run ends, torchrun names rank 1, no
    process is left, and no summary.json says done (rank 0 records the failure if it gets to)."""
    token = uuid.uuid4().hex
    out = tmp_path / "run"
    env = {**os.environ, "HYBRIDREC_FAULT": f"kind={kind},rank=1,step=2", "FAULT_TOKEN": token}
    args = ["run", "jobs.train_job", "parallel=dp2", "parallel.micro_batch_size=16",
            "model=sasrec_tiny", "train=quick", "train.steps=6", "eval.protocols=[uni100]", "eval.baseline=false",
            "telemetry.enabled=false", "parallel.timeout_s=300", f"hydra.run.dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    proc = run_torchrun(2, "hybridrec.faults", args, timeout_s=600, env=env, cwd=REPO)
    end = time.time()
    failure = root_cause(proc.stderr)
    assert proc.returncode == 1 and failure is not None and failure.rank == 1, proc.stderr[-3000:]
    assert failure.exitcode == {"kill": -9, "raise": 1}[kind]
    injected = re.search(r"\[fault\] injecting .* t=(\d+\.\d+)", proc.stderr)
    assert injected and end - float(injected.group(1)) < 30
    assert live_processes_with_env("FAULT_TOKEN", token) == []
    summary = out / "summary.json"
    if summary.exists():
        import json

        assert json.loads(summary.read_text())["status"] == "failed"
    print(f"trainer {kind}: torchrun exited {end - float(injected.group(1)):.2f} s after the fault")
