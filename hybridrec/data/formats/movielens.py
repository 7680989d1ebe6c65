"""MovieLens-100k as shipped inside the installed `recbole` wheel (atomic file `ml-100k.inter`:
tab-separated, one header line `user_id:token item_id:token rating:float timestamp:float`).
The file is located with importlib and read in place; it is never copied into the repository."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hybridrec.data.formats._lines import (
    BadLine,
    RawInteractions,
    parse_timestamp,
    read_interactions,
    require_key,
)
from hybridrec.errors import DataError

EXPECTED_HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")


def recbole_ml100k_dir() -> Path:
    """Directory of recbole's bundled ml-100k; DataError if recbole is not installed."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError("recbole", "the recbole package is not installed: "
                        "`pip install --no-deps recbole==1.2.1` provides MovieLens-100k offline")
    return Path(spec.origin).parent / "dataset_example" / "ml-100k"


def default_path() -> Path:
    return recbole_ml100k_dir() / "ml-100k.inter"


def parse_line(text: str) -> tuple[str, str, int]:
    columns = text.split("\t")
    if len(columns) != 4:
        raise BadLine("bad_columns", f"expected 4 tab-separated columns, got {len(columns)}")
    return require_key(columns[0], "user_id"), require_key(columns[1], "item_id"), parse_timestamp(columns[3])


def read(path: str | Path = "", on_bad_line: str = "error") -> RawInteractions:
    path = Path(path) if path else default_path()
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = tuple(handle.readline().rstrip("\r\n").split("\t"))
        if header != EXPECTED_HEADER:
            raise DataError(path, f"header {header!r} is not the recbole atomic header {EXPECTED_HEADER!r}", 1)
    raw = read_interactions(path, parse_line, on_bad_line, fmt="recbole ml-100k.inter", skip_first=1)
    raw.stats["timestamp_unit"] = "s"
    return raw
