"""What a person sees on the console of `jobs.train_job`: short refusals and failures, a quiet library log.

- `preflight_argv(argv)`: before Hydra makes a run directory, compose the command line's overrides and
  run every preflight check; a refused run prints one line per problem (rank 0 only, with a hint where
  one helps, e.g. how to start more ranks) and writes nothing.
- `report_failure(exc, ...)`: one short line for a failed run (`rank k:` under several ranks, printed once
  for problems every rank hits alike), its full traceback appended to the run's log file, and where to
  find it (`HYDRA_FULL_ERROR=1` shows it on the console instead).
- `quiet_libraries(log_path)`: megatron/torch INFO records and Python warnings go to the log file only.

Pure formatting (`problem_lines`, `hint`, `is_peer_loss`) is separate from the printing and file code.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from hybridrec.errors import ConfigError, DataError

LAUNCH = ".venv/bin/python -m torch.distributed.run --standalone"
# libraries whose INFO records (megatron's config and "Params for bucket" dumps) belong in the log file
LIBRARY_LOGGERS = ("megatron", "torch", "torch.distributed", "h5py", "numexpr")
# a collective that failed because another rank went away: that rank's own message is the one to show
_PEER_LOSS = re.compile(r"Connection (closed|reset) by peer|Broken pipe|connectFullMesh|Socket Timeout|"
                        r"NCCL communicator was aborted|ProcessGroupGloo.*(closed|aborted)", re.IGNORECASE)
_WORLD_SIZE = re.compile(r"world size (\d+)")


def rank_of(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    for name in ("RANK", "SLURM_PROCID"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return 0


def world_of(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    if env.get("RANK", "").isdigit() and env.get("WORLD_SIZE", "").isdigit():
        return int(env["WORLD_SIZE"])
    if env.get("SLURM_PROCID", "").isdigit() and env.get("SLURM_NTASKS", "").isdigit():
        return int(env["SLURM_NTASKS"])
    return 1


def ranks_needed(cfg: Any) -> int:
    par = cfg.parallel
    return max(par.tp, 1) * max(par.pp, 1) * max(par.dp, 1)


def hint(err: ConfigError, cfg: Any, world_size: int, overrides: Sequence[str] = ()) -> str | None:
    """A next step for the problems a newcomer hits first (None when the message says it all)."""
    if err.field.startswith("parallel.") and _WORLD_SIZE.search(str(err)):
        needed = ranks_needed(cfg)
        if world_size == 1 and needed > 1:
            args = " ".join(overrides)
            return (f"this is one process; tp={cfg.parallel.tp} x pp={cfg.parallel.pp} x dp={max(cfg.parallel.dp, 1)} "
                    f"needs {needed} ranks: {LAUNCH} --nproc-per-node {needed} -m jobs.train_job {args}".rstrip())
        return (f"the job has {world_size} ranks: choose tp*pp*dp = {world_size} (parallel.dp=0 derives dp), "
                f"or start {needed} ranks")
    return None


def problem_lines(problems: Sequence[ConfigError], cfg: Any, world_size: int,
                  overrides: Sequence[str] = ()) -> list[str]:
    """`refused: <problem>` per problem, then each distinct hint once as `  hint: ...`."""
    lines = [f"refused: {err}" for err in problems]
    hints: list[str] = []
    for err in problems:
        text = hint(err, cfg, world_size, overrides)
        if text and text not in hints:
            hints.append(text)
    return lines + [f"  hint: {text}" for text in hints]


def preflight_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None,
                   stream: TextIO | None = None) -> int | None:
    """Check a `jobs.train_job` command line before Hydra starts: None = go on, else the exit code (2)
    after printing every problem (rank 0 only). Multirun (`-m`) and Hydra's own flags are left to Hydra
    (each sweep point is checked in its job)."""
    if any(arg.startswith("-") for arg in argv):
        return None
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    out = sys.stderr if stream is None else stream
    rank = rank_of(environ)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from hybridrec import preflight
    from jobs.preflight import compose

    try:
        cfg = compose(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        if rank == 0:
            print(f"refused: config does not compose: {compose_message(err)}", file=out, flush=True)
        return 2
    world = world_of(environ)
    found = preflight.problems(cfg, world, overrides)
    if not found:
        return None
    if rank == 0:
        print("\n".join(problem_lines(found, cfg, world, overrides)), file=out, flush=True)
    return 2


def compose_message(err: BaseException) -> str:
    """Hydra's composition error in one line, with OmegaConf's cause and key when there is one."""
    from omegaconf.errors import OmegaConfBaseException

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{first}: {str(cause).splitlines()[0]} ({cause.full_key})"
    return first


def is_peer_loss(exc: BaseException) -> bool:
    return bool(_PEER_LOSS.search(f"{type(exc).__name__}: {exc}"))


PEER_LOSS_GRACE_S = 2.0


def linger_if_peer_loss(exc: BaseException, grace_s: float = PEER_LOSS_GRACE_S) -> None:
    """A rank whose collective broke because a peer died waits `grace_s` before exiting, so the launcher
    (torchrun, srun) sees the rank that failed first and names it as the root cause; exiting at once
    races it (measured on the gloo worker: the launcher named a bystander in 3 runs of 16)."""
    if is_peer_loss(exc):
        time.sleep(grace_s)


def short_message(exc: BaseException) -> str:
    """One line: hybridrec's own errors as they are, anything else `Type: first line`."""
    if isinstance(exc, (ConfigError, DataError)):
        return str(exc).strip().splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def failure_lines(exc: BaseException, rank: int, world_size: int, log_path: Path | None,
                  cfg: Any = None) -> list[str]:
    """What one rank prints for a failed run (empty: another rank's message is the one to read).

    A ConfigError is the same on every rank: rank 0 prints it. A collective broken by a lost peer is
    printed by nobody but rank 0 (the lost rank prints its own cause). Anything else names its rank."""
    if world_size > 1 and rank != 0 and (isinstance(exc, ConfigError) or is_peer_loss(exc)):
        return []
    who = f"rank {rank}: " if world_size > 1 else ""
    head = "another rank failed: " if is_peer_loss(exc) else ""
    lines = [f"failed: {who}{head}{short_message(exc)}"]
    if isinstance(exc, ConfigError) and cfg is not None:
        text = hint(exc, cfg, world_size)
        if text:
            lines.append(f"  hint: {text}")
    if isinstance(exc, DataError) and "checkpoint" in str(exc):
        lines.append("  hint: train.resume=auto resumes from the newest complete checkpoint of this run "
                     "(or name an older step_* directory)")
    if log_path is not None:
        lines.append(f"  full traceback: {log_path} (HYDRA_FULL_ERROR=1 prints it here)")
    return lines


def log_file() -> Path | None:
    """The run's log file: the first FileHandler on the root logger (Hydra's `<output_dir>/<job>.log`)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def report_failure(exc: BaseException, cfg: Any = None, environ: Mapping[str, str] | None = None,
                   log_path: Path | None = None, stream: TextIO | None = None) -> list[str]:
    """Append the traceback to the log file (every rank; `[rank k]` header) and print the short lines."""
    env = os.environ if environ is None else environ
    rank, world = rank_of(env), world_of(env)
    path = log_path or log_file()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.write(f"[rank {rank}] run failed:\n")
                handle.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        except OSError:
            path = None
    lines = failure_lines(exc, rank, world, path, cfg)
    if lines:
        print("\n".join(lines), file=sys.stderr if stream is None else stream, flush=True)
    return lines


def full_errors(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def quiet_libraries(log_path: str | os.PathLike | None = None) -> Path | None:
    """Send library INFO records and Python warnings to the log file only (not the console).

    `log_path`: the run's log file (default: Hydra's file handler, as `log_file()`); without one the
    records are dropped below WARNING. Idempotent; returns the file used."""
    path = Path(log_path) if log_path is not None else log_file()
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _shared_file_handler(path)
    else:
        handler = logging.NullHandler()
    for name in (*LIBRARY_LOGGERS, "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_hybridrec_quiet", False)]
        logger.addHandler(handler)
        logger.propagate = False  # levels stay as they are (torch's own loggers stay at WARNING)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the log file
    return path


_FILE_HANDLERS: dict[str, logging.Handler] = {}


def _shared_file_handler(path: Path) -> logging.Handler:
    key = str(path.resolve())
    if key not in _FILE_HANDLERS:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handler._hybridrec_quiet = True  # type: ignore[attr-defined]
        _FILE_HANDLERS[key] = handler
    return _FILE_HANDLERS[key]
