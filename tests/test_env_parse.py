"""DistEnv from torchrun / Slurm variables, the node-list parser, job-derived ports, backend choice."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from hybridrec.distributed.env import (
    PORT_BASE,
    PORT_SPAN,
    DistEnv,
    choose_backend,
    expand_nodelist,
    expand_tasks_per_node,
    port_for_job,
)
from hybridrec.errors import ConfigError

NODELISTS = {
    "n1": ["n1"],
    "n[1-3,5]": ["n1", "n2", "n3", "n5"],
    "gpu-[08-10],cpu1": ["gpu-08", "gpu-09", "gpu-10", "cpu1"],
    "a[1-2]b[3-4]": ["a1b3", "a1b4", "a2b3", "a2b4"],
    "rack1-n[1-2],rack2-n[3-4]": ["rack1-n1", "rack1-n2", "rack2-n3", "rack2-n4"],
}


@pytest.mark.parametrize("nodelist, hosts", NODELISTS.items())
def test_expand_nodelist_known_answers(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["n[1-3", "n1]", "n[3-1]", "n[a-b]", ""])
def test_expand_nodelist_refuses_malformed(bad):
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(bad)


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm client not installed")
def test_expand_nodelist_agrees_with_scontrol(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=t\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")
    for nodelist, hosts in NODELISTS.items():
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             env={**os.environ, "SLURM_CONF": str(conf)}, timeout=30, check=True).stdout
        assert out.split() == hosts == expand_nodelist(nodelist)


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(ConfigError, match="SLURM_TASKS_PER_NODE"):
        expand_tasks_per_node("2x3")


SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_NODELIST": "n[3-4]", "SLURM_JOB_ID": "4711",
         "SLURMD_NODENAME": "n4", "MASTER_PORT": "29500"}


def test_slurm_env_first_host_and_job_port_not_inherited_fixed_port():
    env = DistEnv.from_environ(SLURM)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert env.master_addr == "n3" and env.hostname == "n4" and env.source == "slurm"
    assert env.master_port == port_for_job("4711") != 29500
    assert env.init_method == f"tcp://n3:{env.master_port}"


def test_job_ports_differ_for_neighbouring_jobs_and_stay_in_range():
    ports = {port_for_job(str(j)) for j in range(1000, 1100)}
    assert len(ports) == 100
    assert all(PORT_BASE <= p < PORT_BASE + PORT_SPAN for p in ports)
    assert port_for_job("77", "1") != port_for_job("77", "0")


def test_overrides_and_torchrun_precedence():
    env = DistEnv.from_environ({**SLURM, "HYBRIDREC_MASTER_PORT": "23456", "HYBRIDREC_MASTER_ADDR": "10.0.0.1"})
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 23456)
    torchrun = {**SLURM, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "24000"}
    env = DistEnv.from_environ(torchrun)
    assert (env.source, env.rank, env.world_size, env.master_port) == ("torchrun", 1, 2, 24000)
    assert env.exported()["RANK"] == "1"


def test_single_process_default():
    env = DistEnv.from_environ({})
    assert (env.rank, env.world_size, env.source) == (0, 1, "single")
    assert 0 < env.master_port < 65536


@pytest.mark.parametrize("env, field", [
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "99999"}, "MASTER_PORT"),
    ({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"}, "SLURM_PROCID"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "5"}, "SLURM_JOB_NODELIST"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1"}, "SLURM_JOB_ID"),
])
def test_bad_environment_names_the_variable(env, field):
    with pytest.raises(ConfigError) as info:
        DistEnv.from_environ(env)
    assert info.value.field == field


def test_backend_choice():
    assert choose_backend("auto", cuda_available=False) == "gloo"
    assert choose_backend("auto", cuda_available=True) == "nccl"
    assert choose_backend("gloo", cuda_available=True) == "gloo"
    with pytest.raises(ConfigError, match="parallel.backend"):
        choose_backend("mpi")
