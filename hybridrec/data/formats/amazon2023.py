"""Amazon 2023 (McAuley lab) review files such as `Electronics.jsonl(.gz)`: JSON lines with user_id,
parent_asin, rating, timestamp in milliseconds. Items are keyed by parent_asin (variants merged), as
the 2023 benchmark does; timestamps are kept in ms (only their order matters)."""

from __future__ import annotations

from pathlib import Path

from hybridrec.data.formats._lines import RawInteractions, json_fields, read_interactions


def parse_line(text: str) -> tuple[str, str, int]:
    return json_fields(text, "user_id", "parent_asin", "timestamp")


def read(path: str | Path, on_bad_line: str = "error") -> RawInteractions:
    raw = read_interactions(path, parse_line, on_bad_line, fmt="amazon2023 jsonl")
    raw.stats["timestamp_unit"] = "ms"
    return raw
