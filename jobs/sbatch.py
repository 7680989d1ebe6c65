"""Slurm resource requests as one typed object, and sbatch scripts rendered from `slurm/templates/`.

`Resources.from_launcher(cfg)` reads the same keys as hydra-submitit-launcher's `submitit_slurm`
(nodes, tasks_per_node, gpus_per_node, cpus_per_task, partition, account, timeout_min, constraint,
additional_parameters such as {"switches": "1@00:05:00"}, setup), so a sweep submitted by Hydra, by
`jobs.submit` or by a rendered sbatch script asks Slurm for the same thing. Pure: no processes.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrec.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent.parent / "slurm" / "templates"

# exported before srun in every job: a master port free on the batch host (the first node, where
# rank 0 runs), so two jobs never share one (hybridrec.distributed.env reads HYBRIDREC_MASTER_PORT)
MASTER_PORT_SETUP = ('export HYBRIDREC_MASTER_PORT=$(python3 -c "import socket; s=socket.socket(); '
                     "s.bind(('', 0)); print(s.getsockname()[1])\")")


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    partition: str = ""
    account: str = ""
    timeout_min: int = 60
    constraint: str = ""
    mem_gb: int = 0
    signal_delay_s: int = 90
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"hydra.launcher.{name}", getattr(self, name), "an integer >= 1")
        if self.gpus_per_node < 0:
            raise ConfigError("hydra.launcher.gpus_per_node", self.gpus_per_node, "an integer >= 0")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @classmethod
    def from_launcher(cls, launcher: Mapping[str, Any]) -> Resources:
        """From a hydra.launcher node (submitit_slurm keys); unknown keys are ignored."""
        def pick(key: str, default: Any) -> Any:
            value = launcher.get(key)
            return default if value is None else value

        return cls(
            nodes=int(pick("nodes", 1)), tasks_per_node=int(pick("tasks_per_node", 1)),
            gpus_per_node=int(pick("gpus_per_node", 0)), cpus_per_task=int(pick("cpus_per_task", 1)),
            partition=str(pick("partition", "")), account=str(pick("account", "")),
            timeout_min=int(pick("timeout_min", 60)), constraint=str(pick("constraint", "")),
            mem_gb=int(pick("mem_gb", 0)), signal_delay_s=int(pick("signal_delay_s", 90)),
            additional_parameters=dict(pick("additional_parameters", {})),
            setup=tuple(pick("setup", ()) or ()),
        )

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit's `SlurmExecutor.update_parameters`."""
        params: dict[str, Any] = {
            "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node, "cpus_per_task": self.cpus_per_task,
            "time": self.timeout_min, "signal_delay_s": self.signal_delay_s,
            "additional_parameters": dict(self.additional_parameters), "setup": list(self.setup),
        }
        optional = {"gpus_per_node": self.gpus_per_node, "partition": self.partition, "account": self.account,
                    "constraint": self.constraint, "mem": f"{self.mem_gb}GB" if self.mem_gb else ""}
        params.update({key: value for key, value in optional.items() if value})
        return params

    def sbatch_lines(self) -> list[str]:
        """`#SBATCH` lines for this request (also used by the templates)."""
        opts: list[tuple[str, Any]] = [
            ("nodes", self.nodes), ("ntasks-per-node", self.tasks_per_node),
            ("cpus-per-task", self.cpus_per_task), ("time", self.timeout_min),
        ]
        opts += [(key, value) for key, value in (
            ("gpus-per-node", self.gpus_per_node), ("partition", self.partition), ("account", self.account),
            ("constraint", self.constraint), ("mem", f"{self.mem_gb}GB" if self.mem_gb else ""),
        ) if value]
        extra = {key.replace("_", "-"): value for key, value in self.additional_parameters.items()}
        if "no-requeue" not in extra:
            extra.setdefault("requeue", True)  # preemption/time-limit requeue (jobs/requeue.py)
        opts += sorted(extra.items())
        return [f"#SBATCH --{key}={value}" if value is not True else f"#SBATCH --{key}" for key, value in opts]


def render(template: str, resources: Resources, **fields: Any) -> str:
    """Fill `slurm/templates/<template>`: ${sbatch_lines}, ${setup} and any `fields` (shell-quoted when
    the field name ends with _args and the value is a list)."""
    text = (TEMPLATES / template).read_text()
    setup = list(resources.setup)
    if not any("HYBRIDREC_MASTER_PORT" in line for line in setup):
        setup.insert(0, MASTER_PORT_SETUP)
    values = {"sbatch_lines": "\n".join(resources.sbatch_lines()),
              "setup": "\n".join(setup),
              "signal_delay_s": str(resources.signal_delay_s)}
    for key, value in fields.items():
        values[key] = shlex.join(value) if isinstance(value, list | tuple) else str(value)
    try:
        return string.Template(text).substitute(values)
    except KeyError as missing:
        raise ConfigError(f"template {template}", str(missing), "a value for every ${field}") from None
