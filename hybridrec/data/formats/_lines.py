"""Shared line reading for raw interaction files: gzip-or-plain by magic bytes, per-line decoding,
the bad-line policy (error or counted skip), and the `RawInteractions` the format parsers return.

Policy (documented in conf/data/*.yaml and ARCHITECTURE.md):
- `on_bad_line="error"` (default): the first malformed line raises `DataError(path, reason, line)`.
- `on_bad_line="skip"`: malformed lines are skipped and counted per reason in `stats["skipped"]`;
  the first few are listed in `stats["skipped_examples"]` as "file:line: reason".
- Always errors, whatever the policy: a file that does not exist, a truncated/corrupt gzip stream
  (we cannot know what is missing), and a file with no interactions at all.
- Blank lines are ignored and counted in `stats["blank_lines"]`.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrec.errors import ConfigError, DataError

GZIP_MAGIC = b"\x1f\x8b"
BAD_LINE_POLICIES = ("error", "skip")
MAX_SKIP_EXAMPLES = 5


class BadLine(Exception):
    """Raised by a line parser: the line is malformed. `kind` is the stats key (e.g. "bad_json")."""

    def __init__(self, kind: str, detail: str):
        self.kind = kind
        super().__init__(detail)


@dataclass
class RawInteractions:
    """Interactions as read: dense integer codes for users/items (in order of first appearance),
    the original keys for each code, and one timestamp per interaction (in the file's own unit)."""

    users: np.ndarray  # int64 codes
    items: np.ndarray  # int64 codes
    timestamps: np.ndarray  # int64
    user_keys: list[str]
    item_keys: list[str]
    stats: dict[str, Any] = field(default_factory=dict)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw line bytes without newline); corrupt gzip -> DataError."""
    line_no = 0
    try:
        with _open_binary(path) as handle:
            for line_no, raw in enumerate(handle, start=1):
                yield line_no, raw.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(path, f"gzip stream is truncated or corrupt after this line ({exc})", line_no) from exc


def parse_timestamp(value: Any) -> int:
    """An integer timestamp from an int, an integral float or a decimal string; else BadLine."""
    if isinstance(value, bool):
        raise BadLine("bad_timestamp", f"non-numeric timestamp {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise BadLine("bad_timestamp", f"non-integral timestamp {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                raise BadLine("bad_timestamp", f"non-numeric timestamp {value!r}") from None
            return parse_timestamp(as_float)
    raise BadLine("bad_timestamp", f"non-numeric timestamp {value!r}")


def require_key(value: Any, name: str) -> str:
    """A user/item id field: a non-empty string (ints are accepted and stringified)."""
    if isinstance(value, bool) or value is None:
        raise BadLine("bad_id", f"field '{name}' is {value!r}, expected a non-empty id")
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadLine("bad_id", f"field '{name}' is {value!r}, expected a non-empty id")
    return value


LineParser = Callable[[str], tuple[str, str, int]]


def read_interactions(
    path: str | Path, parse_line: LineParser, on_bad_line: str = "error", fmt: str = "", skip_first: int = 0
) -> RawInteractions:
    """Read every line of `path` with `parse_line` (text -> (user, item, timestamp)) under the policy."""
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ConfigError("data.on_bad_line", on_bad_line, " | ".join(BAD_LINE_POLICIES))
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    user_codes: dict[str, int] = {}
    item_codes: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    stamps: list[int] = []
    skipped: dict[str, int] = {}
    examples: list[str] = []
    blank = 0
    lines = 0
    for line_no, raw in iter_lines(path):
        lines = line_no
        if line_no <= skip_first:
            continue
        try:
            if not raw.strip():
                blank += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadLine("bad_encoding", f"bad encoding (not UTF-8: {exc.reason} at byte {exc.start})") from None
            user, item, stamp = parse_line(text)
        except BadLine as bad:
            reason = str(bad)
            if on_bad_line == "error":
                raise DataError(path, f"{reason} (set data.on_bad_line=skip to count and skip)", line_no) from None
            skipped[bad.kind] = skipped.get(bad.kind, 0) + 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append(f"{path}:{line_no}: {reason}")
            continue
        users.append(user_codes.setdefault(user, len(user_codes)))
        items.append(item_codes.setdefault(item, len(item_codes)))
        stamps.append(stamp)
    if not users:
        detail = "file is empty" if lines == 0 else f"no interactions in {lines} lines"
        raise DataError(path, f"{detail}: expected {fmt or 'interaction'} lines")
    stats = {
        "format": fmt,
        "path": str(path),
        "lines": lines,
        "blank_lines": blank,
        "raw_interactions": len(users),
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        "skipped_examples": examples,
    }
    return RawInteractions(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        timestamps=np.asarray(stamps, dtype=np.int64),
        user_keys=list(user_codes),
        item_keys=list(item_codes),
        stats=stats,
    )


def json_object(text: str) -> dict:
    """One JSON object line (a BadLine 'bad_json' naming the column otherwise)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadLine("bad_json", f"bad JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise BadLine("bad_json", f"bad JSON (expected an object, got {type(record).__name__})")
    return record


def json_fields(text: str, user_field: str, item_field: str, time_field: str) -> tuple[str, str, int]:
    """Parse one JSON object line and pull the three fields out of it."""
    record = json_object(text)
    for name in (user_field, item_field, time_field):
        if name not in record:
            raise BadLine("missing_field", f"missing field '{name}'")
    return (
        require_key(record[user_field], user_field),
        require_key(record[item_field], item_field),
        parse_timestamp(record[time_field]),
    )
