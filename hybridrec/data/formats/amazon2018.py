"""Amazon 2018 (Ni et al.) review files: JSON lines with reviewerID, asin, overall, unixReviewTime
(seconds), gzip or plain. Only the user, item and time fields are used (implicit feedback)."""

from __future__ import annotations

from pathlib import Path

from hybridrec.data.formats._lines import RawInteractions, json_fields, read_interactions


def parse_line(text: str) -> tuple[str, str, int]:
    return json_fields(text, "reviewerID", "asin", "unixReviewTime")


def read(path: str | Path, on_bad_line: str = "error") -> RawInteractions:
    raw = read_interactions(path, parse_line, on_bad_line, fmt="amazon2018 JSON")
    raw.stats["timestamp_unit"] = "s"
    return raw
