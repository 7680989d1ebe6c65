"""A tiny distributed job that checks a cluster end to end and exercises the job contract without the
model: rendezvous from Slurm variables, a gloo all_reduce across all ranks (and nodes), each rank's rack
from SLURM_TOPOLOGY_ADDR, and a step loop with checkpoints and cooperative preemption (`jobs.requeue`).
Rank 0 alone writes `summary.json` (atomically) into `cfg["output_dir"]`, like `hybridrec.main.run`.

Config keys read (all optional): output_dir, train.steps, train.resume, probe.step_seconds,
probe.crash_rank (that rank raises at step probe.crash_step), probe.payload_floats.

    python -m jobs.submit --task jobs.probe:probe --sweep-dir DIR hydra/launcher=slurm hydra.launcher.nodes=2
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from hybridrec.io import atomic_write_json
from jobs.requeue import Preempted, PreemptionGuard, restart_count

CHECKPOINT = "probe_checkpoint.json"


def _get(cfg: Any, dotted: str, default: Any) -> Any:
    node = cfg
    for key in dotted.split("."):
        if node is None or key not in node:
            return default
        node = node[key]
    return default if node is None else node


def probe(cfg: Any) -> dict:
    import torch
    import torch.distributed as dist

    from hybridrec.distributed.env import DistEnv, init_process_group
    from hybridrec.topology import RackMap

    out = Path(_get(cfg, "output_dir", ".") or ".")
    env = DistEnv.from_environ()
    init_process_group(env, "gloo", timeout_s=float(_get(cfg, "probe.timeout_s", 60)))
    started = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.full((int(_get(cfg, "probe.payload_floats", 1024)),), float(rank + 1))
    dist.barrier()
    tick = time.perf_counter()
    dist.all_reduce(value)
    allreduce_s = time.perf_counter() - tick
    expected = world * (world + 1) / 2
    if not torch.all(value == expected):
        raise RuntimeError(f"all_reduce gave {value[0].item()} on rank {rank}, expected {expected}")
    mine = (env.hostname, os.environ.get("SLURM_TOPOLOGY_ADDR", ""), os.environ.get("SLURM_TOPOLOGY_ADDR_PATTERN", ""))
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    hosts = [g[0] for g in gathered]
    pattern = gathered[0][2]
    racks = (RackMap.from_topology_addrs([g[1] for g in gathered], pattern, hosts) if pattern
             else RackMap.single(world, hosts))

    steps = int(_get(cfg, "train.steps", 0) or 0)
    step_seconds = float(_get(cfg, "probe.step_seconds", 0.0))
    crash_rank, crash_step = int(_get(cfg, "probe.crash_rank", -1)), int(_get(cfg, "probe.crash_step", 0))
    start = 0
    if _get(cfg, "train.resume", "") == "auto" and (out / CHECKPOINT).exists():
        start = json.loads((out / CHECKPOINT).read_text())["next_step"]
    guard = PreemptionGuard.current()
    attempt = restart_count()
    log_path = out / f"steps.attempt{attempt}.txt"
    for step in range(start, steps):
        if rank == crash_rank and step >= crash_step:
            raise RuntimeError(f"probe: rank {rank} crashes on purpose at step {step}")
        time.sleep(step_seconds)
        tick = torch.ones(1)
        dist.all_reduce(tick)
        if rank == 0:
            with open(log_path, "a") as handle:
                handle.write(f"{step}\n")
        if guard.should_stop():
            if rank == 0:
                atomic_write_json(out / CHECKPOINT, {"next_step": step + 1, "attempt": attempt})
            raise Preempted(step + 1)
    summary = {
        "status": "done", "world_size": world, "hosts": hosts, "racks": list(racks.rack_of_rank),
        "topology_addrs": [g[1] for g in gathered], "allreduce_value": value[0].item(),
        "allreduce_bytes": value.numel() * value.element_size(), "allreduce_s": allreduce_s,
        "steps": steps, "resumed_from": start, "attempt": attempt, "wall_s": time.time() - started,
        "job_id": env.job_id, "master": f"{env.master_addr}:{env.master_port}", "submit_host": socket.gethostname(),
    }
    if rank == 0:
        atomic_write_json(out / "summary.json", summary)
    dist.barrier()
    dist.destroy_process_group()
    return summary
