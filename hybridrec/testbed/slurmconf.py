"""Pure generation of a private Slurm cluster's files: slurm.conf, topology.conf, the hosts file
seen inside the node namespaces and, with accounting, slurmdbd.conf (slurmdbd on a private MariaDB). No processes, no I/O: everything is derived from a `ClusterSpec`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hybridrec.errors import ConfigError


@dataclass(frozen=True)
class NodeSpec:
    """One slurmd: its node name (also its hostname inside its namespace), rack, address and port."""

    name: str
    rack: str
    addr: str
    port: int


@dataclass(frozen=True)
class ClusterSpec:
    """Everything that distinguishes one private cluster from another running on the same machine."""

    base: str
    cluster_name: str
    controller_host: str
    controller_addr: str
    controller_port: int
    nodes: tuple[NodeSpec, ...]
    cpus_per_node: int = 2
    mem_mb_per_node: int = 1000
    partition: str = "debug"
    # names of network namespaces the slurmds live in (rack testbed), "" when they share the host's
    node_netns: dict[str, str] = field(default_factory=dict)
    # accounting: slurmdbd's port and its MariaDB's (0 = no accounting, sacct disabled)
    dbd_port: int = 0
    db_port: int = 0

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ConfigError("nodes", [], "at least one node")
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError("nodes", names, "unique node names")
        for node in self.nodes:
            if not re.fullmatch(r"[a-z][a-z0-9]*", node.name):
                raise ConfigError("nodes.name", node.name, "a lowercase name like n1")
        if self.cpus_per_node < 1:
            raise ConfigError("cpus_per_node", self.cpus_per_node, "an integer >= 1")

    @property
    def conf_path(self) -> str:
        return f"{self.base}/etc/slurm.conf"

    @property
    def munge_socket(self) -> str:
        return f"{self.base}/munge/munge.socket.2"

    def racks(self) -> dict[str, list[str]]:
        """Rack name -> node names, in declaration order."""
        out: dict[str, list[str]] = {}
        for node in self.nodes:
            out.setdefault(node.rack, []).append(node.name)
        return out


def build_spec(
    base: str,
    controller_host: str,
    ports: list[int],
    racks: int = 2,
    nodes_per_rack: int = 2,
    node_addrs: list[str] | None = None,
    controller_addr: str = "127.0.0.1",
    cpus_per_node: int = 2,
    cluster_name: str = "local",
    node_netns: dict[str, str] | None = None,
) -> ClusterSpec:
    """Nodes n1..nN filled rack by rack (rack1 gets n1..n{nodes_per_rack}); `ports[0]` is the
    controller's, `ports[1:]` the slurmds'. Default node addresses are 127.0.1.<i> on the loopback."""
    count = racks * nodes_per_rack
    if racks < 1 or nodes_per_rack < 1:
        raise ConfigError("racks/nodes_per_rack", (racks, nodes_per_rack), "both >= 1")
    if len(ports) != count + 1:
        raise ConfigError("ports", ports, f"{count + 1} ports (controller + one per node)")
    addrs = node_addrs or [f"127.0.1.{i}" for i in range(1, count + 1)]
    if len(addrs) != count:
        raise ConfigError("node_addrs", addrs, f"{count} addresses")
    nodes = tuple(
        NodeSpec(name=f"n{i + 1}", rack=f"rack{i // nodes_per_rack + 1}", addr=addrs[i], port=ports[i + 1])
        for i in range(count)
    )
    return ClusterSpec(
        base=base, cluster_name=cluster_name, controller_host=controller_host,
        controller_addr=controller_addr, controller_port=ports[0], nodes=nodes,
        cpus_per_node=cpus_per_node, node_netns=dict(node_netns or {}),
    )


def hostlist(names: list[str]) -> str:
    """Compress names with a common prefix and numeric suffix: [n1, n2, n4] -> 'n[1-2,4]'."""
    parsed = [re.fullmatch(r"(.*?)(\d+)", name) for name in names]
    if not names or any(m is None for m in parsed) or len({m.group(1) for m in parsed}) != 1:  # type: ignore[union-attr]
        return ",".join(names)
    prefix = parsed[0].group(1)  # type: ignore[union-attr]
    numbers = sorted(int(m.group(2)) for m in parsed)  # type: ignore[union-attr]
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    parts = [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs]
    if len(parts) == 1 and "-" not in parts[0]:
        return f"{prefix}{parts[0]}"
    return f"{prefix}[{','.join(parts)}]"


def accounting_lines(spec: ClusterSpec) -> list[str]:
    """slurm.conf lines for slurmdbd accounting: job states, exit codes, elapsed time and (sampled
    every 2 s from /proc) MaxRSS per step, as `sacct` shows them on a real cluster."""
    return ["JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=task=2",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={spec.dbd_port}",
            # clients authenticate to slurmdbd through this munge socket (AuthInfo is not used there)
            f"AccountingStoragePass={spec.munge_socket}"]


def slurmdbd_conf(spec: ClusterSpec, db_password: str) -> str:
    """slurmdbd.conf (mode 0600, beside slurm.conf: slurmdbd finds it through SLURM_CONF): slurmdbd on 127.0.0.1:`dbd_port`, storing into the private MariaDB
    on 127.0.0.1:`db_port` as user `slurm`."""
    b = spec.base
    return "\n".join([
        "AuthType=auth/munge",
        f"AuthInfo=socket={spec.munge_socket}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={spec.dbd_port}",
        "SlurmUser=root",
        f"PidFile={b}/run/slurmdbd.pid",
        f"LogFile={b}/log/slurmdbd.log",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={spec.db_port}",
        "StorageUser=slurm",
        f"StoragePass={db_password}",
        "StorageLoc=slurm_acct_db",
    ]) + "\n"


def slurm_conf(spec: ClusterSpec) -> str:
    """slurm.conf for the private cluster: everything under `spec.base`, munge on a private socket,
    tree topology, accounting through slurmdbd when `spec.dbd_port` is set (none otherwise)."""
    b = spec.base
    ctl = spec.controller_host
    if spec.controller_addr not in ("", "127.0.0.1"):
        ctl = f"{ctl}({spec.controller_addr})"
    overrides = spec.cpus_per_node > 2
    lines = [
        f"ClusterName={spec.cluster_name}",
        f"SlurmctldHost={ctl}",
        f"SlurmctldPort={spec.controller_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={spec.munge_socket}",
        f"StateSaveLocation={b}/state",
        f"SlurmdSpoolDir={b}/spool/%n",
        f"SlurmctldPidFile={b}/run/slurmctld.pid",
        f"SlurmdPidFile={b}/run/slurmd.%n.pid",
        f"SlurmctldLogFile={b}/log/slurmctld.log",
        f"SlurmdLogFile={b}/log/slurmd.%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        *(["SlurmdParameters=config_overrides"] if overrides else []),
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0,sched_interval=2",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=5",
        *(accounting_lines(spec) if spec.dbd_port else ["JobAcctGatherType=jobacct_gather/none",
                                                         "AccountingStorageType=accounting_storage/none"]),
        "JobCompType=jobcomp/none",
        "TopologyPlugin=topology/tree",
    ]
    for node in spec.nodes:
        lines.append(
            f"NodeName={node.name} NodeHostname={node.name} NodeAddr={node.addr} Port={node.port} "
            f"CPUs={spec.cpus_per_node} RealMemory={spec.mem_mb_per_node} State=UNKNOWN"
        )
    all_nodes = hostlist([node.name for node in spec.nodes])
    lines.append(f"PartitionName={spec.partition} Nodes={all_nodes} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def topology_conf(racks: dict[str, list[str]], spine: str = "spine") -> str:
    """Two-level tree: one leaf switch per rack, all under one spine switch."""
    lines = [f"SwitchName={rack} Nodes={hostlist(nodes)}" for rack, nodes in racks.items()]
    if len(racks) > 1:
        lines.append(f"SwitchName={spine} Switches={','.join(racks)}")
    return "\n".join(lines) + "\n"


def node_hosts(spec: ClusterSpec) -> str:
    """/etc/hosts seen by every slurmd (and so by every job step): the controller's hostname MUST
    resolve to an address the node can reach, or launches time out while nodes look idle."""
    lines = ["127.0.0.1 localhost"]
    if spec.controller_addr in ("", "127.0.0.1"):
        lines[0] += f" {spec.controller_host}"
    else:
        lines.append(f"{spec.controller_addr} {spec.controller_host}")
    lines += [f"{node.addr} {node.name}" for node in spec.nodes]
    return "\n".join(lines) + "\n"
