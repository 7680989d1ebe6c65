"""Pure parts of the testbeds: slurm.conf / topology.conf / hosts text and the fabric's commands."""

from __future__ import annotations

import ipaddress

import pytest

from hybridrec.errors import ConfigError
from hybridrec.testbed.fabric import BENCHMARK_NET, FabricSpec, down_commands, rate_bits, up_commands
from hybridrec.testbed.slurmconf import build_spec, hostlist, node_hosts, slurm_conf, topology_conf


def test_hostlist_compresses_runs_like_slurm():
    assert hostlist(["n1", "n2"]) == "n[1-2]"
    assert hostlist(["n1", "n2", "n4"]) == "n[1-2,4]"
    assert hostlist(["n3"]) == "n3"
    assert hostlist(["a1", "b2"]) == "a1,b2"


def test_cluster_files_place_nodes_in_racks_with_per_run_ports():
    spec = build_spec("/b", "ctl", [20001, 20011, 20012, 20013, 20014])
    conf = slurm_conf(spec)
    assert "SlurmctldHost=ctl\n" in conf and "SlurmctldPort=20001" in conf
    assert "AuthInfo=socket=/b/munge/munge.socket.2" in conf and "TopologyPlugin=topology/tree" in conf
    assert "NodeName=n3 NodeHostname=n3 NodeAddr=127.0.1.3 Port=20013 CPUs=2" in conf
    assert "PartitionName=debug Nodes=n[1-4] Default=YES" in conf
    assert "config_overrides" not in conf
    assert topology_conf(spec.racks()) == (
        "SwitchName=rack1 Nodes=n[1-2]\nSwitchName=rack2 Nodes=n[3-4]\nSwitchName=spine Switches=rack1,rack2\n")
    # the controller's name must resolve inside every node namespace
    assert node_hosts(spec).splitlines()[0] == "127.0.0.1 localhost ctl"
    assert "127.0.1.4 n4" in node_hosts(spec)


def test_cluster_in_racks_uses_fabric_addresses_for_controller_and_nodes():
    spec = build_spec("/b", "ctl", [1, 2, 3, 4, 5], node_addrs=[f"198.18.7.{i}" for i in range(1, 5)],
                      controller_addr="198.18.7.254", cpus_per_node=8)
    conf = slurm_conf(spec)
    assert "SlurmctldHost=ctl(198.18.7.254)" in conf and "SlurmdParameters=config_overrides" in conf
    hosts = node_hosts(spec).splitlines()
    assert hosts[:2] == ["127.0.0.1 localhost", "198.18.7.254 ctl"]


def test_cluster_spec_refuses_bad_requests():
    with pytest.raises(ConfigError, match="ports"):
        build_spec("/b", "ctl", [1, 2])
    with pytest.raises(ConfigError, match="racks"):
        build_spec("/b", "ctl", [1], racks=0)


def test_fabric_commands_stay_in_benchmark_range_without_default_routes():
    spec = FabricSpec(run_id="ab12", racks={"rack1": ["n1", "n2"], "rack2": ["n3", "n4"]}, rate="100mbit",
                      octet=9, host_leg=True)
    cmds = up_commands(spec)
    flat = [" ".join(c) for c in cmds]
    addrs = [c[c.index("add") + 1] for c in cmds if "addr" in c and "add" in c]
    assert addrs == ["198.18.9.1/24", "198.18.9.2/24", "198.18.9.3/24", "198.18.9.4/24", "198.18.9.254/24"]
    assert all(ipaddress.ip_interface(a).ip in BENCHMARK_NET for a in addrs)
    assert not any("route" in line for line in flat)
    # htb on both ends of both uplinks
    assert sum("htb rate 100mbit ceil 100mbit" in line for line in flat) == 4
    # interface names fit Linux's 15 characters; namespaces carry the run id
    names = [c[c.index("add") + 1] for c in cmds if "link" in c and "add" in c]
    assert all(len(n) <= 15 for n in names) and "hrab12h" in names
    assert spec.namespaces() == ["hrab12-fab", "hrab12-n1", "hrab12-n2", "hrab12-n3", "hrab12-n4"]
    assert down_commands(spec)[0] == ["ip", "link", "del", "hrab12h"]
    assert [c[-1] for c in down_commands(spec)[1:]] == spec.namespaces()


def test_fabric_refuses_bad_specs_and_parses_rates():
    with pytest.raises(ConfigError, match="rate"):
        FabricSpec(run_id="a", racks={"r": ["n1"]}, rate="fast")
    with pytest.raises(ConfigError, match="racks"):
        FabricSpec(run_id="a", racks={"r": []})
    with pytest.raises(ConfigError, match="run_id"):
        FabricSpec(run_id="Bad-Id", racks={"r": ["n1"]})
    assert rate_bits("100mbit") == 1e8 and rate_bits("1gbit") == 1e9
