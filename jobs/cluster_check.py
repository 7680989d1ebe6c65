"""Check a resource request against what the cluster has (`sinfo`), before anything is queued.

`parse_sinfo(text)` reads `sinfo -h -o "%P|%D|%c|%G|%f|%a"`; `request_problems(resources, partitions)`
lists every reason the request can never run (unknown partition, more nodes than the partition has,
more CPUs or GPUs per node than a node has, an unknown feature). Pure; `sinfo_partitions()` runs sinfo.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from jobs.sbatch import Resources

SINFO_FORMAT = "%P|%D|%c|%G|%f|%a"


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    features: frozenset[str]
    up: bool


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", item.strip())
        if match:
            total += int(match.group(1))
    return total


def parse_sinfo(text: str) -> dict[str, Partition]:
    """One entry per partition; rows of one partition with different node shapes are merged (node
    counts added; CPUs/GPUs per node: the largest shape)."""
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, nodes, cpus, gres, features, avail = (line.split("|") + [""] * 6)[:6]
        default = name.endswith("*")
        name = name.rstrip("*")
        feats = frozenset(f for f in features.split(",") if f and f != "(null)")
        row = Partition(name, default, int(nodes or 0), int(re.sub(r"\D.*", "", cpus) or 0), _gpus(gres),
                        feats, avail.strip() == "up")
        if name in out:
            old = out[name]
            row = Partition(name, old.default or default, old.nodes + row.nodes,
                            max(old.cpus_per_node, row.cpus_per_node), max(old.gpus_per_node, row.gpus_per_node),
                            old.features | row.features, old.up or row.up)
        out[name] = row
    return out


def request_problems(res: Resources, partitions: dict[str, Partition]) -> list[str]:
    """Every reason `res` can never be satisfied on this cluster (empty list = plausible)."""
    if not partitions:
        return ["sinfo lists no partitions (is SLURM_CONF set / the controller up?)"]
    if res.partition:
        part = partitions.get(res.partition)
        if part is None:
            return [f"partition '{res.partition}' does not exist (have: {', '.join(sorted(partitions))})"]
    else:
        defaults = [p for p in partitions.values() if p.default]
        if not defaults:
            return ["no partition requested and the cluster has no default partition"]
        part = defaults[0]
    problems = []
    if not part.up:
        problems.append(f"partition '{part.name}' is not up")
    if res.nodes > part.nodes:
        problems.append(f"nodes={res.nodes} but partition '{part.name}' has {part.nodes} nodes")
    cpus = res.tasks_per_node * res.cpus_per_task
    if cpus > part.cpus_per_node:
        problems.append(f"tasks_per_node*cpus_per_task={cpus} but nodes of '{part.name}' have "
                        f"{part.cpus_per_node} CPUs")
    if res.gpus_per_node > part.gpus_per_node:
        problems.append(f"gpus_per_node={res.gpus_per_node} but nodes of '{part.name}' have "
                        f"{part.gpus_per_node} GPUs")
    if res.constraint:
        # features joined by & | , [] (), each optionally with a count like a100*2
        wanted = {re.sub(r"\*\d+$", "", f) for f in re.split(r"[&|,\[\]()]+", res.constraint)} - {""}
        missing = sorted(wanted - part.features)
        if missing:
            problems.append(f"constraint '{res.constraint}': no node of '{part.name}' has feature(s) {missing}")
    return problems


def sinfo_partitions(env: dict[str, str] | None = None) -> dict[str, Partition]:
    proc = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=30,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"sinfo failed (rc {proc.returncode}): {proc.stderr.strip()}")
    return parse_sinfo(proc.stdout)
