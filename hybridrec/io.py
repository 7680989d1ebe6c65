"""Atomic file writes: a result file is either the old complete one or the new complete one; an earlier
attempt's result is kept under an attempt-numbered name (`keep_previous`) rather than overwritten."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def attempt_path(path: str | os.PathLike, attempt: int) -> Path:
    """`summary.json`, 2 -> `summary.attempt2.json` (the name an earlier attempt's file is kept under)."""
    target = Path(path)
    return target.with_name(f"{target.stem}.attempt{attempt}{target.suffix}")


def keep_previous(path: str | os.PathLike) -> Path | None:
    """Before a new attempt writes `path`, move an earlier attempt's file there to the next free
    attempt-numbered name (`summary.attempt1.json`, then `.attempt2`, ...) so that no result is ever
    overwritten; returns where it went (None when there was nothing to keep). Call it on one process
    only (the one that writes `path`), right before that write."""
    target = Path(path)
    if not target.exists():
        return None
    attempt = 1
    while attempt_path(target, attempt).exists():
        attempt += 1
    kept = attempt_path(target, attempt)
    os.replace(target, kept)
    return kept
