"""Run a function on N local CPU processes (the CPU backend, gloo; tests, loopback benchmarks): free
port, spawn, init/destroy the process group, collect each rank's return value."""

from __future__ import annotations

import ctypes
import datetime
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridrec.distributed import backend
from hybridrec.distributed.env import free_port

CLONE_NEWNET = 0x40000000


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
           env: dict[str, str], timeout_s: float, master_addr: str, netns: list[str] | None) -> None:
    if netns:
        enter_netns(netns[rank])
    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group(
        backend.CPU_BACKEND, init_method=f"tcp://{master_addr}:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, env: dict[str, str] | None = None,
              timeout_s: float = 120.0, start_method: str = "fork", master_addr: str = "127.0.0.1",
              netns: list[str] | None = None) -> list[Any]:
    """Call `fn(rank, world_size, *args)` on `world_size` CPU processes; return the results in rank
    order. `fork` (default) skips re-importing torch in every child (seconds each on a loaded
    machine); use `spawn` when the parent has started threads that must not be forked.
    `netns[r]`: rank r first enters that network namespace (rack testbed, root; fork only), and
    `master_addr` is then rank 0's address there."""
    full_env = {"GLOO_SOCKET_IFNAME": "eth0" if netns else "lo", **(env or {})}
    with tempfile.TemporaryDirectory(prefix="hybridrec-ranks-") as out_dir:
        mp.start_processes(_entry, args=(fn, world_size, free_port(), out_dir, args, full_env, timeout_s,
                                                master_addr, netns),
                           nprocs=world_size, join=True, start_method=start_method)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
