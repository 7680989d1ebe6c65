"""Detached sweeps: expand Hydra overrides into points, refuse a bad sweep before anything is queued,
submit every point as one multi-node Slurm job (one array), write a manifest, and exit.

    python -m jobs.submit --sweep-dir runs/s1 hydra/launcher=slurm hydra.launcher.nodes=2 \
        parallel=dp2 compression.ratio=0.01,0.1,0.5
    python -m jobs.sweep status runs/s1        # later, from any shell
    python -m jobs.sweep collect runs/s1

Each point gets `<sweep-dir>/<i>/` holding its resolved `config.yaml`; the job writes its results there
(`output_dir`). Preflight: every point's config through `hybridrec.preflight.problems` (when it is a
RunConfig) and the resource request against `sinfo`. `--dry-run` stops after preflight.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hybridrec.errors import ConfigError
from hybridrec.io import atomic_write_bytes, atomic_write_json
from jobs.sbatch import Resources

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
DEFAULT_TASK = "jobs.submit:train"
MANIFEST = "sweep.json"



@contextlib.contextmanager
def environ_overlay(env: Mapping[str, str] | None) -> Iterator[None]:
    """`os.environ` with `env` laid over it for the block, then exactly as before."""
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

def train(cfg: dict) -> Any:
    """The default task: one rank of the training job (`hybridrec.main.run`) on the point's config."""
    import importlib

    from hybridrec.config import to_run_config

    return importlib.import_module("hybridrec.main").run(to_run_config(cfg))


def expand(overrides: list[str]) -> tuple[list[str], list[list[str]]]:
    """Split overrides into the ones for Hydra itself (hydra.*, hydra/...) and the sweep points (the
    cartesian product of comma lists / range() / choice(), as Hydra's basic sweeper does it)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if o.get_key_element().startswith("hydra")]
    sweep = [o for o in parsed if not o.get_key_element().startswith("hydra")]
    if any(o.is_sweep_override() for o in parsed if o.get_key_element().startswith("hydra")):
        raise ConfigError("hydra.*", fixed, "no sweeps over launcher settings (one request per sweep)")
    batches = BasicSweeper.split_arguments(sweep, None)
    points = [list(point) for batch in batches for point in batch] or [[]]
    return fixed, points


def sweeper_params(config_dir: Path, config_name: str, overrides: list[str]) -> list[str]:
    """`hydra.sweeper.params` set by the config itself (e.g. an experiment file), as sweep overrides;
    keys also given on the command line are left to the command line (as Hydra's basic sweeper does)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    given = {o.get_key_element() for o in parsed}
    try:
        _, hydra_node = compose_point(config_dir, config_name, [], plain, node="sweeper")
    except Exception:  # noqa: BLE001 - composition problems are reported per point by plan()
        return []
    params = hydra_node.get("params") or {}
    return [f"{key}={value}" for key, value in params.items() if key not in given]


def compose_point(config_dir: Path, config_name: str, fixed: list[str], point: list[str],
                  node: str = "launcher") -> tuple[dict, dict]:
    """(job config without the hydra node, the hydra.<node> node), both plain dicts (the job resolved)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    searchpath = [f"hydra.searchpath=[file://{CONF_DIR}]"] if config_dir.resolve() != CONF_DIR else []
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        try:
            from hybridrec.config import register_configs

            register_configs()
        except ImportError:  # pragma: no cover - the package always has it
            pass
        cfg = compose(config_name=config_name, overrides=[*searchpath, *fixed, *point], return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra[node], resolve=False)
        with_hydra = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    with_hydra.pop("hydra", None)  # type: ignore[union-attr]
    job = OmegaConf.to_container(OmegaConf.create(with_hydra), resolve=True)
    return job, launcher  # type: ignore[return-value]


def config_problems(job_cfg: dict, world_size: int) -> list[str]:
    """hybridrec.preflight on the RunConfig part of the point's config."""
    from dataclasses import fields

    from hybridrec import preflight
    from hybridrec.config import RunConfig, to_run_config

    known = {f.name for f in fields(RunConfig)}
    try:
        run_cfg = to_run_config({k: v for k, v in job_cfg.items() if k in known})
    except Exception as err:  # noqa: BLE001 - OmegaConf validation errors have many types
        return [f"config does not match the schema: {err}"]
    return [str(err) for err in preflight.problems(run_cfg, world_size)]


def plan(sweep_dir: Path, overrides: list[str], config_dir: Path = CONF_DIR, config_name: str = "config",
         check_cluster: bool = True, env: dict[str, str] | None = None) -> dict:
    """Compose and check every point; raise ConfigError listing every problem, or return the plan."""
    from jobs.cluster_check import request_problems, sinfo_partitions

    overrides = [*overrides, *sweeper_params(config_dir, config_name, overrides)]
    fixed, points = expand(overrides)
    composed, problems = [], []
    for index, point in enumerate(points):
        try:
            composed.append(compose_point(config_dir, config_name, fixed, point))
        except Exception as err:  # noqa: BLE001 - Hydra/OmegaConf raise many types; report them all
            problems.append(f"point {index} {point}: does not compose: {str(err).splitlines()[0]}")
    if problems:
        raise ConfigError("sweep", overrides, "points that compose:\n  " + "\n  ".join(problems))
    try:
        resources = Resources.from_launcher(composed[0][1])
    except ConfigError as err:
        raise ConfigError("sweep", overrides, f"a valid resource request: {err}") from None
    if any(Resources.from_launcher(launcher) != resources for _, launcher in composed[1:]):
        problems.append("points disagree on the resource request")
    for index, (job_cfg, _) in enumerate(composed):
        problems += [f"point {index} {points[index]}: {p}" for p in config_problems(job_cfg, resources.world_size)]
    if check_cluster:
        problems += [f"resources: {p}" for p in request_problems(resources, sinfo_partitions(env))]
    if problems:
        raise ConfigError("sweep", overrides, "a sweep whose every point can run:\n  " + "\n  ".join(problems))
    cfgs = []
    for index, (job_cfg, _) in enumerate(composed):
        job_cfg["output_dir"] = str((sweep_dir / str(index)).resolve())
        cfgs.append(job_cfg)
    return {"fixed": fixed, "points": points, "configs": cfgs, "resources": resources,
            "launcher": composed[0][1]}


def submit(sweep_dir: Path, overrides: list[str], task: str = DEFAULT_TASK, config_dir: Path = CONF_DIR,
           config_name: str = "config", env: dict[str, str] | None = None, dry_run: bool = False) -> dict:
    """Plan, then queue all points as one Slurm array and write `<sweep_dir>/sweep.json`. Returns the
    manifest. Nothing is queued when any point or the resource request is refused."""
    import submitit
    import yaml

    from jobs.requeue import RequeueableTask

    sweep_dir = Path(sweep_dir)
    the_plan = plan(sweep_dir, overrides, config_dir, config_name, env=env)
    if dry_run:
        return {"dry_run": True, "points": the_plan["points"]}
    res: Resources = the_plan["resources"]
    for cfg in the_plan["configs"]:
        atomic_write_bytes(Path(cfg["output_dir"]) / "config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
    folder = sweep_dir.resolve() / ".submitit"
    launcher = the_plan["launcher"]
    with environ_overlay(env):  # submitit runs sbatch with os.environ (SLURM_CONF of a private cluster)
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(launcher.get("max_num_timeout") or 0))
        executor.update_parameters(job_name=sweep_dir.resolve().name,
                                   array_parallelism=int(launcher.get("array_parallelism") or 64),
                                   **res.executor_parameters())
        jobs = executor.map_array(RequeueableTask(task), the_plan["configs"])
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "task": task, "overrides": overrides,
        "submitit_folder": str(folder), "resources": res.executor_parameters(),
        "points": [{"index": i, "overrides": point, "dir": cfg["output_dir"], "job_id": job.job_id}
                   for i, (point, cfg, job) in enumerate(zip(the_plan["points"], the_plan["configs"], jobs))],
    }
    atomic_write_json(sweep_dir / MANIFEST, manifest)
    return manifest


def write_sbatch(args: argparse.Namespace) -> int:
    """For users who prefer sbatch: slurm/templates/train.sbatch filled for one (checked) point."""
    from jobs.sbatch import render

    try:
        the_plan = plan(args.sweep_dir, args.overrides, args.config_dir, args.config_name)
    except ConfigError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    if len(the_plan["points"]) != 1:
        print("--sbatch-out writes one job: give single values, not a sweep", file=sys.stderr)
        return 2
    out_dir = the_plan["configs"][0]["output_dir"]
    text = render("train.sbatch", the_plan["resources"], job_name=args.sweep_dir.resolve().name, log_dir=out_dir,
                  workdir=REPO, python=sys.executable,
                  entry_args=["jobs/train_job.py", *the_plan["points"][0], f"hydra.run.dir={out_dir}"])
    atomic_write_bytes(args.sbatch_out, text.encode())
    print(f"wrote {args.sbatch_out}; submit with: sbatch {args.sbatch_out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep-dir", required=True, type=Path)
    parser.add_argument("--task", default=DEFAULT_TASK, help="module:function run by every rank (gets the config)")
    parser.add_argument("--config-dir", type=Path, default=CONF_DIR)
    parser.add_argument("--config-name", default="config")
    parser.add_argument("--dry-run", action="store_true", help="preflight only, queue nothing")
    parser.add_argument("--sbatch-out", type=Path, help="write an sbatch script for one point instead of queueing")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if (args.sweep_dir / MANIFEST).exists():
        print(f"{args.sweep_dir / MANIFEST} exists: one sweep per directory", file=sys.stderr)
        return 2
    if args.sbatch_out:
        return write_sbatch(args)
    try:
        manifest = submit(args.sweep_dir, args.overrides, args.task, args.config_dir, args.config_name,
                          dry_run=args.dry_run)
    except ConfigError as err:
        print(f"refused, nothing queued: {err}", file=sys.stderr)
        return 2
    if manifest.get("dry_run"):
        print(f"preflight ok: {len(manifest['points'])} point(s)")
        return 0
    for point in manifest["points"]:
        print(f"{point['job_id']}\t{' '.join(point['overrides'])}\t{point['dir']}")
    print(f"queued {len(manifest['points'])} job(s); status: python -m jobs.sweep status {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
