"""Hydra entry point: `python -m jobs.train_job [overrides]` trains, evaluates and writes summary.json
into Hydra's output directory (one rank per process; torchrun/Slurm variables give the rank).

Before Hydra makes the run directory, the command line is checked (`hybridrec.console.preflight_argv`):
a refused run prints one line per problem and writes nothing. The run goes through
`jobs.requeue.run_requeueable` (preemption guard; on SIGUSR2 every rank saves a checkpoint and rank 0
requeues the Slurm job); a restarted job (SLURM_RESTART_COUNT > 0) resumes from the latest checkpoint
(`train.resume=auto`). Console: library INFO and warnings go to the run's log file; a failure prints one
short line (its traceback goes to the log file; `HYDRA_FULL_ERROR=1` shows it on the console).
Threads per rank: `hybridrec.main.run` calls `hybridrec.distributed.env.configure_threads`
(SLURM_CPUS_PER_TASK under Slurm) for every launcher."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hybridrec import console
from hybridrec.config import register_configs, to_run_config
from hybridrec.errors import ConfigError

register_configs()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    interactive = hydra_cfg.mode == RunMode.RUN and not console.full_errors()
    log_path = console.quiet_libraries()
    run_cfg = None
    try:
        run_cfg = to_run_config(cfg)
        if not run_cfg.output_dir:
            run_cfg.output_dir = hydra_cfg.runtime.output_dir
        summary = _run(run_cfg, list(hydra_cfg.overrides.task))
    except SystemExit:
        raise
    except BaseException as exc:
        console.report_failure(exc, run_cfg, log_path=log_path)
        console.linger_if_peer_loss(exc)
        if interactive:  # the short lines above are the report; Hydra would add the traceback again
            raise SystemExit(2 if isinstance(exc, ConfigError) else 1) from None
        raise  # multirun / Slurm: the launcher records the failure
    if console.rank_of() == 0 and summary.get("status") == "done":
        _print_result(summary, Path(run_cfg.output_dir))
    return summary


def _run(run_cfg, overrides: list[str]) -> dict:
    from hybridrec import preflight
    from hybridrec.main import run
    from jobs.requeue import restart_count, run_requeueable

    found = preflight.problems(run_cfg, console.world_of(), overrides)
    if found:  # every problem (a sweep point or a Slurm job: the command line was not checked before)
        if console.rank_of() == 0:
            print("\n".join(console.problem_lines(found, run_cfg, console.world_of())), file=sys.stderr)
        raise found[0]
    if restart_count() > 0:
        run_cfg.train.resume = "auto"
    return run_requeueable(run, run_cfg)


def _print_result(summary: dict, out: Path) -> None:
    """The metrics table (model row, then the most-popular baseline's) and where the summary went."""
    base = summary.get("baseline_most_popular", {})
    for protocol, row in summary.get("metrics", {}).items():
        print(f"{protocol:9s} model         " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        if protocol in base:
            print(f"{protocol:9s} most-popular  " + "  ".join(f"{k} {base[protocol].get(k, float('nan')):.4f}"
                                                            for k in row), flush=True)
    skipped = summary.get("data", {}).get("skipped") or {}
    if any(skipped.values()):
        print("data: skipped " + ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n), flush=True)
    print(f"summary: {out / 'summary.json'}", flush=True)


if __name__ == "__main__":
    code = console.preflight_argv(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    main()
