"""Lifecycle of the private Slurm cluster (marker `slurm`): restart in the same base directory, and a
failed start that still leaves no daemon behind."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest

from hybridrec.testbed import daemons
from hybridrec.testbed.cluster import LocalCluster, missing_programs

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(os.geteuid() != 0 or bool(missing_programs()),
                                 reason="needs root and Debian's slurmctld/slurmd/munge")]


@pytest.fixture
def base() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hybridrec-slurm-life-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _all_dead(pids: dict[str, int]) -> bool:
    return daemons.wait_until(lambda: not any(daemons.alive(p) for p in pids.values()), 10)


def test_cluster_restarts_in_the_same_base_and_stops_every_daemon(base):
    cluster = LocalCluster(base)
    for _ in range(2):
        seconds = cluster.up(cpus_per_node=2)
        pids = dict(cluster.pids)
        # munged, slurmctld, 4 slurmd (+ mariadbd and slurmdbd when accounting is installed)
        assert len(pids) == (8 if cluster.spec.dbd_port else 6) and seconds < 30
        proc = cluster.run(["srun", "-N4", "-n4", "hostname"], timeout=60)
        assert sorted(proc.stdout.split()) == ["n1", "n2", "n3", "n4"]
        # another process (the CLI) finds the cluster from the state file
        assert LocalCluster(base).pids == pids
        assert cluster.down() == []
        assert _all_dead(pids)


def test_failed_start_tears_down_what_was_started(base):
    cluster = LocalCluster(base)
    spec = cluster.configure()
    with socket.socket() as squatter:  # the controller's port is taken: slurmctld cannot start
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("0.0.0.0", spec.controller_port))
        squatter.listen(1)
        with pytest.raises(daemons.TestbedError, match="slurmctld|not idle"):
            cluster.up(timeout=20)
    recorded = LocalCluster(base)
    assert recorded.pids == {}  # down() ran and recorded that nothing is left
    assert daemons.pids_with_open_path("slurmd", base) == []
    assert daemons.pids_with_open_path("munged", base) == []
