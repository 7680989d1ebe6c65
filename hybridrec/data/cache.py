"""HDF5 cache of processed data: the cache key (a hash of the data config and the raw file's identity)
and the file layout. Files are written atomically (`hybridrec.io.atomic_path`), so a reader sees either
no file or a complete one.

Layout (format_version 1):
  attrs: format_version, config_hash, config_json, stats_json, num_users, num_items
  sequences/offsets int64 (U+1), sequences/items int32, item_counts int64 (I+1)
  negatives/<protocol>/<split> int32 (U, n), item_keys (utf-8 strings, optional)
  text/token_ids int32 (I+1, T), text/lengths int32 (I+1) + attrs tokenizer_json, text_vocab_size (optional)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hybridrec.config.data import DataConfig
from hybridrec.io import atomic_path

FORMAT_VERSION = 1
# fields that do not change the processed data
NOT_HASHED = ("cache_dir", "use_cache", "max_seq_len", "train_windows", "train_stride")


def default_cache_dir() -> Path:
    return Path(os.environ.get("HYBRIDREC_CACHE", Path.home() / ".cache" / "hybridrec"))


def config_hash(cfg: DataConfig, raw_file: Path | None, meta_file: Path | None = None) -> str:
    """Hex digest over the data config (minus cache-only fields), the format version and the raw (and
    metadata) file's resolved path, size and mtime (so an edited file is re-processed)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HASHED}
    if not cfg.item_text:
        for name in ("meta_path", "text_max_tokens", "text_vocab_size"):
            fields.pop(name, None)
    if cfg.source == "synthetic":
        fields.pop("path", None)
    else:
        fields.pop("synthetic_scale", None)
    identity: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": fields}
    if raw_file is not None:
        stat = raw_file.stat()
        identity["raw_file"] = [str(raw_file.resolve()), stat.st_size, stat.st_mtime_ns]
    if meta_file is not None:
        stat = meta_file.stat()
        identity["meta_file"] = [str(meta_file.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cache_file(cfg: DataConfig, digest: str) -> Path:
    root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    return root / f"{cfg.source}-{digest[:16]}.h5"


def write(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], item_keys: list[str] | None) -> None:
    """Write datasets (keys are HDF5 paths) and attrs atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = json.dumps(value) if isinstance(value, dict | list) else value
        for name, array in arrays.items():
            handle.create_dataset(name, data=array)
        if item_keys:
            handle.create_dataset("item_keys", data=np.asarray(item_keys, dtype=object),
                                  dtype=h5py.string_dtype("utf-8"))


def read(path: Path, expected_hash: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str]] | None:
    """(arrays, attrs, item_keys) from a cache file, or None if it is missing, unreadable, of another
    format version or (when given) another config hash."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
            if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
                return None
            if expected_hash is not None and attrs.get("config_hash") != expected_hash:
                return None
            arrays: dict[str, np.ndarray] = {}

            def collect(name: str, node: Any) -> None:
                if isinstance(node, h5py.Dataset) and name != "item_keys":
                    arrays[name] = node[()]

            handle.visititems(collect)
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in handle["item_keys"][()]] \
                if "item_keys" in handle else []
    except OSError:
        return None
    for name in ("config_json", "stats_json"):
        if name in attrs:
            attrs[name] = json.loads(attrs[name])
    return arrays, attrs, keys
