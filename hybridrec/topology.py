"""Rack map: which rack (leaf switch) and host each rank sits on. Pure: no processes, no I/O.

Sources:
- Slurm's tree topology as seen by each task: `SLURM_TOPOLOGY_ADDR` (e.g. "spine.rack1.n1") with
  `SLURM_TOPOLOGY_ADDR_PATTERN` (e.g. "switch.switch.node"); one address per rank, gathered by the caller.
- The text of `scontrol show topology` plus each rank's hostname.
- A config mapping rack name -> hostnames, plus each rank's hostname.
- One rack for everything.

Racks are named by their leaf switch. Rack order is the order of first appearance in rank order, so
the map is deterministic on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hybridrec.errors import ConfigError
from hybridrec.hostlist import expand_hostlist

__all__ = ["RackMap", "expand_hostlist", "local_topology_from_env", "parse_scontrol_topology"]


@dataclass(frozen=True)
class RackMap:
    """rack_of_rank[r] is the rack of global rank r; hostname_of_rank[r] its host."""

    rack_of_rank: tuple[str, ...]
    hostname_of_rank: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.rack_of_rank:
            raise ConfigError("allreduce.topology", "no ranks", "a rack for every rank (world size >= 1)")
        if len(self.rack_of_rank) != len(self.hostname_of_rank):
            raise ConfigError(
                "allreduce.topology", f"{len(self.rack_of_rank)} racks for {len(self.hostname_of_rank)} hosts",
                "one rack and one hostname per rank",
            )
        for rank, rack in enumerate(self.rack_of_rank):
            if not isinstance(rack, str) or not rack:
                raise ConfigError(f"allreduce.topology[rank {rank}]", rack, "a non-empty rack name")
        # a host lives in exactly one rack
        seen: dict[str, str] = {}
        for rank, (host, rack) in enumerate(zip(self.hostname_of_rank, self.rack_of_rank)):
            if seen.setdefault(host, rack) != rack:
                raise ConfigError(
                    f"allreduce.topology[rank {rank}]", host,
                    f"one rack per host (host is in both '{seen[host]}' and '{rack}')",
                )

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def single(cls, world_size: int, hostnames: Sequence[str] | None = None, rack: str = "rack0") -> RackMap:
        hosts = tuple(hostnames) if hostnames is not None else tuple(f"host{r}" for r in range(world_size))
        return cls(tuple(rack for _ in range(world_size)), hosts)

    @classmethod
    def from_racks_list(cls, racks: Sequence[str]) -> RackMap:
        """One host per rank, racks given per rank (tests and benchmarks)."""
        return cls(tuple(racks), tuple(f"host{r}" for r in range(len(racks))))

    @classmethod
    def from_mapping(cls, racks: Mapping[str, Sequence[str]], hostnames: Sequence[str]) -> RackMap:
        """`racks` maps rack name -> hostnames (config `allreduce.racks`); `hostnames[r]` is rank r's host."""
        if not racks:
            raise ConfigError("allreduce.racks", dict(racks), "a non-empty mapping rack name -> list of hostnames")
        rack_of_host: dict[str, str] = {}
        for rack, hosts in racks.items():
            if isinstance(hosts, str) or not hosts:
                raise ConfigError(f"allreduce.racks.{rack}", hosts, "a non-empty list of hostnames")
            for host in hosts:
                if host in rack_of_host:
                    raise ConfigError(
                        f"allreduce.racks.{rack}", host, f"each host in one rack (also in '{rack_of_host[host]}')"
                    )
                rack_of_host[host] = rack
        return cls(_place(hostnames, rack_of_host, "allreduce.racks"), tuple(hostnames))

    @classmethod
    def from_topology_addrs(
        cls, addrs: Sequence[str], pattern: str, hostnames: Sequence[str] | None = None
    ) -> RackMap:
        """From each rank's SLURM_TOPOLOGY_ADDR; the rack is the switch just above the node."""
        kinds = pattern.split(".")
        if "node" not in kinds or kinds[-1] != "node" or len(kinds) < 2:
            raise ConfigError(
                "SLURM_TOPOLOGY_ADDR_PATTERN", pattern, "a pattern like 'switch.switch.node' (tree topology plugin)"
            )
        racks, hosts = [], []
        for rank, addr in enumerate(addrs):
            parts = addr.split(".") if addr else []
            if len(parts) != len(kinds):
                raise ConfigError(
                    f"SLURM_TOPOLOGY_ADDR[rank {rank}]", addr,
                    f"{len(kinds)} dot-separated parts matching the pattern '{pattern}' "
                    "(is TopologyPlugin=topology/tree set?)",
                )
            racks.append(parts[-2])
            hosts.append(parts[-1])
        if hostnames is not None:
            hosts = list(hostnames)
        return cls(tuple(racks), tuple(hosts))

    @classmethod
    def from_scontrol(cls, topology_text: str, hostnames: Sequence[str]) -> RackMap:
        """From `scontrol show topology` output: each host's rack is the leaf switch listing it."""
        rack_of_host: dict[str, str] = {}
        for switch in parse_scontrol_topology(topology_text):
            if switch["switches"] or not switch["nodes"]:
                continue  # not a leaf switch
            for host in switch["nodes"]:
                rack_of_host.setdefault(host, switch["name"])
        if not rack_of_host:
            raise ConfigError("scontrol show topology", topology_text[:200], "at least one leaf switch with Nodes=")
        return cls(_place(hostnames, rack_of_host, "scontrol show topology"), tuple(hostnames))

    # ---- queries ------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return len(self.rack_of_rank)

    def rack_names(self, ranks: Sequence[int] | None = None) -> list[str]:
        """Racks in order of first appearance among `ranks` (default: all ranks)."""
        chosen = range(self.world_size) if ranks is None else ranks
        names: list[str] = []
        for r in chosen:
            if self.rack_of_rank[r] not in names:
                names.append(self.rack_of_rank[r])
        return names

    def racks_of(self, ranks: Sequence[int]) -> list[list[int]]:
        """Partition `ranks` by rack: racks in first-appearance order, ranks sorted inside a rack."""
        self._check_ranks(ranks)
        return [sorted(r for r in ranks if self.rack_of_rank[r] == name) for name in self.rack_names(ranks)]

    def same_rack(self, a: int, b: int) -> bool:
        return self.rack_of_rank[a] == self.rack_of_rank[b]

    def _check_ranks(self, ranks: Sequence[int]) -> None:
        for r in ranks:
            if not 0 <= r < self.world_size:
                raise ConfigError("group_ranks", r, f"ranks in [0, {self.world_size}) known to the rack map")
        if len(set(ranks)) != len(ranks):
            raise ConfigError("group_ranks", list(ranks), "distinct ranks")


def _place(hostnames: Sequence[str], rack_of_host: Mapping[str, str], source: str) -> tuple[str, ...]:
    racks = []
    for rank, host in enumerate(hostnames):
        if host not in rack_of_host:
            raise ConfigError(
                f"{source} (rank {rank})", host, f"a host listed in one of the racks {sorted(set(rack_of_host.values()))}"
            )
        racks.append(rack_of_host[host])
    return tuple(racks)


def parse_scontrol_topology(text: str) -> list[dict]:
    """Parse `scontrol show topology` lines into [{name, level, nodes, switches}]."""
    switches = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "SwitchName" not in fields:
            raise ConfigError("scontrol show topology", f"line {line_no}: {line}", "lines starting 'SwitchName='")
        switches.append({
            "name": fields["SwitchName"],
            "level": int(fields.get("Level", "0")),
            "nodes": expand_hostlist(fields["Nodes"]) if fields.get("Nodes") else [],
            "switches": expand_hostlist(fields["Switches"]) if fields.get("Switches") else [],
        })
    return switches


def local_topology_from_env(env: Mapping[str, str], hostname: str) -> tuple[str, str, str]:
    """(hostname, SLURM_TOPOLOGY_ADDR, pattern) of this task; hostname prefers SLURMD_NODENAME."""
    host = env.get("SLURMD_NODENAME") or hostname
    return host, env.get("SLURM_TOPOLOGY_ADDR", ""), env.get("SLURM_TOPOLOGY_ADDR_PATTERN", "")
