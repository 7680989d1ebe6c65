"""Small process helpers shared by the testbeds: run a command and raise with its output, start a
daemon and record its pid in a state file, stop processes by pid (never by name), wait for a condition."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class TestbedError(RuntimeError):
    """A testbed command failed; the message carries the command and its output."""

    __test__ = False  # not a pytest test class


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise TestbedError naming the command and its stderr. A command that
    outlives `timeout` counts as failed with status 124 (like coreutils' timeout)."""
    try:
        proc = subprocess.run(list(argv), check=False, env=dict(env) if env is not None else None,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {timeout}s")
    if check and proc.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} -> rc {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> int:
    """Start a long-lived process detached from our session (its own process group), output to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None, start_new_session=True)
    return proc.pid


def alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def reap(pid: int) -> None:
    """Collect an exited child of ours so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def stop_pids(pids: Sequence[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to `grace` s, then SIGKILL what is left. Returns the pids that needed SIGKILL."""
    for pid in pids:
        reap(pid)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any((reap(p), alive(p))[1] for p in pids), grace)
    killed = []
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    wait_until(lambda: not any((reap(p), alive(p))[1] for p in pids), grace)
    return killed


def pids_with_open_path(exe_name: str, path_prefix: str) -> list[int]:
    """Pids of processes named `exe_name` holding an open file under `path_prefix` (e.g. a leftover
    slurmstepd of one particular cluster)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != exe_name:
                continue
            if any(os.readlink(fd).startswith(path_prefix) for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
