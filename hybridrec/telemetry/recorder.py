"""Per-rank HDF5 results file (owns its layout, the writer and the reader).

Layout of `telemetry/rank<k>.h5`:
- root attributes: run metadata (`config_json`, `layout_json`, `topology_json`, `versions_json`, `git_commit`,
  `git_dirty`, `slurm_job_id`, `hostname`, `rank`, `world_size`, `started_utc`, ... any extra keys; values
  that are not str/int/float/bool are stored as JSON strings under `<key>_json`).
- `/steps/<metric>`: one resizable float64 dataset per step metric, all aligned with `/steps/step`
  (a metric missing at some step holds NaN there).
- `/samples/<field>`: the utilization sampler's rows, aligned with `/samples/t_s`; attributes say whether
  NVML was present and why not.
- `/eval/<protocol>/<metric>`: scalar datasets with the final evaluation (e.g. /eval/uni100/HR@10).
- `/status` attribute `state`: "running" until close() writes "closed".

Crash safety: rows are buffered in memory and written every `flush_every` steps by opening the file,
appending and closing it again, so between flushes the file on disk is closed and complete; a job
killed at any other moment leaves a readable file holding every flushed step.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from hybridrec.errors import DataError

_CHUNK = 256


def _attr_value(value: Any) -> tuple[str, Any]:
    if isinstance(value, bool | int | float | str | np.integer | np.floating):
        return "", value
    return "_json", json.dumps(value, sort_keys=True, default=str)


def _append_rows(group: h5py.Group, index: str, rows: list[dict[str, float]]) -> None:
    """Append rows (dicts of floats) to aligned 1-D datasets in `group`, NaN-filling missing fields."""
    if not rows:
        return
    n_old = group[index].shape[0] if index in group else 0
    n_new = n_old + len(rows)
    names = {index} | {k for row in rows for k in row}
    for name in list(group.keys()):
        names.add(name)
    for name in sorted(names):
        if name not in group:
            group.create_dataset(name, shape=(n_old,), maxshape=(None,), dtype="f8",
                                 chunks=(_CHUNK,), fillvalue=np.nan)
        ds = group[name]
        ds.resize((n_new,))
        ds[n_old:n_new] = np.array([float(row.get(name, math.nan)) for row in rows], dtype="f8")


def git_commit(start: str | os.PathLike | None = None) -> tuple[str, bool]:
    """(commit, dirty) of the checkout holding this package, ("unknown", False) without git."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def run_metadata(config: Any = None, layout: Any = None, topology: Any = None, rank: int = 0,
                 world_size: int = 1, **extra: Any) -> dict[str, Any]:
    """Everything a results file should say about where it came from (versions, commit, Slurm, host)."""
    versions: dict[str, str] = {"python": platform.python_version(), "h5py": h5py.__version__,
                                "numpy": np.__version__}
    for dist_name in ("torch", "megatron-core", "hybridrec", "nvidia-ml-py"):
        try:  # installed distribution versions: no import (megatron.core takes ~4 s to import)
            versions[dist_name] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            versions[dist_name] = "absent"
    commit, dirty = git_commit()
    meta = {
        "config": config, "layout": layout, "topology": topology, "versions": versions,
        "git_commit": commit, "git_dirty": dirty,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "slurm_array_job": os.environ.get("SLURM_ARRAY_JOB_ID", ""),
        "slurm_array_task": os.environ.get("SLURM_ARRAY_TASK_ID", ""),
        "slurm_topology_addr": os.environ.get("SLURM_TOPOLOGY_ADDR", ""),
        "hostname": socket.gethostname(), "rank": int(rank), "world_size": int(world_size),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta.update(extra)
    return meta


class RunRecorder:
    """Writes one rank's HDF5 file. log_step() buffers; every `flush_every` steps the rows hit disk."""

    def __init__(self, path: str | os.PathLike, metadata: dict[str, Any], flush_every: int = 10,
                 sampler: Any = None):
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_every = int(flush_every)
        self.sampler = sampler
        self._steps: list[dict[str, float]] = []
        self._since_flush = 0
        self._closed = False
        with h5py.File(self.path, "w", locking=False) as f:
            for key, value in metadata.items():
                if value is None:
                    continue
                suffix, stored = _attr_value(value)
                f.attrs[key + suffix] = stored
            f.create_group("steps")
            f.create_group("samples")
            f.create_group("eval")
            f.attrs["state"] = "running"

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        row = {k: float(v) for k, v in metrics.items()}
        row["step"] = float(step)
        self._steps.append(row)
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self.flush()

    def log_eval(self, metrics: dict[str, Any]) -> None:
        """Final evaluation: nested {protocol: {metric: value}} or flat {"protocol/metric": value}."""
        with h5py.File(self.path, "a", locking=False) as f:
            self._write_eval(f["eval"], metrics)
            f.flush()

    @staticmethod
    def _write_eval(group: h5py.Group, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, dict):
                sub = group.require_group(key)
                RunRecorder._write_eval(sub, value)
            else:
                if key in group:
                    del group[key]
                group.create_dataset(key, data=float(value))

    def flush(self) -> None:
        """Write buffered steps and sampler rows (open, append, close)."""
        samples = self.sampler.drain() if self.sampler is not None else []
        if not self._steps and not samples:
            self._since_flush = 0
            return
        with h5py.File(self.path, "a", locking=False) as f:
            _append_rows(f["steps"], "step", self._steps)
            _append_rows(f["samples"], "t_s", samples)
            f.flush()
        self._steps = []
        self._since_flush = 0

    def close(self, **final_attrs: Any) -> None:
        """Flush, record the sampler's description and any final attributes, mark the file closed."""
        if self._closed:
            return
        if self.sampler is not None:
            self.sampler.stop()
        self.flush()
        with h5py.File(self.path, "a", locking=False) as f:
            if self.sampler is not None:
                for key, value in self.sampler.describe().items():
                    suffix, stored = _attr_value(value)
                    f["samples"].attrs[key + suffix] = stored
            for key, value in final_attrs.items():
                suffix, stored = _attr_value(value)
                f.attrs[key + suffix] = stored
            f.attrs["state"] = "closed"
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attrs_to_dict(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key.endswith("_json") and isinstance(value, str):
            out[key[: -len("_json")]] = json.loads(value)
        else:
            out[key] = value
    return out


def _read_eval(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in group.items():
        out[key] = _read_eval(item) if isinstance(item, h5py.Group) else float(item[()])
    return out


def read_rank_file(path: str | os.PathLike) -> dict[str, Any]:
    """One rank's file as plain dicts: metadata, steps/samples {name: np.ndarray}, samples_info, eval."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return {
                "path": str(path),
                "metadata": _attrs_to_dict(f.attrs),
                "steps": {k: np.asarray(v[()]) for k, v in f["steps"].items()},
                "samples": {k: np.asarray(v[()]) for k, v in f["samples"].items()},
                "samples_info": _attrs_to_dict(f["samples"].attrs),
                "eval": _read_eval(f["eval"]),
            }
    except (OSError, KeyError) as exc:
        raise DataError(str(path), f"not a readable hybridrec telemetry file: {exc}") from exc


def read_run(run_dir: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """All `telemetry/rank*.h5` of a run keyed by rank. Unreadable files raise DataError naming them."""
    files = sorted(Path(run_dir, "telemetry").glob("rank*.h5"))
    ranks: dict[int, dict[str, Any]] = {}
    for path in files:
        digits = path.stem[len("rank"):]
        if not digits.isdigit():
            continue
        ranks[int(digits)] = read_rank_file(path)
    return ranks


def rank_file(output_dir: str | os.PathLike, rank: int) -> Path:
    """Where rank `rank` of a run writes its telemetry."""
    return Path(output_dir, "telemetry", f"rank{rank}.h5")
