"""Fault injection under the local launcher (marker `faults`): a rank killed / raising / simulated OOM /
exiting at step s ends every other rank within a bounded time, the launcher names the rank and host,
and no process is left behind; a hanging rank makes the others hit the collective timeout. Real gloo
processes (`python -m hybridrec.faults worker`: one all_reduce per step), plus the knob's parser."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

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


def leftover_processes(token: str) -> list[int]:
    """pids whose environment carries this launch's token (ranks or their children still alive)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"FAULT_TOKEN={token}".encode() in environ:
            pids.append(int(entry.name))
    return pids


def launch_worker(fault: str, nproc: int = 3, steps: int = 40, timeout: float = 60.0,
                  limit: float = 240.0) -> tuple[subprocess.CompletedProcess, float, float | None]:
    """Run the gloo worker under the launcher CLI with the knob; returns (process, wall seconds, seconds
    from the injected fault to the launcher's exit)."""
    token = uuid.uuid4().hex
    env = {**os.environ, "HYBRIDREC_FAULT": fault, "FAULT_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "hybridrec.distributed.launch", "--nproc-per-node", str(nproc), "--grace", "2",
            "--timeout", str(limit), "hybridrec.faults", "worker", "--steps", str(steps), "--step-seconds", "0.05",
            "--timeout", str(timeout)]
    start = time.time()
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=limit + 60, check=False)
    end = time.time()
    injected = re.search(r"\[fault\] injecting .* t=(\d+\.\d+)", proc.stderr)
    after = end - float(injected.group(1)) if injected else None
    assert leftover_processes(token) == [], "processes left behind"
    return proc, end - start, after


@pytest.mark.parametrize("kind", ["kill", "raise", pytest.param("oom", marks=pytest.mark.slow),
                                  pytest.param("exit", marks=pytest.mark.slow)])
def test_dying_rank_ends_every_rank_and_is_named_with_its_host(kind: str) -> None:
    proc, wall, after = launch_worker(f"kind={kind},rank=1,step=3")
    host = socket.gethostname()
    assert proc.returncode != 0
    assert "done" not in proc.stdout
    # the launcher names the failed rank and its host
    assert re.search(rf"\[launch\] rank 1 on host {re.escape(host)} failed", proc.stderr), proc.stderr[-2000:]
    expected = {"kill": "signal 9", "exit": "exit code 3", "raise": "exit code 1", "oom": "exit code 1"}[kind]
    assert expected in proc.stderr
    if kind == "raise":
        assert f"injected fault: rank 1 on host {host}" in proc.stderr
    if kind == "oom":
        assert "OutOfMemoryError: injected out-of-memory error: rank 1" in proc.stderr
    # bounded: the others are gone well before their 60 s collective timeout
    assert after is not None and after < 20, (after, proc.stderr[-2000:])
    print(f"{kind}: launcher exited {after:.2f} s after the fault (wall {wall:.1f} s)")


def test_hanging_rank_makes_the_others_time_out_with_a_clear_error() -> None:
    proc, wall, after = launch_worker("kind=hang,rank=1,step=3", timeout=8.0)
    assert proc.returncode != 0
    # ranks 0 and 2 give up after the collective timeout and say so; the launcher ends the hung rank
    assert "collective failed at step 4 (another rank died or hung)" in proc.stderr, proc.stderr[-3000:]
    assert re.search(r"[Tt]imed out|[Tt]imeout", proc.stderr)
    assert re.search(r"\[launch\] rank [02] on host \S+ failed", proc.stderr), proc.stderr[-2000:]
    assert after is not None and 8.0 <= after < 40, after
    print(f"hang: launcher exited {after:.2f} s after the hang began (collective timeout 8 s, wall {wall:.1f} s)")


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
    """dp2 training under the local launcher, rank 1 dies at step 2: the launch ends, names rank 1,
    leaves no process, and no summary.json says done (rank 0 records the failure if it gets to)."""
    token = uuid.uuid4().hex
    out = tmp_path / "run"
    env = {**os.environ, "HYBRIDREC_FAULT": f"kind={kind},rank=1,step=2", "FAULT_TOKEN": token}
    argv = [sys.executable, "-m", "hybridrec.distributed.launch", "--nproc-per-node", "2", "--grace", "2", "--timeout", "600",
            "hybridrec.faults", "run", "jobs.train_job", "parallel=dp2", "parallel.micro_batch_size=16",
            "model=sasrec_tiny", "train=quick", "train.steps=6", "eval.protocols=[uni100]", "eval.baseline=false",
            "telemetry.enabled=false", "parallel.timeout_s=300", f"hydra.run.dir={out}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=700, check=False)
    end = time.time()
    assert proc.returncode != 0
    assert re.search(r"\[launch\] rank 1 on host \S+ failed", proc.stderr), proc.stderr[-3000:]
    injected = re.search(r"\[fault\] injecting .* t=(\d+\.\d+)", proc.stderr)
    assert injected and end - float(injected.group(1)) < 30
    assert leftover_processes(token) == []
    summary = out / "summary.json"
    if summary.exists():
        import json

        assert json.loads(summary.read_text())["status"] == "failed"
    print(f"trainer {kind}: launcher exited {end - float(injected.group(1)):.2f} s after the fault")
