"""A private multi-node Slurm cluster on this machine: one munged, one slurmctld and one slurmd per
node, each slurmd in its own UTS + mount namespace (hostname nX, private /etc/hosts), optionally inside
the rack testbed's network namespaces so jobs' ranks talk over shaped uplinks.

Everything lives under one base directory (mode 711, munge needs o+x on every parent); ports are chosen
per run; daemons are recorded by pid in `<base>/cluster.json` as they start, so `down` works from
another process and after a failed `up`. Teardown order: scancel, wait for an empty queue, scontrol
shutdown, kill leftover slurmstepd of this cluster, then remaining daemons (munged last) by pid.

Accounting (when MariaDB and slurmdbd are installed, `accounting=None` = auto): a private mariadbd
(datadir, socket and a TCP port under/for this cluster only), slurmdbd on it, the cluster registered
with `sacctmgr`, and slurm.conf pointing at it, so `sacct` reports states, exit codes, elapsed times and
MaxRSS as on a real cluster (and submitit polls without warnings).

CLI: `python -m hybridrec.testbed.cluster up|down|status|env [--base DIR] [--racks --rate 100mbit]
[--no-accounting]`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Self

from hybridrec.testbed import daemons
from hybridrec.testbed.racks import RackTestbed
from hybridrec.testbed.slurmconf import (
    ClusterSpec,
    NodeSpec,
    build_spec,
    node_hosts,
    slurm_conf,
    slurmdbd_conf,
    topology_conf,
)

STATE_FILE = "cluster.json"
DEFAULT_BASE = "/tmp/hybridrec-slurm"
DAEMONS = ("slurmctld", "slurmd", "munged", "sinfo")
ACCOUNTING_PROGRAMS = ("mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacctmgr", "sacct")


def accounting_available() -> bool:
    """MariaDB and slurmdbd are installed (scripts/install.sh installs them as root)."""
    from shutil import which

    return all(which(name) for name in ACCOUNTING_PROGRAMS)


def missing_programs() -> list[str]:
    """Slurm/munge programs not on PATH (the cluster cannot start without them)."""
    from shutil import which

    return [name for name in (*DAEMONS, "sbatch", "scontrol", "unshare", "nsenter") if which(name) is None]


def free_ports(count: int, low: int = 20000, high: int = 32000) -> list[int]:
    """`count` distinct TCP ports, bindable now, below the ephemeral range (so outgoing connections
    do not grab them between now and daemon start)."""
    ports: list[int] = []
    while len(ports) < count:
        port = low + secrets.randbelow(high - low)
        if port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
    return ports


class LocalCluster:
    """One private cluster. `up()` returns the seconds until every node was idle; `down()` is safe to
    call at any point (also after a failed `up`) and returns a list of problems (empty when clean)."""

    def __init__(self, base: str | os.PathLike = DEFAULT_BASE):
        self.base = Path(base)
        self.spec: ClusterSpec | None = None
        self.pids: dict[str, int] = {}
        self.racks: RackTestbed | None = None
        state = self.base / STATE_FILE
        if state.exists():
            self._load(json.loads(state.read_text()))

    # ----- state -----
    def _load(self, state: dict) -> None:
        spec = dict(state["spec"])
        spec["nodes"] = tuple(NodeSpec(**node) for node in spec["nodes"])
        self.spec = ClusterSpec(**spec)
        self.pids = {name: int(pid) for name, pid in state["pids"].items()}
        if state.get("racks"):
            self.racks = RackTestbed.load(state["racks"])

    def _save(self) -> None:
        assert self.spec is not None
        state = {"spec": asdict(self.spec), "pids": self.pids,
                 "racks": str(self.racks.base) if self.racks else ""}
        (self.base / STATE_FILE).write_text(json.dumps(state, indent=2))

    @property
    def conf(self) -> str:
        assert self.spec is not None, "cluster not configured"
        return self.spec.conf_path

    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (sbatch, squeue, submitit) talking to this cluster."""
        env = dict(os.environ)
        env["SLURM_CONF"] = self.conf
        return env

    def run(self, argv: Sequence[str], timeout: float = 30, check: bool = True):
        return daemons.run(argv, env=self.env(), timeout=timeout, check=check)

    # ----- up -----
    def configure(self, racks: int = 2, nodes_per_rack: int = 2, cpus_per_node: int = 2,
                  in_racks: bool = False, rate: str = "100mbit", accounting: bool | None = None) -> ClusterSpec:
        """Write the cluster's files; with `in_racks` also build the rack testbed (with a host leg)."""
        self.base.mkdir(parents=True, exist_ok=True)
        # munged refuses a socket path without x for everyone on every directory above it
        os.chmod(self.base, os.stat(self.base).st_mode | 0o111)
        for parent in self.base.resolve().parents:
            if os.stat(parent).st_mode & 0o111 != 0o111:
                raise daemons.TestbedError(f"{parent} lacks execute permission for all (munged needs it on "
                                           f"every parent of {self.base}); use a base under /tmp")
        count = racks * nodes_per_rack
        extra: dict = {}
        if in_racks:
            self.racks = RackTestbed.create(self.base / "racks", racks, nodes_per_rack, rate, host_leg=True)
            fab = self.racks.spec
            extra = {"node_addrs": [fab.addr(n) for n in fab.nodes()], "controller_addr": fab.host_addr,
                     "node_netns": {n: fab.node_ns(n) for n in fab.nodes()}}
        ports = free_ports(count + 3)
        spec = build_spec(str(self.base), socket.gethostname(), ports[:count + 1], racks,
                          nodes_per_rack, cpus_per_node=cpus_per_node,
                          cluster_name=f"hr{secrets.token_hex(3)}", **extra)
        if accounting_available() if accounting is None else accounting:
            from dataclasses import replace

            spec = replace(spec, dbd_port=ports[count + 1], db_port=ports[count + 2])
        self.spec = spec
        for stale in ("state", "spool", "run", "db"):  # a new configuration starts from empty controller state
            shutil.rmtree(self.base / stale, ignore_errors=True)
        for sub in ("etc", "state", "log", "run", *(f"spool/{n.name}" for n in self.spec.nodes)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        etc = self.base / "etc"
        (etc / "slurm.conf").write_text(slurm_conf(self.spec))
        (etc / "topology.conf").write_text(topology_conf(self.spec.racks()))
        (etc / "hosts.nodes").write_text(node_hosts(self.spec))
        self.pids = {}
        self._save()
        return self.spec

    def up(self, timeout: float = 60, **configure_kwargs: object) -> float:
        """Configure (unless already), start all daemons, wait until every node is idle."""
        start = time.monotonic()
        if os.geteuid() != 0:
            raise daemons.TestbedError("the local Slurm cluster needs root (namespaces, SlurmUser=root)")
        if missing_programs():
            raise daemons.TestbedError(f"missing programs: {missing_programs()} (see scripts/install.sh)")
        try:
            if self.spec is None or configure_kwargs:
                self.configure(**configure_kwargs)  # type: ignore[arg-type]
            if self.racks:
                self.racks.up()
            self._start_munge()
            if self.spec.dbd_port:  # type: ignore[union-attr]
                self._start_accounting()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf])
            for node in self.spec.nodes:  # type: ignore[union-attr]
                self._spawn(f"slurmd.{node.name}", self._slurmd_argv(node))
            if not daemons.wait_until(self._all_idle, timeout, 0.2):
                raise daemons.TestbedError(f"nodes not idle after {timeout}s:\n{self.status()}\n"
                                           f"see logs under {self.base}/log")
        except BaseException:
            self.down()
            raise
        return time.monotonic() - start

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.pids[name] = daemons.spawn(argv, self.base / "log" / f"{name}.out", env=env)
        self._save()

    def _start_munge(self) -> None:
        munge = self.base / "munge"
        munge.mkdir(exist_ok=True)
        os.chmod(munge, 0o711)
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(128))
        os.chmod(key, 0o600)
        self._spawn("munged", ["munged", "-F", f"--socket={self.spec.munge_socket}",  # type: ignore[union-attr]
                               f"--key-file={key}", f"--log-file={munge}/munged.log",
                               f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed"])
        if not daemons.wait_until(lambda: Path(self.spec.munge_socket).exists(), 10):  # type: ignore[union-attr]
            raise daemons.TestbedError(f"munged did not create its socket; see {munge}/munged.log")

    def _start_accounting(self) -> None:
        """mariadbd (fresh datadir) -> user `slurm` -> slurmdbd -> this cluster registered."""
        spec = self.spec
        assert spec is not None
        db = self.base / "db"
        sock = db / "mysqld.sock"
        if not (db / "data" / "mysql").exists():
            db.mkdir(exist_ok=True)
            daemons.run(["mariadb-install-db", "--no-defaults", f"--datadir={db}/data", "--user=root",
                         "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=120)
        self._spawn("mariadbd", ["mariadbd", "--no-defaults", f"--datadir={db}/data", f"--socket={sock}",
                                 f"--port={spec.db_port}", "--bind-address=127.0.0.1", "--user=root",
                                 f"--pid-file={db}/mariadbd.pid", f"--log-error={self.base}/log/mariadbd.log",
                                 "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                                 "--innodb-log-file-size=16M", "--performance-schema=off"])
        client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]
        if not daemons.wait_until(lambda: daemons.run([*client, "-e", "SELECT 1"], check=False,
                                                      timeout=10).returncode == 0, 60, 0.3):
            raise daemons.TestbedError(f"mariadbd did not answer; see {self.base}/log/mariadbd.log")
        password = secrets.token_hex(12)
        daemons.run([*client, "-e",
                     (f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                     f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                     "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")])
        conf = self.base / "etc" / "slurmdbd.conf"
        conf.write_text(slurmdbd_conf(spec, password))
        os.chmod(conf, 0o600)
        self._spawn("slurmdbd", ["slurmdbd", "-D"], env={**os.environ, "SLURM_CONF": self.conf})
        register = ["sacctmgr", "-i", "add", "cluster", spec.cluster_name]
        if not daemons.wait_until(lambda: self.run(register, check=False, timeout=15).returncode == 0
                                  or self._cluster_registered(), 60, 0.5):
            raise daemons.TestbedError(f"slurmdbd did not register the cluster; see {self.base}/log/slurmdbd.log")

    def _cluster_registered(self) -> bool:
        proc = self.run(["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"], check=False, timeout=15)
        return proc.returncode == 0 and self.spec is not None and self.spec.cluster_name in proc.stdout.split()

    def _slurmd_argv(self, node: NodeSpec) -> list[str]:
        hosts = self.base / "etc" / "hosts.nodes"
        inner = f"hostname {node.name} && mount --bind {hosts} /etc/hosts"
        prefix: list[str] = []
        netns = self.spec.node_netns.get(node.name) if self.spec else None
        if netns:
            # join only the network namespace (`ip netns exec` would remount /sys and hide the cgroup
            # tree from slurmd); then, privately, show this netns's sysfs with the cgroup tree on top
            stash = self.base / "run" / f"cgstash.{node.name}"
            stash.mkdir(exist_ok=True)
            prefix = ["nsenter", f"--net=/run/netns/{netns}"]
            inner += (f" && mount --rbind /sys/fs/cgroup {stash} && mount -t sysfs sysfs-{node.name} /sys"
                      f" && mount --move {stash} /sys/fs/cgroup")
        inner += f" && exec slurmd -D -f {self.conf} -N {node.name}"
        return [*prefix, "unshare", "--uts", "--mount", "sh", "-c", inner]

    def _all_idle(self) -> bool:
        for name, pid in self.pids.items():
            if not daemons.alive(pid):
                raise daemons.TestbedError(f"{name} (pid {pid}) exited; see {self.base}/log/{name}.out")
        proc = self.run(["sinfo", "-h", "-t", "idle", "-o", "%D"], check=False, timeout=10)
        idle = sum(int(x) for x in proc.stdout.split() if x.isdigit())
        return proc.returncode == 0 and idle == len(self.spec.nodes)  # type: ignore[union-attr]

    # ----- down -----
    def down(self, queue_timeout: float = 30) -> list[str]:
        problems: list[str] = []
        ctld = self.pids.get("slurmctld")
        if self.spec is not None and ctld and daemons.alive(ctld):
            self.run(["scancel", "--user", str(os.geteuid())], check=False)
            self.run(["scancel", "--user", "root"], check=False)
            if not daemons.wait_until(self._queue_empty, queue_timeout, 0.3):
                problems.append(f"queue not empty after {queue_timeout}s")
            self.run(["scontrol", "shutdown"], check=False)
            slurm = [pid for name, pid in self.pids.items() if name != "munged"]
            daemons.wait_until(lambda: not any(daemons.alive(p) for p in slurm), 10, 0.2)
        for pid in daemons.pids_with_open_path("slurmstepd", str(self.base)):
            problems.append(f"leftover slurmstepd {pid} killed")
            os.kill(pid, 9)
        order = [name for name in self.pids if name != "munged"] + ["munged"]
        killed = daemons.stop_pids([self.pids[name] for name in order if name in self.pids])
        problems += [f"pid {pid} needed SIGKILL" for pid in killed]
        if self.racks:
            problems += [f"left over: {x}" for x in self.racks.down()]
        self.pids = {}
        if self.spec is not None:
            self._save()
        return problems

    def _queue_empty(self) -> bool:
        proc = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=10)
        return proc.returncode == 0 and not proc.stdout.strip()

    def status(self) -> str:
        if self.spec is None:
            return f"no cluster configured under {self.base}"
        lines = [f"base={self.base} conf={self.conf}"]
        lines += [f"{name} pid={pid} {'alive' if daemons.alive(pid) else 'dead'}" for name, pid in self.pids.items()]
        for argv in (["sinfo"], ["squeue"]):
            proc = self.run(argv, check=False, timeout=10)
            lines.append(proc.stdout.rstrip() or proc.stderr.rstrip())
        return "\n".join(lines)

    def __enter__(self) -> Self:
        if not any(daemons.alive(p) for p in self.pids.values()):
            self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridrec.testbed.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("--base", default=os.environ.get("HYBRIDREC_SLURM_BASE", DEFAULT_BASE))
    parser.add_argument("--racks", type=int, default=2)
    parser.add_argument("--nodes-per-rack", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs declared per node")
    parser.add_argument("--in-racks", action="store_true", help="run the slurmds in rack namespaces")
    parser.add_argument("--rate", default="100mbit", help="uplink rate with --in-racks ('' = unshaped)")
    parser.add_argument("--no-accounting", action="store_true",
                        help="no slurmdbd/MariaDB even when installed (sacct disabled)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.base)
    if args.action == "up":
        if any(daemons.alive(pid) for pid in cluster.pids.values()):
            print(f"already up under {args.base}; run down first", file=sys.stderr)
            return 1
        seconds = cluster.up(racks=args.racks, nodes_per_rack=args.nodes_per_rack, cpus_per_node=args.cpus,
                             in_racks=args.in_racks, rate=args.rate,
                             accounting=False if args.no_accounting else None)
        print(f"up in {seconds:.2f} s\n{cluster.status()}\nexport SLURM_CONF={cluster.conf}")
        return 0
    if cluster.spec is None:
        print(f"no cluster under {args.base}", file=sys.stderr)
        return 0 if args.action == "down" else 1
    if args.action == "down":
        problems = cluster.down()
        print("\n".join(problems) if problems else "down, clean")
        return 0
    if args.action == "env":
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    print(cluster.status())
    return 0


if __name__ == "__main__":
    sys.exit(main())
