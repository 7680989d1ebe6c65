"""Pure description of a rack fabric of network namespaces, and the `ip`/`tc` commands that build it.

Shape (per run, names prefixed with a run id so several testbeds can coexist):
- namespace `<id>-fab` holds one bridge per rack (`br<r>`) and a `spine` bridge; rack r's uplink is a
  veth pair `up<r>` (in br<r>) <-> `sp<r>` (in spine), htb-limited in both directions: egress of
  `up<r>` is traffic leaving rack r, egress of `sp<r>` is traffic entering it;
- node namespaces `<id>-<node>` with `eth0` = 198.18.<octet>.<i>/24 whose peer `p<i>` sits in its
  rack's bridge;
- optionally a host leg: `<id>h` in the root namespace (198.18.<octet>.254/24) whose peer sits on the
  spine, so daemons in the root namespace (slurmctld) reach every node.
Addresses come only from 198.18.0.0/15; no namespace gets a default route (only connected /24s).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from hybridrec.errors import ConfigError

BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")
HOST_SUFFIX = 254


@dataclass(frozen=True)
class FabricSpec:
    """run_id: short [a-z0-9] id; racks: rack name -> node names; rate: tc rate like '100mbit' or ''
    (unshaped); octet: third byte of the /24 the run uses; host_leg: connect the root namespace."""

    run_id: str
    racks: dict[str, list[str]]
    rate: str = "100mbit"
    octet: int = 0
    host_leg: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,8}", self.run_id):
            raise ConfigError("run_id", self.run_id, "1-8 characters of [a-z0-9]")
        if not self.racks or any(not nodes for nodes in self.racks.values()):
            raise ConfigError("racks", self.racks, "at least one rack, each with at least one node")
        if not 0 <= self.octet <= 255:
            raise ConfigError("octet", self.octet, "0..255")
        if self.rate and not re.fullmatch(r"\d+(\.\d+)?(bit|kbit|mbit|gbit)", self.rate):
            raise ConfigError("rate", self.rate, "a tc rate such as 100mbit or 1gbit, or '' for unshaped")
        if len(self.nodes()) > HOST_SUFFIX - 1:
            raise ConfigError("racks", len(self.nodes()), f"at most {HOST_SUFFIX - 1} nodes")

    def nodes(self) -> list[str]:
        return [node for nodes in self.racks.values() for node in nodes]

    def rack_index(self, rack: str) -> int:
        return list(self.racks).index(rack) + 1

    @property
    def fabric_ns(self) -> str:
        return f"hr{self.run_id}-fab"

    def node_ns(self, node: str) -> str:
        return f"hr{self.run_id}-{node}"

    @property
    def host_if(self) -> str:
        return f"hr{self.run_id}h"

    def addr(self, node: str) -> str:
        return str(BENCHMARK_NET.network_address + self.octet * 256 + self.nodes().index(node) + 1)

    @property
    def host_addr(self) -> str:
        return str(BENCHMARK_NET.network_address + self.octet * 256 + HOST_SUFFIX)

    def namespaces(self) -> list[str]:
        return [self.fabric_ns] + [self.node_ns(node) for node in self.nodes()]


def rate_bits(rate: str) -> float:
    """'100mbit' -> 1e8 bits/s (tc's decimal units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", rate)
    if not match:
        raise ConfigError("rate", rate, "a tc rate such as 100mbit")
    scale = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def up_commands(spec: FabricSpec) -> list[list[str]]:
    """The argv lists that build the fabric, in order (each is idempotent only on a clean machine)."""
    fab = spec.fabric_ns
    in_fab = ["ip", "-n", fab]
    cmds: list[list[str]] = [["ip", "netns", "add", fab], [*in_fab, "link", "set", "lo", "up"]]
    bridges = [f"br{spec.rack_index(rack)}" for rack in spec.racks] + ["spine"]
    for bridge in bridges:
        cmds += [
            [*in_fab, "link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            [*in_fab, "link", "set", bridge, "up"],
        ]
    for rack in spec.racks:
        r = spec.rack_index(rack)
        cmds += [
            [*in_fab, "link", "add", f"up{r}", "type", "veth", "peer", "name", f"sp{r}"],
            [*in_fab, "link", "set", f"up{r}", "master", f"br{r}"],
            [*in_fab, "link", "set", f"sp{r}", "master", "spine"],
            [*in_fab, "link", "set", f"up{r}", "up"],
            [*in_fab, "link", "set", f"sp{r}", "up"],
        ]
        if spec.rate:
            for dev in (f"up{r}", f"sp{r}"):
                cmds += [
                    [*in_fab, "link", "set", dev, "txqueuelen", "1000"],
                    ["ip", "netns", "exec", fab, "tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:",
                     "htb", "default", "10"],
                    ["ip", "netns", "exec", fab, "tc", "class", "replace", "dev", dev, "parent", "1:",
                     "classid", "1:10", "htb", "rate", spec.rate, "ceil", spec.rate],
                ]
    for index, node in enumerate(spec.nodes(), start=1):
        rack = next(r for r, nodes in spec.racks.items() if node in nodes)
        ns = spec.node_ns(node)
        cmds += [
            ["ip", "netns", "add", ns],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            [*in_fab, "link", "add", f"p{index}", "type", "veth", "peer", "name", "eth0", "netns", ns],
            [*in_fab, "link", "set", f"p{index}", "master", f"br{spec.rack_index(rack)}"],
            [*in_fab, "link", "set", f"p{index}", "up"],
            ["ip", "-n", ns, "addr", "add", f"{spec.addr(node)}/24", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ]
    if spec.host_leg:
        cmds += [
            ["ip", "link", "add", spec.host_if, "type", "veth", "peer", "name", "host", "netns", fab],
            [*in_fab, "link", "set", "host", "master", "spine"],
            [*in_fab, "link", "set", "host", "up"],
            ["ip", "addr", "add", f"{spec.host_addr}/24", "dev", spec.host_if],
            ["ip", "link", "set", spec.host_if, "up"],
        ]
    return cmds


def down_commands(spec: FabricSpec) -> list[list[str]]:
    """Teardown: the host leg, then every namespace (deleting a namespace deletes its veth ends).
    Each command may fail harmlessly when the object is already gone."""
    cmds = [["ip", "link", "del", spec.host_if]] if spec.host_leg else []
    return cmds + [["ip", "netns", "del", ns] for ns in spec.namespaces()]


def uplink_counter_paths(spec: FabricSpec, rack: str) -> dict[str, str]:
    """sysfs byte counters (read inside the fabric namespace) of a rack's uplink: 'out' = bytes that
    left the rack, 'in' = bytes that entered it."""
    r = spec.rack_index(rack)
    return {"out": f"/sys/class/net/up{r}/statistics/tx_bytes", "in": f"/sys/class/net/sp{r}/statistics/tx_bytes"}
