"""Where this process sits in a job: rank, world, master address/port, from torchrun or Slurm variables.

Owns `DistEnv` (read once from the environment), the Slurm node-list parser (`expand_nodelist`, the
pure equivalent of `scontrol show hostnames`), the per-job master port (derived from SLURM_JOB_ID,
never a fixed port: see NOTES section 2), the default group's backend (asked of `backend`, the one module that names devices) and
`init_process_group` with a timeout.

Precedence: torchrun variables (RANK + WORLD_SIZE) > Slurm variables (SLURM_PROCID + SLURM_NTASKS)
> a single process. `HYBRIDREC_MASTER_ADDR` / `HYBRIDREC_MASTER_PORT` override the derived master.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from hybridrec.config.parallel import BACKENDS  # noqa: F401  (re-exported for preflight)
from hybridrec.errors import ConfigError
from hybridrec.hostlist import expand_hostlist

# ports derived from job ids live below the Linux ephemeral range (32768-60999)
PORT_BASE, PORT_SPAN = 12000, 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    hostname: str
    job_id: str
    # where the values came from: torchrun | slurm | single
    source: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return _from_torchrun(env)
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            return _from_slurm(env)
        port = int(env.get("HYBRIDREC_MASTER_PORT") or free_port())
        return cls(rank=0, world_size=1, local_rank=0, local_world_size=1,
                   master_addr=env.get("HYBRIDREC_MASTER_ADDR", "127.0.0.1"), master_port=port,
                   hostname=socket.gethostname(), job_id="", source="single")

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"

    def exported(self) -> dict[str, str]:
        """torchrun-style variables describing this process (for libraries that read them)."""
        return {
            "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "an integer environment variable") from None


def _from_torchrun(env: Mapping[str, str]) -> DistEnv:
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    _check_rank(rank, world, "RANK")
    if "MASTER_ADDR" not in env and "HYBRIDREC_MASTER_ADDR" not in env:
        raise ConfigError("MASTER_ADDR", None, "set by torchrun/the launcher when RANK and WORLD_SIZE are")
    port_raw = env.get("HYBRIDREC_MASTER_PORT") or env.get("MASTER_PORT")
    if not port_raw:
        raise ConfigError("MASTER_PORT", None, "set by torchrun/the launcher when RANK and WORLD_SIZE are")
    return DistEnv(
        rank=rank, world_size=world,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        master_addr=env.get("HYBRIDREC_MASTER_ADDR") or env["MASTER_ADDR"],
        master_port=_checked_port(port_raw),
        hostname=socket.gethostname(), job_id=env.get("TORCHELASTIC_RUN_ID", env.get("SLURM_JOB_ID", "")),
        source="torchrun",
    )


def _from_slurm(env: Mapping[str, str]) -> DistEnv:
    rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    _check_rank(rank, world, "SLURM_PROCID")
    job_id = env.get("SLURM_JOB_ID", env.get("SLURM_JOBID", ""))
    nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
    if env.get("HYBRIDREC_MASTER_ADDR"):
        master_addr = env["HYBRIDREC_MASTER_ADDR"]
    elif nodelist:
        master_addr = expand_nodelist(nodelist)[0]
    else:
        raise ConfigError("SLURM_JOB_NODELIST", None, "the job's node list (set by Slurm) to find the master")
    if env.get("HYBRIDREC_MASTER_PORT"):
        port = _checked_port(env["HYBRIDREC_MASTER_PORT"])
    elif job_id:
        port = port_for_job(job_id, env.get("SLURM_STEP_ID", "0"))
    else:
        raise ConfigError("SLURM_JOB_ID", None, "set by Slurm (the master port is derived from it)")
    local_world = _local_world_size(env)
    return DistEnv(
        rank=rank, world_size=world, local_rank=int(env.get("SLURM_LOCALID", "0")),
        local_world_size=local_world, master_addr=master_addr, master_port=port,
        hostname=env.get("SLURMD_NODENAME") or socket.gethostname(), job_id=job_id, source="slurm",
    )


def _local_world_size(env: Mapping[str, str]) -> int:
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    per_node = expand_tasks_per_node(env.get("SLURM_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", "0"))
    return per_node[node] if node < len(per_node) else 1


def _check_rank(rank: int, world: int, name: str) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(name, rank, f"a rank in [0, {world})")


def _checked_port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError("MASTER_PORT", raw, "an integer port in [1, 65535]")
    return port


def port_for_job(job_id: str, step_id: str = "0") -> int:
    """A master port derived from the job (and step) id: distinct for concurrent jobs, stable per job."""
    digits = re.sub(r"\D", "", f"{job_id}") or "0"
    step = int(step_id) if step_id.isdigit() else 0
    return PORT_BASE + (int(digits) * 7 + step) % PORT_SPAN


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- Slurm lists (pure)
def expand_nodelist(nodelist: str) -> list[str]:
    """`n[1-3,5],gpu-[08-09]` -> [n1, n2, n3, n5, gpu-08, gpu-09] (same as `scontrol show hostnames`)."""
    return expand_hostlist(nodelist, "SLURM_JOB_NODELIST")


def expand_tasks_per_node(value: str) -> list[int]:
    """SLURM_TASKS_PER_NODE `2(x3),1` -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in filter(None, value.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            raise ConfigError("SLURM_TASKS_PER_NODE", value, "counts like 2(x3),1")
        out.extend([int(match.group(1))] * int(match.group(2) or 1))
    return out


# ---------------------------------------------------------------------------- process group
def choose_backend(requested: str = "auto", cuda_available: bool | None = None) -> str:
    """The default group's backend for this process's device (`backend.choose_backend`); an explicit
    choice wins."""
    from hybridrec.distributed import backend as device_backend

    return device_backend.choose_backend(requested, cuda_available)


def init_process_group(env: DistEnv, backend: str = "auto", timeout_s: float = 300.0) -> str:
    """Create the default process group for `env`; returns the backend used. Idempotent."""
    import torch.distributed as dist

    from hybridrec.distributed import backend as device_backend

    chosen = choose_backend(backend)
    if dist.is_initialized():
        return str(dist.get_backend())
    device_backend.bind(chosen, env.local_rank)  # a GPU backend needs this rank's GPU first
    dist.init_process_group(
        backend=chosen, init_method=env.init_method, rank=env.rank, world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return chosen
