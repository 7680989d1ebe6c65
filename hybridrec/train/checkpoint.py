"""Sharded checkpoints: one file per rank plus a manifest, exact resume, and one-process reassembly.

Layout on disk (every file written atomically through `hybridrec.io`):

    <root>/step_00000040/rank00003.pt   torch.save of this rank's model chunks, optimizer, RNG states,
                                         caller's extra state (data position, gradient-sync residuals),
                                         and the ParamInfo of every local parameter
    <root>/step_00000040/manifest.json  step, world size, layout, model shape, file list (rank 0, last)
    <root>/latest                       name of the newest complete checkpoint (rank 0, after manifest)

A checkpoint counts only once its manifest exists. `load_full_state` rebuilds full (tp-unsliced)
tensors by global parameter name from the dp-rank-0 files, so a run with any layout can be evaluated
on one process.
"""

from __future__ import annotations

import json
import pickle
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hybridrec.errors import ConfigError, DataError
from hybridrec.io import atomic_path, atomic_write_bytes, atomic_write_json
from hybridrec.model.params import ParamInfo, assemble_full, tp_slice

FORMAT = 1
MANIFEST = "manifest.json"
LATEST = "latest"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def rank_file(ckpt: str | Path, rank: int) -> Path:
    return Path(ckpt) / f"rank{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from hybridrec.distributed import backend

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": get_cuda_rng_tracker().get_states()}
    state.update(backend.current().rng_state())  # the device's own generator (none on CPU)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    from hybridrec.distributed import backend

    get_cuda_rng_tracker().set_states(state["tracker"])
    backend.current().set_rng_state(state)


def save(root: str | Path, trainer: Any, param_infos: list[list[ParamInfo]], coords: dict[str, int],
         manifest: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Collective: every rank writes its file, then rank 0 the manifest and the `latest` pointer."""
    rank = dist.get_rank()
    ckpt = step_dir(root, trainer.step)
    payload = {"format": FORMAT, "rank": rank, "coords": coords, "trainer": trainer.state_dict(),
               "param_infos": [[asdict(i) for i in chunk] for chunk in param_infos],
               "rng": rng_state(), "extra": extra or {}}
    with atomic_path(rank_file(ckpt, rank)) as tmp:
        torch.save(payload, tmp)
    coords_all: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(coords_all, coords)
    if rank == 0:
        files = [{"rank": r, "file": rank_file(ckpt, r).name, **c} for r, c in enumerate(coords_all)]
        atomic_write_json(ckpt / MANIFEST, {"format": FORMAT, "step": trainer.step,
                                            "world_size": dist.get_world_size(), "files": files, **manifest})
        atomic_write_bytes(Path(root) / LATEST, (ckpt.name + "\n").encode())
        remove_leftover_temporaries(root)
    dist.barrier()
    return ckpt


def remove_leftover_temporaries(root: str | Path) -> list[Path]:
    """Delete the temporary files of saves that were killed before their rename. Safe only between the
    all-gather of a save (every rank's file is in place) and its barrier: nothing else writes here then."""
    root = Path(root)
    leftovers = [*root.glob(".*.tmp"), *root.glob("step_*/.*.tmp")]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def latest(root: str | Path) -> Path | None:
    """Newest complete checkpoint under `root` (None if there is none)."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    ckpt = Path(root) / pointer.read_text().strip()
    return ckpt if (ckpt / MANIFEST).exists() else None


def read_manifest(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / MANIFEST
    if not path.exists():
        raise DataError(path, "checkpoint manifest missing (incomplete or not a checkpoint directory)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise DataError(path, f"unreadable checkpoint manifest (truncated or corrupt): {err}") from None
    if manifest.get("format") != FORMAT:
        raise DataError(path, f"checkpoint format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def _load_file(path: Path) -> dict[str, Any]:
    """torch.load of one rank file; a missing, truncated or corrupt file is a DataError naming it."""
    try:
        from hybridrec.distributed.backend import HOST

        return torch.load(path, map_location=HOST, weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(path, f"unreadable checkpoint file (missing, truncated or corrupt): {first}") from None


def restore(ckpt: str | Path, trainer: Any, layout: dict[str, Any]) -> dict[str, Any]:
    """Collective-free: load this rank's file into `trainer`, restore RNG; returns the extra state.

    Resuming needs the same layout (tp, pp, vpp, dp) as the saved run.
    """
    manifest = read_manifest(ckpt)
    for key in ("tp", "pp", "vpp", "dp"):
        if manifest["layout"].get(key) != layout.get(key):
            raise ConfigError(f"parallel.{key}", layout.get(key),
                              f"{manifest['layout'].get(key)} to resume {ckpt} (saved with that layout)")
    payload = _load_file(rank_file(ckpt, dist.get_rank()))
    trainer.load_state_dict(payload["trainer"])
    set_rng_state(payload["rng"])
    return payload["extra"]


def load_full_state(ckpt: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(manifest, {global parameter name: full tensor}) from the files of dp rank 0 (any layout)."""
    manifest = read_manifest(ckpt)
    shards: list[tuple[ParamInfo, torch.Tensor]] = []
    for entry in manifest["files"]:
        if entry["dp"] != 0:
            continue
        payload = _load_file(Path(ckpt) / entry["file"])
        for infos, chunk_state in zip(payload["param_infos"], payload["trainer"]["model"], strict=True):
            for raw in infos:
                info = ParamInfo(**{**raw, "local_shape": tuple(raw["local_shape"])})
                shards.append((info, chunk_state[info.local_name]))
    return manifest, assemble_full(shards)


@torch.no_grad()
def apply_full_state(chunks: list[torch.nn.Module], param_infos: list[list[ParamInfo]],
                     full: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into this rank's (unwrapped) chunks, slicing for tp; names must all match."""
    for chunk, infos in zip(chunks, param_infos, strict=True):
        params = dict(chunk.named_parameters())
        for info in infos:
            if info.global_name not in full:
                raise DataError("checkpoint", f"parameter {info.global_name} is missing")
            value = tp_slice(full[info.global_name], info)
            if tuple(value.shape) != tuple(params[info.local_name].shape):
                raise DataError("checkpoint", f"parameter {info.global_name}: shape {tuple(value.shape)} "
                                f"does not match the model's {tuple(params[info.local_name].shape)}")
            params[info.local_name].copy_(value)
