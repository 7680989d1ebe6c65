"""Golden tests of generated Slurm files: the sbatch templates, the sbatch script submitit writes for our
launcher settings, and the private cluster's slurm.conf/topology.conf. Regenerate after an intended
change with `UPDATE_GOLDEN=1 pytest tests/test_slurm_golden.py` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hybridrec.testbed.slurmconf import build_spec, node_hosts, slurm_conf, topology_conf
from jobs.sbatch import Resources, render

GOLDEN = Path(__file__).resolve().parent / "golden"
REPO = Path(__file__).resolve().parent.parent

GPU_REQUEST = Resources(nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, partition="gpu",
                        account="recsys", timeout_min=120, constraint="a100", mem_gb=200,
                        additional_parameters={"switches": "1@00:05:00", "requeue": True},
                        setup=("export SLURM_KILL_BAD_EXIT=1",))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_train_sbatch_template_matches_golden():
    text = render("train.sbatch", GPU_REQUEST, job_name="ratio-sweep", log_dir="/runs/ratio-sweep/0",
                  workdir="/opt/hybridrec", python="/opt/hybridrec/.venv/bin/python",
                  entry_args=["jobs/train_job.py", "parallel=dp2", "compression.ratio=0.1",
                              "hydra.run.dir=/runs/ratio-sweep/0"])
    check_golden("train_gpu.sbatch", text)
    assert "#SBATCH --switches=1@00:05:00" in text and "#SBATCH --requeue" in text


def test_nightly_sbatch_template_matches_golden():
    text = render("nightly.sbatch", Resources(nodes=2, partition="bench", timeout_min=30),
                  job_name="hybridrec-nightly", log_dir="/shared/nightly", workdir="/opt/hybridrec",
                  python="/opt/hybridrec/.venv/bin/python", script="/shared/nightly/nightly.sbatch",
                  next_begin="$(date -d 'tomorrow 02:00' +%Y-%m-%dT%H:%M:%S)",
                  run_args=["--store", "/shared/nightly", "--suite", "jobs.nightly:allreduce_suite"])
    check_golden("nightly.sbatch", text)


def test_submitit_script_for_the_slurm_launcher_config_matches_golden():
    """What hydra-submitit-launcher / jobs.submit make submitit write for conf/hydra/launcher/slurm.yaml
    plus a topology-aware placement override."""
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = yaml.safe_load((REPO / "conf/hydra/launcher/slurm.yaml").read_text())
    launcher["additional_parameters"]["switches"] = "1@00:05:00"
    launcher.update(partition="debug", account="recsys", constraint="cpu")
    params = Resources.from_launcher(launcher).executor_parameters()
    text = _make_sbatch_string(command="python -u -m submitit.core._submit /runs/s1/.submitit/%j",
                               folder="/runs/s1/.submitit/%j", job_name="s1", map_count=3,
                               array_parallelism=64, **params)
    check_golden("submitit_slurm_array.sbatch", text)
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --switches=1@00:05:00", "#SBATCH --signal=USR2@90", "#SBATCH --time=60"):
        assert line in text


@pytest.mark.parametrize("cpus", [2, 8])
def test_private_cluster_files_match_golden(cpus):
    spec = build_spec("/tmp/hybridrec-slurm-X", "ctl", [20001, 20011, 20012, 20013, 20014], cpus_per_node=cpus,
                      cluster_name="hrtest")
    check_golden(f"slurm.cpus{cpus}.conf", slurm_conf(spec))
    check_golden("topology.conf", topology_conf(spec.racks()))
    check_golden("hosts.nodes", node_hosts(spec))


@pytest.mark.slurm
def test_rendered_train_script_is_accepted_by_real_sbatch(slurm_env, tmp_path):
    import subprocess

    script = tmp_path / "train.sbatch"
    request = Resources(nodes=2, tasks_per_node=2, partition="debug", timeout_min=10,
                        additional_parameters={"switches": "1@00:01:00"})
    script.write_text(render("train.sbatch", request, job_name="t", log_dir=tmp_path, workdir=REPO,
                             python="python3", entry_args=["-c", "print(1)"]))
    proc = subprocess.run(["sbatch", "--test-only", str(script)], env=slurm_env, capture_output=True, text=True,
                          check=False, timeout=30)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
