"""Fault injection for the reliability suite: kill, raise, simulate an OOM, hang or exit one rank at a
chosen step or at a chosen point of a checkpoint save, without changing the trainer's code.

The knob is one string, from `HYBRIDREC_FAULT` (or given to `install`):

    HYBRIDREC_FAULT="kind=kill,at=step,rank=1,step=3"

- kind: kill (SIGKILL itself) | raise (RuntimeError) | oom (torch.OutOfMemoryError, as an allocator
  failure would raise) | hang (sleeps forever inside the step) | exit (os._exit(3), no cleanup)
- at: step (after training step `step` finished on that rank) | ckpt_tmp (the rank's checkpoint file is
  written to its temporary name, not renamed yet) | ckpt_torn (the temporary file is cut to half its
  size: a torn write) | ckpt_file (the rank's file is in place, the manifest is not) | ckpt_manifest
  (rank 0's manifest is in place, the `latest` pointer is not)
- rank: the global rank that fails (-1: every rank); step: the step (checkpoint step for ckpt_*)

Every injected error names the rank, the host and the step. Entry points that install the knob before
the real code runs (nothing else in the package imports this module):

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m hybridrec.faults run jobs.train_job [overrides]
    python -m hybridrec.faults worker --steps 20     # a small gloo step loop (one all_reduce per step)
    jobs.submit task "hybridrec.faults:train"        # Slurm: the default training task, knob from env
    jobs.submit task "hybridrec.faults:worker_task"  # Slurm: the gloo step loop, knob from env
"""

from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridrec.errors import ConfigError

ENV = "HYBRIDREC_FAULT"
KINDS = ("kill", "raise", "oom", "hang", "exit")
POINTS = ("step", "ckpt_tmp", "ckpt_torn", "ckpt_file", "ckpt_manifest")
EXIT_CODE = 3


class InjectedFault(RuntimeError):
    """The error an injected `raise` fault throws (names rank, host, step)."""


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    at: str = "step"
    rank: int = 0
    step: int = 1

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """`kind=kill,at=step,rank=1,step=3` -> FaultSpec; ConfigError naming the bad part. Pure."""
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in ("kind", "at", "rank", "step"):
                raise ConfigError(ENV, text, "comma-separated kind=..,at=..,rank=..,step=.. pairs")
            values[key] = value
        if values.get("kind") not in KINDS:
            raise ConfigError(f"{ENV}.kind", values.get("kind"), f"one of {', '.join(KINDS)}")
        if values.setdefault("at", "step") not in POINTS:
            raise ConfigError(f"{ENV}.at", values["at"], f"one of {', '.join(POINTS)}")
        numbers = {}
        for key, default in (("rank", 0), ("step", 1)):
            try:
                numbers[key] = int(values.get(key, default))
            except ValueError:
                raise ConfigError(f"{ENV}.{key}", values[key], "an integer") from None
        if numbers["rank"] < -1 or numbers["step"] < 0:
            raise ConfigError(ENV, text, "rank >= -1 (-1 = every rank) and step >= 0")
        return cls(values["kind"], values["at"], numbers["rank"], numbers["step"])

    def matches(self, at: str, step: int, rank: int) -> bool:
        return self.at == at and self.step == step and self.rank in (-1, rank)


def from_env(environ: Mapping[str, str] | None = None) -> FaultSpec | None:
    text = (os.environ if environ is None else environ).get(ENV, "").strip()
    return FaultSpec.parse(text) if text else None


def current_rank() -> int:
    """Global rank: the process group's when there is one, else torchrun / Slurm variables, else 0."""
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def trigger(spec: FaultSpec, step: int, rank: int) -> None:
    """Do the fault now (in this process)."""
    where = f"rank {rank} on host {socket.gethostname()} (pid {os.getpid()}) at {spec.at} {step}"
    print(f"[fault] injecting {spec.kind}: {where} t={time.time():.3f}", file=sys.stderr, flush=True)
    if spec.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # the signal is delivered before this returns
    if spec.kind == "exit":
        os._exit(EXIT_CODE)
    if spec.kind == "hang":
        while True:
            time.sleep(3600)
    if spec.kind == "oom":
        import torch

        error = getattr(torch, "OutOfMemoryError", MemoryError)
        raise error(f"injected out-of-memory error: {where} (tried to allocate 80.00 GiB)")
    raise InjectedFault(f"injected fault: {where}")


def fire(spec: FaultSpec | None, at: str, step: int, rank: int | None = None) -> None:
    if spec is not None:
        rank = current_rank() if rank is None else rank
        if spec.matches(at, step, rank):
            trigger(spec, step, rank)


def _ckpt_step(path: Path) -> int:
    """step_00000040/rank00001.pt -> 40 (-1 when the path is not inside a checkpoint step directory)."""
    name = Path(path).parent.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else -1


def install(spec: FaultSpec | None = None) -> FaultSpec | None:
    """Wrap the trainer's step and the checkpoint writer so `spec` (default: from env) fires. Idempotent
    per process; returns the spec installed (None: nothing to do)."""
    spec = spec if spec is not None else from_env()
    if spec is None or getattr(install, "installed", None) is not None:
        return spec
    install.installed = spec  # type: ignore[attr-defined]
    if spec.at == "step":
        from hybridrec.train import loop

        original_step = loop.Trainer.train_step

        def train_step(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_step(self, *args, **kwargs)
            fire(spec, "step", int(result.step))
            return result

        loop.Trainer.train_step = train_step  # type: ignore[method-assign]
        return spec
    from hybridrec.train import checkpoint

    original_path, original_json = checkpoint.atomic_path, checkpoint.atomic_write_json

    @contextlib.contextmanager
    def atomic_path(path: Any) -> Iterator[Path]:
        with original_path(path) as tmp:
            yield tmp
            step = _ckpt_step(Path(path))
            if spec.at == "ckpt_torn" and spec.matches("ckpt_torn", step, current_rank()):
                size = tmp.stat().st_size
                with open(tmp, "rb+") as handle:
                    handle.truncate(size // 2)
            fire(spec, "ckpt_torn", step)
            fire(spec, "ckpt_tmp", step)
        fire(spec, "ckpt_file", _ckpt_step(Path(path)))

    def atomic_write_json(path: Any, obj: Any) -> None:
        original_json(path, obj)
        if Path(path).name == checkpoint.MANIFEST:
            fire(spec, "ckpt_manifest", _ckpt_step(Path(path)))

    checkpoint.atomic_path = atomic_path  # type: ignore[assignment]
    checkpoint.atomic_write_json = atomic_write_json  # type: ignore[assignment]
    return spec


def train(cfg: dict) -> Any:
    """Slurm task (`--task hybridrec.faults:train`): the default training task with the knob from env."""
    install()
    from hybridrec.config import to_run_config
    from hybridrec.main import run

    return run(to_run_config(cfg))


def worker_task(cfg: dict) -> int:
    """Slurm task (`--task hybridrec.faults:worker_task`): `worker` with train.steps, probe.step_seconds,
    probe.timeout_s from the point's config and the knob from env."""
    train_cfg, probe = cfg.get("train") or {}, cfg.get("probe") or {}
    return worker(int(train_cfg.get("steps", 20)), float(probe.get("step_seconds", 0.05)),
                  float(probe.get("timeout_s", 60.0)))


def worker(steps: int, step_seconds: float, timeout_s: float) -> int:
    """A gloo step loop (one all_reduce per step) with the knob at every step: the cheapest real
    multi-process job for launcher/Slurm fault tests. Rank 0 prints `done <steps>` at the end."""
    import torch
    import torch.distributed as dist

    from hybridrec import console
    from hybridrec.distributed import backend
    from hybridrec.distributed.env import DistEnv, init_process_group

    spec = from_env()
    env = DistEnv.from_environ()
    init_process_group(env, backend.CPU_BACKEND, timeout_s=timeout_s)  # a CPU step loop
    rank = dist.get_rank()
    step = 0
    try:
        for step in range(1, steps + 1):
            time.sleep(step_seconds)
            value = torch.ones(1)
            dist.all_reduce(value)
            if value.item() != dist.get_world_size():
                raise RuntimeError(f"all_reduce gave {value.item()}")
            fire(spec, "step", step, rank)
    except InjectedFault:
        raise
    except Exception as err:
        console.linger_if_peer_loss(err)
        raise RuntimeError(f"rank {rank} on host {env.hostname}: collective failed at step {step} "
                           f"(another rank died or hung): {type(err).__name__}: {err}") from err
    finally:
        # on the failure path too (as hybridrec.main does): left to interpreter shutdown, gloo's threads
        # can abort the process ("terminate called without an active exception", SIGABRT) and the
        # launcher would report -6 instead of the rank's own exit code (measured: 2 runs in 8)
        dist.destroy_process_group()
    if rank == 0:
        print(f"done {steps}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridrec.faults", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="install the knob from env, then run a module as __main__")
    run_p.add_argument("module")
    run_p.add_argument("args", nargs=argparse.REMAINDER)
    work = sub.add_parser("worker", help="a gloo step loop with the knob at every step")
    work.add_argument("--steps", type=int, default=20)
    work.add_argument("--step-seconds", type=float, default=0.05)
    work.add_argument("--timeout", type=float, default=60.0, help="collective timeout (s)")
    opts = parser.parse_args(argv)
    if opts.command == "worker":
        return worker(opts.steps, opts.step_seconds, opts.timeout)
    install()
    sys.argv = [opts.module, *opts.args]
    runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
