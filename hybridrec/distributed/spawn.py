"""Starting local ranks, in one place (tests, benchmarks, README commands). Under Slurm, srun starts the
ranks and nothing here is used.

- A command on N ranks is torchrun's job (`python -m torch.distributed.run --standalone`): it gives each
  rank RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, one thread (OMP_NUM_THREADS=1 unless set),
  ends the other ranks when one fails and names the failed rank in its ChildFailedError report.
  `torchrun_command` builds that command line; `run_bounded` runs any command with a hard wall-clock
  deadline that also ends the ranks (torchrun starts each rank in its own session, so killing torchrun
  alone would leave them running); `root_cause` reads the failed rank out of torchrun's report.
- A Python function on N gloo ranks is `run_ranks`: one thread per rank, a free port, a collective
  timeout and a wall-clock deadline, and a failure raises `RankFailed` naming the rank with its traceback.
  `enter_netns` puts a freshly forked rank into a network namespace (the rack testbed).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridrec.distributed import backend
from hybridrec.distributed.env import free_port

CLONE_NEWNET = 0x40000000


# ------------------------------------------------------------------------------ commands: torchrun
def torchrun_command(nproc: int, module_or_script: str, args: Sequence[str] = ()) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N` running a script (`x.py` or an
    existing file) or a module (`-m module`) with `args`."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    is_script = module_or_script.endswith(".py") or os.path.isfile(module_or_script)
    target = [module_or_script] if is_script else ["-m", module_or_script]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *target, *args]


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def live_processes_with_env(name: str, value: str) -> list[int]:
    """pids whose environment has `name=value` (a marker put in a launch's environment: anything it
    started that is still alive)."""
    marker = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _signal(pid: int, sig: int) -> None:
    for kill in (os.killpg, os.kill):  # the process group it leads (a rank's session), then itself
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _end_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the command (torchrun then ends its ranks), SIGKILL whatever is left after `grace_s`."""
    tree = _descendants(proc.pid)
    _signal(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *tree, *_descendants(proc.pid)]:
        _signal(pid, signal.SIGKILL)
    proc.wait()


def run_bounded(argv: Sequence[str], timeout_s: float, *, env: Mapping[str, str] | None = None,
                cwd: str | Path | None = None, capture: bool = True,
                grace_s: float = 5.0) -> subprocess.CompletedProcess:
    """Run `argv` in its own session; past `timeout_s` end it and every process it started (ranks
    included) and raise `subprocess.TimeoutExpired` carrying the output so far. `capture`: return
    stdout/stderr as text; otherwise they go to this process's."""
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(list(argv), env=None if env is None else dict(env), cwd=cwd, stdout=pipe, stderr=pipe,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _end_tree(proc, grace_s)
        stdout, stderr = proc.communicate() if capture else (None, None)
        raise subprocess.TimeoutExpired(list(argv), timeout_s, output=stdout, stderr=stderr) from None
    except BaseException:
        _end_tree(proc, grace_s)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def run_torchrun(nproc: int, module_or_script: str, args: Sequence[str] = (), *, timeout_s: float,
                 **kwargs: Any) -> subprocess.CompletedProcess:
    """`run_bounded(torchrun_command(nproc, module_or_script, args), timeout_s, **kwargs)`."""
    return run_bounded(torchrun_command(nproc, module_or_script, args), timeout_s, **kwargs)


@dataclass(frozen=True)
class RankFailure:
    """The root cause of torchrun's ChildFailedError report (the first rank that failed)."""

    rank: int
    local_rank: int
    exitcode: int  # negative: killed by that signal
    host: str


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):\s*\[\d+\]:\s*time\s*:[^\n]*\n\s*host\s*:\s*(\S+)"
                         r"\s*\n\s*rank\s*:\s*(\d+) \(local_rank: (\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)")


def root_cause(stderr: str) -> RankFailure | None:
    """The failed rank named by torchrun's report in `stderr`, or None when there is no report."""
    match = _ROOT_CAUSE.search(stderr or "")
    if match is None:
        return None
    host, rank, local_rank, code = match.groups()
    return RankFailure(int(rank), int(local_rank), int(code), host)


# ------------------------------------------------------------------------ functions: N gloo ranks
class RankFailed(RuntimeError):
    """A rank of `run_ranks` raised, exited or was killed (`rank` names it), or the deadline passed.
    `exitcode`: the rank's exit code when it exited or was killed (negative: the signal), None when it
    raised or the deadline passed."""

    def __init__(self, message: str, rank: int | None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode


def enter_netns(name: str) -> None:
    """Move this (single-threaded, freshly forked) process into network namespace /run/netns/<name>."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {name} failed")
    finally:
        os.close(fd)


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple,
           env: dict[str, str], timeout_s: float, master_addr: str, netns: list[str] | None,
           process_group: bool) -> None:
    import torch
    import torch.distributed as dist

    if netns:
        enter_netns(netns[rank])
    os.environ.update(env)
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if process_group:
        dist.init_process_group(backend.CPU_BACKEND, init_method=f"tcp://{master_addr}:{port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        # when and why, so the parent names the rank that failed first, not one whose collective broke after
        (Path(out_dir) / f"error{rank}.txt").write_text(f"{time.time()}\n{traceback.format_exc()}")
        raise
    finally:
        if process_group and dist.is_initialized():
            dist.destroy_process_group()


def _first_raised(out_dir: str) -> tuple[int, str] | None:
    """(rank, traceback) of the rank whose exception came first, from the ranks' error files."""
    found = []
    for path in Path(out_dir).glob("error*.txt"):
        stamp, _, text = path.read_text().partition("\n")
        found.append((float(stamp), int(path.stem[len("error"):]), text))
    return min(found)[1:] if found else None


def _join(context: Any, world_size: int, deadline_s: float, out_dir: str) -> None:
    """Wait for every rank; on a failure or past the deadline end the rest and raise RankFailed."""
    import torch.multiprocessing as mp

    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=0.5):
            if time.monotonic() > deadline:
                alive = [r for r, p in enumerate(context.processes) if p.is_alive()]
                raise RankFailed(f"ranks {alive} of {world_size} still running after the {deadline_s:.0f} s "
                                 "deadline (a hang outside a collective?); ended them", alive[0] if alive else None)
    except mp.ProcessRaisedException as exc:
        rank, text = _first_raised(out_dir) or (exc.error_index, exc.msg.strip())
        raise RankFailed(f"rank {rank} of {world_size} raised (the first to fail):\n{text.strip()}", rank) from None
    except mp.ProcessExitedException as exc:
        how = f"was killed by {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
        raise RankFailed(f"rank {exc.error_index} of {world_size} {how}", exc.error_index,
                         exc.exit_code) from None
    finally:
        for proc in context.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, env: dict[str, str] | None = None,
              timeout_s: float = 120.0, deadline_s: float | None = None, start_method: str = "fork",
              master_addr: str = "127.0.0.1", netns: list[str] | None = None,
              process_group: bool = True) -> list[Any]:
    """Call `fn(rank, world_size, *args)` on `world_size` gloo processes; return the results in rank
    order. Each rank runs one thread (`env` may set OMP_NUM_THREADS), its collectives time out after
    `timeout_s`, and the whole run is ended after `deadline_s` (default 5 x timeout_s). A failure
    raises `RankFailed` naming the first failed rank (with its traceback when it raised); the other
    ranks are ended. `process_group=False`: `fn` creates its own groups (several jobs in one set of
    processes). `fork` (default) skips re-importing torch in every child (seconds each on a loaded
    machine); use `spawn` when the parent has started threads that must not be forked.
    `netns[r]`: rank r first enters that network namespace (rack testbed, root; fork only), and
    `master_addr` is then rank 0's address there."""
    import torch
    import torch.multiprocessing as mp

    full_env = {"GLOO_SOCKET_IFNAME": "eth0" if netns else "lo", "OMP_NUM_THREADS": "1", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="hybridrec-ranks-") as out_dir:
        context = mp.start_processes(
            _entry, args=(fn, world_size, free_port(), out_dir, args, full_env, timeout_s, master_addr, netns,
                          process_group),
            nprocs=world_size, join=False, start_method=start_method)
        _join(context, world_size, 5 * timeout_s if deadline_s is None else deadline_s, out_dir)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
