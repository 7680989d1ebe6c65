"""Shared fixtures: `slurm_cluster` (one private 4-node Slurm for the whole session, torn down even
when tests fail) and `slurm_env` (the environment Slurm clients need to reach it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


def _slurm_skip_reason() -> str:
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root"
    from hybridrec.testbed.cluster import missing_programs

    missing = missing_programs()
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)}); scripts/install.sh installs them"
    return ""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[object]:
    """A running LocalCluster (4 nodes n1-n4 in racks rack1/rack2, partition 'debug', 2 CPUs/node)."""
    reason = _slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    from hybridrec.testbed.cluster import LocalCluster

    base = tempfile.mkdtemp(prefix="hybridrec-slurm-")
    os.chmod(base, 0o711)
    cluster = LocalCluster(base)
    try:
        cluster.start_seconds = cluster.up(cpus_per_node=4)  # type: ignore[attr-defined]
        yield cluster
    finally:
        problems = cluster.down()
        if not problems and not os.environ.get("HYBRIDREC_KEEP_SLURM_LOGS"):
            shutil.rmtree(base, ignore_errors=True)
        else:  # keep the logs of a dirty teardown
            print(f"slurm teardown problems (logs kept in {base}): {problems}")


@pytest.fixture
def slurm_env(slurm_cluster) -> dict[str, str]:
    return slurm_cluster.env()
