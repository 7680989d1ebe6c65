"""Rack maps from Slurm addresses, scontrol output and config mappings; validation errors; the
pure group plan (racks, leaders, shard columns) for uneven and interleaved layouts."""

import pytest

from hybridrec.distributed.allreduce.groups import plan_groups
from hybridrec.errors import ConfigError
from hybridrec.topology import RackMap, expand_hostlist, parse_scontrol_topology

SCONTROL = """\
SwitchName=rack1 Level=0 LinkSpeed=1 Nodes=n[1-2]
SwitchName=rack2 Level=0 LinkSpeed=1 Nodes=n[3-4]
SwitchName=spine Level=1 LinkSpeed=1 Nodes=n[1-4] Switches=rack[1-2]
"""


def test_slurm_topology_addrs_give_leaf_switch_as_rack():
    addrs = ["spine.rack1.n1", "spine.rack1.n2", "spine.rack2.n3", "spine.rack2.n4"]
    m = RackMap.from_topology_addrs(addrs, "switch.switch.node")
    assert m.rack_of_rank == ("rack1", "rack1", "rack2", "rack2")
    assert m.hostname_of_rank == ("n1", "n2", "n3", "n4")
    assert m.racks_of([0, 1, 2, 3]) == [[0, 1], [2, 3]]


def test_slurm_addr_not_matching_pattern_is_refused():
    with pytest.raises(ConfigError, match="SLURM_TOPOLOGY_ADDR\\[rank 1\\]"):
        RackMap.from_topology_addrs(["spine.rack1.n1", "n2"], "switch.switch.node")
    with pytest.raises(ConfigError, match="PATTERN"):
        RackMap.from_topology_addrs(["n1"], "node.switch")


def test_scontrol_topology_with_job_hosts_in_any_order():
    m = RackMap.from_scontrol(SCONTROL, ["n3", "n1", "n4", "n2"])
    assert m.rack_of_rank == ("rack2", "rack1", "rack2", "rack1")
    assert m.rack_names() == ["rack2", "rack1"]
    assert m.racks_of([0, 1, 2, 3]) == [[0, 2], [1, 3]]
    assert parse_scontrol_topology(SCONTROL)[2]["switches"] == ["rack1", "rack2"]


def test_unknown_node_is_named():
    with pytest.raises(ConfigError, match="n9"):
        RackMap.from_scontrol(SCONTROL, ["n1", "n9"])
    with pytest.raises(ConfigError, match="rank 1"):
        RackMap.from_mapping({"a": ["h1"]}, ["h1", "h2"])


def test_config_mapping_and_its_errors():
    m = RackMap.from_mapping({"a": ["h1", "h3"], "b": ["h2"]}, ["h1", "h2", "h3", "h1"])
    assert m.rack_of_rank == ("a", "b", "a", "a")
    with pytest.raises(ConfigError, match="allreduce.racks.b"):
        RackMap.from_mapping({"a": ["h1"], "b": []}, ["h1"])
    with pytest.raises(ConfigError, match="each host in one rack"):
        RackMap.from_mapping({"a": ["h1"], "b": ["h1"]}, ["h1"])
    with pytest.raises(ConfigError, match="non-empty mapping"):
        RackMap.from_mapping({}, ["h1"])


def test_every_rank_placed_and_single_rack():
    with pytest.raises(ConfigError, match="rank 1"):
        RackMap(("a", ""), ("h0", "h1"))
    with pytest.raises(ConfigError, match="one rack and one hostname per rank"):
        RackMap(("a",), ("h0", "h1"))
    assert RackMap.single(3).racks_of([0, 1, 2]) == [[0, 1, 2]]


def test_hostlist_expansion():
    assert expand_hostlist("n[1-3,5],m01,x[08-10]") == ["n1", "n2", "n3", "n5", "m01", "x08", "x09", "x10"]
    with pytest.raises(ConfigError):
        expand_hostlist("n[3-1]")


def test_plan_uneven_racks_columns_cover_each_rack_once():
    rack_map = RackMap.from_racks_list(["a", "b", "a", "b", "b"])  # interleaved, racks of 2 and 3
    plan = plan_groups(range(5), rack_map)
    assert plan.racks == ((0, 2), (1, 3, 4)) and plan.leaders == (0, 1) and plan.num_columns == 3
    for rack in plan.racks:
        owned = sorted(c for r in rack for c in range(*plan.owned_columns(r)))
        assert owned == [0, 1, 2]
    assert [plan.column_members(c) for c in range(3)] == [(0, 1), (2, 3), (2, 4)]
    runs = plan.column_runs(2)
    assert [(r.lo, r.hi, r.members) for r in runs] == [(1, 2, (2, 3)), (2, 3, (2, 4))]


def test_scontrol_nodes_with_two_bracket_groups_expand_like_scontrol_show_hostnames():
    text = "SwitchName=rackA Level=0 Nodes=r[1-2]n[1-2]\nSwitchName=top Level=1 Switches=rackA\n"
    m = RackMap.from_scontrol(text, ["r2n1", "r1n2"])
    assert m.rack_of_rank == ("rackA", "rackA")
    assert expand_hostlist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
