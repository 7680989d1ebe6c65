"""The rack testbed: builds and removes a `FabricSpec` (network namespaces, bridges, htb uplinks),
remembers it in a state file so `down` works from another process or after a crash, and reads uplink
byte counters.

CLI: `python -m hybridrec.testbed.racks up|down|status --base DIR [--racks 2 --nodes-per-rack 2
--rate 100mbit --host-leg]` (root required).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Self

from hybridrec.testbed import daemons
from hybridrec.testbed.fabric import (
    BENCHMARK_NET,
    FabricSpec,
    down_commands,
    up_commands,
    uplink_counter_paths,
)

STATE_FILE = "racks.json"


def _used_octets() -> set[int]:
    """Third bytes of 198.18.x.0/24 networks already configured in the root namespace."""
    out = daemons.run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = set()
    for word in out.split():
        if "/" in word:
            try:
                addr = ipaddress.ip_interface(word).ip
            except ValueError:
                continue
            if addr in BENCHMARK_NET:
                used.add(int(addr) - int(BENCHMARK_NET.network_address) >> 8 & 0xFF)
    return used


class RackTestbed:
    """Racks of network namespaces. Use as a context manager, or `up()` / `down()` explicitly."""

    def __init__(self, base: str | os.PathLike, spec: FabricSpec):
        self.base = Path(base)
        self.spec = spec

    @classmethod
    def create(cls, base: str | os.PathLike, racks: int = 2, nodes_per_rack: int = 2, rate: str = "100mbit",
               host_leg: bool = False) -> RackTestbed:
        """A fresh spec with a random run id and a /24 unused in the root namespace."""
        free = sorted(set(range(1, 255)) - _used_octets())
        octet = free[secrets.randbelow(len(free))]
        layout = {f"rack{r + 1}": [f"n{r * nodes_per_rack + i + 1}" for i in range(nodes_per_rack)]
                  for r in range(racks)}
        spec = FabricSpec(run_id=secrets.token_hex(2), racks=layout, rate=rate, octet=octet, host_leg=host_leg)
        return cls(base, spec)

    @classmethod
    def load(cls, base: str | os.PathLike) -> RackTestbed:
        state = json.loads((Path(base) / STATE_FILE).read_text())
        return cls(base, FabricSpec(**state))

    def up(self) -> None:
        if os.geteuid() != 0:
            raise daemons.TestbedError("the rack testbed needs root (network namespaces)")
        self.base.mkdir(parents=True, exist_ok=True)
        # record first, so `down` can clean a half-built fabric
        (self.base / STATE_FILE).write_text(json.dumps(asdict(self.spec), indent=2))
        try:
            for argv in up_commands(self.spec):
                daemons.run(argv)
        except Exception:
            self.down()
            raise

    def down(self) -> list[str]:
        """Remove everything; returns what could not be removed (empty when clean)."""
        for argv in down_commands(self.spec):
            daemons.run(argv, check=False)
        left = self.leftovers()
        if not left:
            (self.base / STATE_FILE).unlink(missing_ok=True)
        return left

    def leftovers(self) -> list[str]:
        names = set(daemons.run(["ip", "netns", "list"], check=False).stdout.split())
        left = [ns for ns in self.spec.namespaces() if ns in names]
        if self.spec.host_leg and Path(f"/sys/class/net/{self.spec.host_if}").exists():
            left.append(self.spec.host_if)
        return left

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """argv that runs a command inside a node's namespace."""
        return ["ip", "netns", "exec", self.spec.node_ns(node), *argv]

    def popen(self, node: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.exec_argv(node, argv), **kwargs)  # type: ignore[call-overload]

    def uplink_bytes(self, rack: str) -> dict[str, int]:
        """Bytes that left ('out') and entered ('in') a rack over its uplink so far."""
        paths = uplink_counter_paths(self.spec, rack)
        argv = ["ip", "netns", "exec", self.spec.fabric_ns, "cat", paths["out"], paths["in"]]
        out, inn = daemons.run(argv).stdout.split()
        return {"out": int(out), "in": int(inn)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridrec.testbed.racks", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--base", default="/tmp/hybridrec-racks", help="state directory")
    parser.add_argument("--racks", type=int, default=2)
    parser.add_argument("--nodes-per-rack", type=int, default=2)
    parser.add_argument("--rate", default="100mbit", help="uplink rate (tc units), '' = unshaped")
    parser.add_argument("--host-leg", action="store_true", help="give the root namespace a fabric address")
    args = parser.parse_args(argv)
    if args.action == "up":
        bed = RackTestbed.create(args.base, args.racks, args.nodes_per_rack, args.rate, args.host_leg)
        bed.up()
        for node in bed.spec.nodes():
            print(f"{node} netns={bed.spec.node_ns(node)} addr={bed.spec.addr(node)}")
        return 0
    if not (Path(args.base) / STATE_FILE).exists():
        print(f"no rack testbed recorded under {args.base}")
        return 0 if args.action == "down" else 1
    bed = RackTestbed.load(args.base)
    if args.action == "down":
        left = bed.down()
        print("left over: " + ", ".join(left) if left else "removed")
        return 1 if left else 0
    print(json.dumps(asdict(bed.spec), indent=2))
    for rack in bed.spec.racks:
        print(rack, bed.uplink_bytes(rack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
