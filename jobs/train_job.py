"""Hydra entry point: `python -m jobs.train_job [overrides]` trains, evaluates and writes summary.json
into Hydra's output directory (one rank per process; torchrun/Slurm variables give the rank).

The run goes through `jobs.requeue.run_requeueable` (preemption guard; on SIGUSR2 every rank saves a
checkpoint and rank 0 requeues the Slurm job); a restarted job (SLURM_RESTART_COUNT > 0) resumes from
the latest checkpoint (`train.resume=auto`)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hybridrec.config import register_configs, to_run_config
from hybridrec.distributed.env import DistEnv
from hybridrec.main import run
from jobs.requeue import restart_count, run_requeueable

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    run_cfg = to_run_config(cfg)
    if not run_cfg.output_dir:
        run_cfg.output_dir = HydraConfig.get().runtime.output_dir
    if restart_count() > 0:
        run_cfg.train.resume = "auto"
    summary = run_requeueable(run, run_cfg)
    if DistEnv.from_environ().rank == 0 and summary.get("layout") and summary.get("status") == "done":
        for protocol, row in summary["metrics"].items():
            base = summary.get("baseline_most_popular", {}).get(protocol, {})
            cells = "  ".join(f"{k} {v:.4f} (pop {base.get(k, float('nan')):.4f})" for k, v in row.items())
            print(f"{protocol:7s} {cells}", flush=True)
    return summary


if __name__ == "__main__":
    main()
