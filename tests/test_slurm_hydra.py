"""A Hydra multirun through conf/hydra/launcher/slurm.yaml (hydra-submitit-launcher) on the private
cluster: three sweep points become one Slurm array of multi-node jobs (marker `slurm`); the same
sweep through conf/hydra/launcher/local.yaml without Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

APP = '''
import os
import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from jobs.probe import probe


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["output_dir"] = HydraConfig.get().runtime.output_dir
    if os.environ.get("SLURM_PROCID", "0") == "0":  # outputs only from rank 0
        with open(os.path.join(resolved["output_dir"], "config.resolved.yaml"), "w") as handle:
            yaml.safe_dump(resolved, handle)
    return probe(resolved)["allreduce_value"]


if __name__ == "__main__":
    main()
'''


@pytest.mark.slurm
def test_three_point_hydra_sweep_runs_as_one_array_of_two_node_jobs(slurm_env, tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("compression:\n  ratio: 1.0\ntrain:\n  steps: 0\n")
    (tmp_path / "app.py").write_text(APP)
    sweep_dir = tmp_path / "multirun"
    argv = [sys.executable, str(tmp_path / "app.py"), "-m", "hydra/launcher=slurm", "hydra.launcher.nodes=2",
            f"hydra.searchpath=[file://{REPO / 'conf'}]", f"hydra.sweep.dir={sweep_dir}",
            "compression.ratio=0.01,0.1,0.5"]
    proc = subprocess.run(argv, env=slurm_env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ratios = []
    for index in range(3):
        summary = json.loads((sweep_dir / str(index) / "summary.json").read_text())
        assert summary["world_size"] == 2 and len(set(summary["hosts"])) == 2
        assert summary["allreduce_value"] == 3.0
        resolved = yaml.safe_load((sweep_dir / str(index) / "config.resolved.yaml").read_text())
        ratios.append(resolved["compression"]["ratio"])
    assert ratios == [0.01, 0.1, 0.5]
    scripts = list((sweep_dir / ".submitit").glob("*/*_submission.sh"))
    assert len(scripts) == 1, scripts  # one array submission for the whole sweep
    text = scripts[0].read_text()
    assert "#SBATCH --array=0-2%" in text and "#SBATCH --nodes=2" in text and "#SBATCH --requeue" in text
    assert "export HYBRIDREC_MASTER_PORT=" in text and "export SLURM_KILL_BAD_EXIT=1" in text
    # submitit's per-job folders: the array's own id (its submission script) and one per element
    array = scripts[0].parent.name
    job_dirs = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert job_dirs == [f"{array}_{i}" for i in range(3)]


@pytest.mark.slow  # ~90 s on the shared 2-core machine (two local torch processes)
def test_same_sweep_runs_without_slurm_through_the_local_launcher(tmp_path):
    """conf/hydra/launcher/local.yaml: each point a local process, no cluster needed."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("compression:\n  ratio: 1.0\ntrain:\n  steps: 0\n")
    (tmp_path / "app.py").write_text(APP)
    sweep_dir = tmp_path / "multirun"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    argv = [sys.executable, str(tmp_path / "app.py"), "-m", "hydra/launcher=local",
            f"hydra.searchpath=[file://{REPO / 'conf'}]", f"hydra.sweep.dir={sweep_dir}", "compression.ratio=0.1,0.5"]
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for index, ratio in enumerate([0.1, 0.5]):
        summary = json.loads((sweep_dir / str(index) / "summary.json").read_text())
        assert summary["world_size"] == 1 and summary["allreduce_value"] == 1.0
        assert yaml.safe_load((sweep_dir / str(index) / "config.resolved.yaml").read_text())["compression"][
            "ratio"] == ratio
