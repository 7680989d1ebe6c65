"""Validate a Hydra config without running anything: `python -m jobs.preflight [--world-size N] [overrides]`.

Composes conf/config.yaml (or the schema defaults when the repo has none) with the given overrides,
runs `hybridrec.preflight` and prints the layout, or every problem found; exit code 0 = ok, 2 = refused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: list[str], config_name: str = "config"):
    """The run config exactly as the train job would see it (no Hydra run directory is made)."""
    from omegaconf import OmegaConf

    from hybridrec.config import RunConfig, register_configs, to_run_config

    if (CONF_DIR / f"{config_name}.yaml").is_file():
        from hydra import compose as hydra_compose
        from hydra import initialize_config_dir

        register_configs()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return to_run_config(hydra_compose(config_name=config_name, overrides=overrides))
    base = OmegaConf.structured(RunConfig)
    return to_run_config(OmegaConf.merge(base, OmegaConf.from_dotlist(overrides)))


def default_world_size(cfg) -> int:
    for name in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    par = cfg.parallel
    return par.tp * par.pp * max(par.dp, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.preflight", description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=None,
                        help="processes the job will have (default: WORLD_SIZE/SLURM_NTASKS or tp*pp*dp)")
    parser.add_argument("--config-name", default="config")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. parallel=pp2 model.num_layers=3")
    opts = parser.parse_intermixed_args(argv)  # options may follow the overrides

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hybridrec import preflight
    from hybridrec.errors import ConfigError

    try:
        cfg = compose(opts.overrides, opts.config_name)
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # report, do not trace
        cause = f": {str(err.__cause__).splitlines()[0]} ({err.__cause__.full_key})" if isinstance(
            err.__cause__, OmegaConfBaseException) and getattr(err.__cause__, "full_key", None) else ""
        print(f"preflight: config does not compose: {err}{cause}", file=sys.stderr)
        return 2
    world = opts.world_size or default_world_size(cfg)
    found: list[ConfigError] = preflight.problems(cfg, world, opts.overrides)
    if found:
        for err in found:
            print(f"preflight: {err}", file=sys.stderr)
        return 2
    layout = preflight.validate(cfg, world)
    print(json.dumps({"status": "ok", "world_size": world, "layout": layout.to_dict()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
