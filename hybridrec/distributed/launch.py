"""A torchrun-style local launcher: N ranks on this machine, a free port, and no hangs.

    python -m hybridrec.distributed.launch --nproc-per-node 4 <module | script.py> [args...]

Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and a MASTER_PORT picked
free for this launch. If one rank exits non-zero (or is killed), the others are terminated (SIGTERM,
then SIGKILL after a grace period) and the launcher reports which rank failed and exits with its code.
`launch(...)` is the same as a function, for benchmarks and tests.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridrec.distributed.env import free_port


@dataclass
class LaunchResult:
    returncode: int
    # the first rank that failed (None when all succeeded)
    failed_rank: int | None
    # exit code per rank; negative = killed by that signal; None = never finished
    rank_codes: list[int | None] = field(default_factory=list)
    wall_s: float = 0.0
    # ranks that we ended because another rank failed (or the timeout hit)
    terminated: list[int] = field(default_factory=list)
    timed_out: bool = False


def rank_command(target: str, args: Sequence[str]) -> list[str]:
    """`x.py` (or any existing file) runs as a script, anything else as `python -m target`."""
    if target.endswith(".py") or os.path.isfile(target):
        return [sys.executable, target, *args]
    return [sys.executable, "-m", target, *args]


def _stop(procs: dict[int, subprocess.Popen], grace_s: float) -> list[int]:
    """SIGTERM every live rank's process group, then SIGKILL what is left after `grace_s`."""
    alive = [r for r, p in procs.items() if p.poll() is None]
    for rank in alive:
        _signal_group(procs[rank], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(procs[r].poll() is None for r in alive):
        time.sleep(0.05)
    for rank in alive:
        if procs[rank].poll() is None:
            _signal_group(procs[rank], signal.SIGKILL)
    for rank in alive:
        procs[rank].wait()
    return alive


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch(
    command: Sequence[str], nproc: int, *, master_port: int | None = None, timeout_s: float | None = None,
    grace_s: float = 5.0, extra_env: dict[str, str] | None = None, poll_s: float = 0.05,
) -> LaunchResult:
    """Run `command` as `nproc` ranks; end all ranks as soon as one fails or the timeout passes."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    port = master_port or free_port()
    base = {**os.environ, **(extra_env or {})}
    procs: dict[int, subprocess.Popen] = {}
    start = time.monotonic()
    try:
        for rank in range(nproc):
            env = {**base, "RANK": str(rank), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "HYBRIDREC_LAUNCHER": "local",
                   # one thread per rank unless told otherwise, as torchrun does: N ranks at the default
                   # thread count oversubscribe the cores (a 37 s run took 394 s on 2 cores)
                   "OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1")}
            # own session: a rank's children are ended with it
            procs[rank] = subprocess.Popen(list(command), env=env, start_new_session=True)
        failed: int | None = None
        timed_out = False
        while True:
            codes = {r: p.poll() for r, p in procs.items()}
            bad = [r for r, c in codes.items() if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes.values()):
                break
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                timed_out = True
                break
            time.sleep(poll_s)
        terminated = _stop(procs, grace_s) if (failed is not None or timed_out) else []
    except BaseException:
        _stop(procs, grace_s)
        raise
    rank_codes = [procs[r].returncode for r in range(nproc)]
    if failed is not None:
        code = rank_codes[failed]
        returncode = code if code and code > 0 else 128 + abs(code or 1)
    else:
        returncode = 124 if timed_out else 0
    return LaunchResult(returncode=returncode, failed_rank=failed, rank_codes=rank_codes,
                        wall_s=time.monotonic() - start, terminated=sorted(terminated), timed_out=timed_out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridrec.distributed.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--nproc-per-node", "--nproc_per_node", type=int, required=True, dest="nproc")
    parser.add_argument("--master-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--timeout", type=float, default=None, help="end all ranks after this many seconds")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("target", help="a module (run with -m) or a script path")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    result = launch(rank_command(opts.target, opts.args), opts.nproc, master_port=opts.master_port,
                    timeout_s=opts.timeout, grace_s=opts.grace)
    if result.failed_rank is not None:
        code = result.rank_codes[result.failed_rank]
        how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-(code or 0)}"
        print(f"[launch] rank {result.failed_rank} on host {socket.gethostname()} failed ({how}); "
              f"ended ranks {result.terminated}", file=sys.stderr)
    elif result.timed_out:
        print(f"[launch] timeout after {opts.timeout} s; ended ranks {result.terminated}", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
