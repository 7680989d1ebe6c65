"""Process groups for gradient all-reduce, created in ONE place (`build_comm_groups`), once.

Pure arithmetic first (`plan_groups`: racks, rack leaders, shard columns for every data-parallel
group, testable without processes), then `build_comm_groups` creates the torch groups. Every rank
of the world must call it with the same arguments (torch's `new_group` is collective); it returns the
groups of the calling rank.

The groups carry the tensors' backend, asked of the device (`backend.current().group_backend`): NCCL
groups when the gradients are on GPU, gloo on CPU; with `cpu_staging` (config `allreduce.cpu_staging`)
they are the host-staging backend (gloo) and GradSync copies each bucket to host memory around the
collectives.

Shard columns (reduce-scatter variant): with P = the largest rack size, the bucket is cut into P
near-equal columns; in a rack of m ranks, local rank l owns columns [l*P//m, (l+1)*P//m). Column c is
all-reduced across racks by the owners of c, one per rack. This is correct for uneven racks: a rank
of a small rack owns several columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from hybridrec.errors import ConfigError
from hybridrec.topology import RackMap


@dataclass(frozen=True)
class ColumnRun:
    """Consecutive columns [lo, hi) that this rank reduces across racks with the same members."""

    lo: int
    hi: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class GroupPlan:
    """Pure description of one data-parallel group's communication structure."""

    group_ranks: tuple[int, ...]
    racks: tuple[tuple[int, ...], ...]
    num_columns: int

    @property
    def leaders(self) -> tuple[int, ...]:
        return tuple(rack[0] for rack in self.racks)

    def rack_of(self, rank: int) -> tuple[int, ...]:
        return next(rack for rack in self.racks if rank in rack)

    def owned_columns(self, rank: int) -> tuple[int, int]:
        rack = self.rack_of(rank)
        m, local = len(rack), rack.index(rank)
        return local * self.num_columns // m, (local + 1) * self.num_columns // m

    def column_owner(self, rack: Sequence[int], column: int) -> int:
        m = len(rack)
        return next(r for i, r in enumerate(rack) if i * self.num_columns // m <= column < (i + 1) * self.num_columns // m)

    def column_members(self, column: int) -> tuple[int, ...]:
        return tuple(sorted(self.column_owner(rack, column) for rack in self.racks))

    def column_runs(self, rank: int) -> list[ColumnRun]:
        lo, hi = self.owned_columns(rank)
        runs: list[ColumnRun] = []
        for c in range(lo, hi):
            members = self.column_members(c)
            if runs and runs[-1].members == members:
                runs[-1] = ColumnRun(runs[-1].lo, c + 1, members)
            else:
                runs.append(ColumnRun(c, c + 1, members))
        return runs

    def all_column_member_sets(self) -> list[tuple[int, ...]]:
        seen: list[tuple[int, ...]] = []
        for c in range(self.num_columns):
            members = self.column_members(c)
            if members not in seen:
                seen.append(members)
        return seen


def plan_groups(group_ranks: Sequence[int], rack_map: RackMap) -> GroupPlan:
    racks = tuple(tuple(r) for r in rack_map.racks_of(list(group_ranks)))
    return GroupPlan(tuple(sorted(group_ranks)), racks, max(len(r) for r in racks))


@dataclass
class CommGroups:
    """The calling rank's view: its dp group, rack, leaders, shard columns and their torch groups."""

    rank: int
    rack_map: RackMap
    plan: GroupPlan
    group: Any  # dup of the dp group used only by GradSync (None when alone)
    rack_group: Any
    leader_group: Any  # only on rack leaders
    column_groups: dict[tuple[int, ...], Any] = field(default_factory=dict)
    backend: str = ""  # the torch backend of these groups
    cpu_staging: bool = False  # buckets are copied to host memory for gloo groups

    @property
    def group_ranks(self) -> tuple[int, ...]:
        return self.plan.group_ranks

    @property
    def rack_ranks(self) -> tuple[int, ...]:
        return self.plan.rack_of(self.rank)

    @property
    def leader(self) -> int:
        return self.rack_ranks[0]


def build_comm_groups(all_group_ranks: Sequence[Sequence[int]], rack_map: RackMap, rank: int | None = None,
                      *, cpu_staging: bool = False, device: Any = None) -> CommGroups:
    """Create every group for every dp group (collective over the world); return this rank's.

    `device` (default `backend.current()`) chooses the groups' backend; `cpu_staging` asks for the
    host-staging backend instead."""
    from hybridrec.distributed import backend

    rank = dist.get_rank() if rank is None else rank
    group_backend = (device or backend.current()).group_backend(cpu_staging)
    covered = sorted(r for g in all_group_ranks for r in g)
    if covered != list(range(rack_map.world_size)):
        raise ConfigError("dp groups", [list(g) for g in all_group_ranks],
                          f"groups covering every rank 0..{rack_map.world_size - 1} exactly once")
    mine: CommGroups | None = None

    def new(ranks: Sequence[int]) -> Any:
        return dist.new_group(sorted(ranks), backend=group_backend) if len(ranks) > 1 else None

    for group_ranks in all_group_ranks:
        plan = plan_groups(group_ranks, rack_map)
        group = new(plan.group_ranks)
        rack_groups = [new(rack) for rack in plan.racks]
        leader_group = new(plan.leaders)
        columns = {members: new(members) for members in plan.all_column_member_sets()}
        if rank in plan.group_ranks:
            rack_index = next(i for i, rack in enumerate(plan.racks) if rank in rack)
            mine = CommGroups(
                rank=rank, rack_map=rack_map, plan=plan, group=group, rack_group=rack_groups[rack_index],
                leader_group=leader_group if rank in plan.leaders else None, column_groups=columns,
                backend=group_backend, cpu_staging=cpu_staging,
            )
    assert mine is not None
    return mine


def rack_map_from_tasks(topology: str, tasks: Sequence[tuple[str, str, str]],
                        racks: dict[str, list[str]] | None = None, scontrol_text: str = "") -> RackMap:
    """Pure: the rack map for `allreduce.topology` from every rank's (hostname, SLURM_TOPOLOGY_ADDR,
    pattern) in rank order, the config mapping, or the text of `scontrol show topology`."""
    from hybridrec.config.comm import Topology

    hostnames = [task[0] for task in tasks]
    source = Topology(topology)
    if source is Topology.single:
        return RackMap.single(len(tasks), hostnames)
    if source is Topology.config:
        return RackMap.from_mapping(racks or {}, hostnames)
    if source is Topology.slurm:
        patterns = {task[2] for task in tasks}
        if len(patterns) != 1:
            raise ConfigError("SLURM_TOPOLOGY_ADDR_PATTERN", sorted(patterns),
                              "the same pattern on every rank (run under Slurm with TopologyPlugin=topology/tree)")
        return RackMap.from_topology_addrs([task[1] for task in tasks], patterns.pop(), hostnames)
    return RackMap.from_scontrol(scontrol_text, hostnames)


def discover_rack_map(topology: str, racks: dict[str, list[str]] | None = None) -> RackMap:
    """Build the rack map for `allreduce.topology` by gathering every rank's hostname (and Slurm
    topology address) over the default group; with `scontrol`, rank 0 runs `scontrol show topology`
    and broadcasts its text. Collective: call on every rank after init."""
    import os
    import socket
    import subprocess

    from hybridrec.config.comm import Topology
    from hybridrec.topology import local_topology_from_env

    local = local_topology_from_env(os.environ, socket.gethostname())
    tasks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(tasks, local)
    text = [""]
    if Topology(topology) is Topology.scontrol:
        if dist.get_rank() == 0:
            try:
                text[0] = subprocess.run(["scontrol", "show", "topology"], capture_output=True, text=True,
                                         check=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError) as err:
                text[0] = f"error: {err}"
        dist.broadcast_object_list(text, src=0)
        if text[0].startswith("error: "):
            raise ConfigError("allreduce.topology", "scontrol",
                              f"a job that can run `scontrol show topology` ({text[0][7:]}); or use slurm/config")
    return rack_map_from_tasks(topology, tasks, racks, text[0])
