"""The local Slurm cluster with its slurmds inside the rack namespaces (markers `slurm` + `netns`):
a 4-node job's gloo all-reduce crosses the 100 Mbit uplinks, and the uplink counters show the ring's
cross-rack bytes (ring over n=4 ranks in rack order: 2 of 4 edges cross, each carries 2(n-1)/n * S)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hybridrec.testbed.cluster import LocalCluster, missing_programs
from jobs import submit as submit_mod
from jobs import sweep as sweep_mod

pytestmark = [pytest.mark.slurm, pytest.mark.netns]
FLOATS = 2**22  # 16 MiB of fp32


@pytest.mark.skipif(os.geteuid() != 0 or bool(missing_programs()), reason="needs root and Debian's slurm + munge")
def test_slurm_job_ranks_all_reduce_over_shaped_uplinks(tmp_path):
    base = tempfile.mkdtemp(prefix="hybridrec-slurm-racks-")
    cluster = LocalCluster(base)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(f"train:\n  steps: 0\nprobe:\n  payload_floats: {FLOATS}\n")
    try:
        start_s = cluster.up(in_racks=True, rate="100mbit", cpus_per_node=2)
        env = cluster.env()
        before = {rack: cluster.racks.uplink_bytes(rack) for rack in cluster.racks.spec.racks}
        manifest = submit_mod.submit(tmp_path / "sweep", ["hydra/launcher=slurm", "hydra.launcher.nodes=4"],
                                     task="jobs.probe:probe", config_dir=conf, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = sweep_mod.status(tmp_path / "sweep", env)
            if rows[0]["state"] in ("done", "failed"):
                break
            time.sleep(0.5)
        after = {rack: cluster.racks.uplink_bytes(rack) for rack in cluster.racks.spec.racks}
    finally:
        problems = cluster.down()
        if not problems:
            shutil.rmtree(base, ignore_errors=True)
    assert rows[0]["state"] == "done", rows
    assert problems == []
    summary = json.loads((Path(manifest["points"][0]["dir"]) / "summary.json").read_text())
    assert summary["hosts"] == ["n1", "n2", "n3", "n4"] and summary["racks"] == ["rack1", "rack1", "rack2", "rack2"]
    size = summary["allreduce_bytes"]
    theory = 2 * (4 - 1) / 4 * size  # per crossing ring edge, each direction
    crossed_all = {}
    for rack in ("rack1", "rack2"):
        crossed = crossed_all[rack] = after[rack]["out"] - before[rack]["out"]
        # the all-reduce plus the job's own small traffic (Slurm RPCs, rendezvous, logs): < 2 MB
        assert theory <= crossed <= theory * 1.01 + 2e6, (rack, crossed, theory)
    busbw = theory * 8 / summary["allreduce_s"]
    print(f"cluster in racks up in {start_s:.2f} s; 4-rank all_reduce of {size} B in {summary['allreduce_s']:.2f} s;"
          f" cross-rack theory {theory:.0f} B per direction, measured {crossed_all};"
          f" {busbw / 1e6:.1f} Mbit/s cross-rack goodput on a 100 Mbit uplink")
    assert busbw <= 1.02e8
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in names for ns in cluster.racks.spec.namespaces())
