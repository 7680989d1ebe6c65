"""Sharded checkpoints: one file per rank plus a manifest, exact resume, and one-process reassembly.

Layout on disk (every file written atomically through `hybridrec.io`):

    <root>/step_00000040/rank00003.pt   torch.save of this rank's model chunks, optimizer, RNG states,
                                         caller's extra state (data position, gradient-sync residuals),
                                         and the ParamInfo of every local parameter
    <root>/step_00000040/manifest.json  step, world size, layout, model shape, file list (rank 0, last)
    <root>/latest                       name of the newest complete checkpoint (rank 0, after manifest)

A checkpoint counts only once its manifest exists and every rank file it lists is whole; `latest` falls
back past a torn one (a file truncated or corrupted after the save) to the newest complete one. `load_full_state` rebuilds full (tp-unsliced)
tensors by global parameter name from the dp-rank-0 files, so a run with any layout can be evaluated
on one process.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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


def latest(root: str | Path, on_torn: Callable[[Path, str], None] | None = None) -> Path | None:
    """Newest complete checkpoint under `root` (None if there is none).

    The `latest` pointer names the newest save; when that one (or the next older) is torn (a rank file
    missing, truncated or corrupt, or the manifest unreadable) the newest older complete one is returned
    and `on_torn(step_dir, reason)` is called for each torn one skipped (default: one line on stderr from
    rank 0, once per directory and process)."""
    found = find_resumable(root)
    report = on_torn or _report_torn
    for ckpt, reason in found.torn:
        report(ckpt, reason)
    return found.checkpoint


@dataclass
class Resumable:
    """`checkpoint`: the newest complete checkpoint (or None); `torn`: newer ones skipped, with why."""

    checkpoint: Path | None
    torn: list[tuple[Path, str]] = field(default_factory=list)


def find_resumable(root: str | Path) -> Resumable:
    """Walk back from the `latest` pointer through older `step_*` directories to the first complete one.

    Step directories newer than the pointer are saves that did not finish (their pointer was never
    written) and are not considered; one without a manifest below the pointer is a save killed before
    it completed and is skipped silently, except the pointer's own (it must have had one)."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.exists():
        return Resumable(None)
    named = root / pointer.read_text().strip()
    newest = _step_of(named)
    steps = sorted((d for d in root.glob("step_*") if d.is_dir() and _step_of(d) is not None
                    and newest is not None and _step_of(d) <= newest), key=_step_of, reverse=True)
    if named not in steps:
        steps.insert(0, named)
    torn: list[tuple[Path, str]] = []
    for ckpt in steps:
        if not (ckpt / MANIFEST).exists() and ckpt != named:
            continue
        reason = incomplete_reason(ckpt)
        if reason is None:
            return Resumable(ckpt, torn)
        torn.append((ckpt, reason))
    return Resumable(None, torn)


def incomplete_reason(ckpt: str | Path) -> str | None:
    """None if the manifest reads and every rank file it lists is in place and whole (every zip member's
    CRC checks, so a truncated or bit-flipped torch.save file is caught without unpickling it)."""
    ckpt = Path(ckpt)
    try:
        manifest = read_manifest(ckpt)
    except DataError as err:
        return str(err)
    for entry in manifest.get("files", []):
        path = ckpt / entry["file"]
        if not path.exists():
            return f"{path}: missing"
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"{path}: truncated or corrupt ({err})"
        if bad is not None:
            return f"{path}: corrupt (CRC mismatch in {bad})"
    return None


def _step_of(ckpt: Path) -> int | None:
    name = ckpt.name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


_REPORTED: set[str] = set()


def _report_torn(ckpt: Path, reason: str) -> None:
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))
    if rank != 0 or str(ckpt) in _REPORTED:
        return
    _REPORTED.add(str(ckpt))
    print(f"checkpoint {ckpt} is torn, not resuming from it: {reason}", file=sys.stderr, flush=True)


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
