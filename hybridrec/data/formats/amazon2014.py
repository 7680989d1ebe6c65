"""Amazon 2014 (McAuley) interaction files: `reviews_*.json(.gz)` JSON lines with reviewerID, asin,
overall, unixReviewTime (seconds), and `ratings_*.csv(.gz)` without header: user,item,rating,timestamp.
`read` tells the two apart by the first non-blank byte ('{' = reviews JSON, else ratings CSV)."""

from __future__ import annotations

from pathlib import Path

from hybridrec.data.formats._lines import (
    BadLine,
    RawInteractions,
    iter_lines,
    json_fields,
    parse_timestamp,
    read_interactions,
    require_key,
)


def parse_review_line(text: str) -> tuple[str, str, int]:
    return json_fields(text, "reviewerID", "asin", "unixReviewTime")


def parse_rating_line(text: str) -> tuple[str, str, int]:
    columns = text.split(",")
    if len(columns) != 4:
        raise BadLine("bad_columns", f"expected 4 comma-separated columns user,item,rating,timestamp, "
                      f"got {len(columns)}")
    user, item, _rating, stamp = columns
    return require_key(user, "user"), require_key(item, "item"), parse_timestamp(stamp)


def read_reviews(path: str | Path, on_bad_line: str = "error") -> RawInteractions:
    raw = read_interactions(path, parse_review_line, on_bad_line, fmt="amazon2014 reviews JSON")
    raw.stats["timestamp_unit"] = "s"
    return raw


def read_ratings(path: str | Path, on_bad_line: str = "error") -> RawInteractions:
    raw = read_interactions(path, parse_rating_line, on_bad_line, fmt="amazon2014 ratings CSV")
    raw.stats["timestamp_unit"] = "s"
    return raw


def looks_like_json(path: str | Path) -> bool:
    """True if the first non-blank line starts with '{' (errors here surface in the real read)."""
    try:
        for _, line in iter_lines(Path(path)):
            stripped = line.strip()
            if stripped:
                return stripped.startswith(b"{")
    except Exception:  # noqa: BLE001 - the full read reports the problem with file and line
        return True
    return True


def read(path: str | Path, on_bad_line: str = "error") -> RawInteractions:
    """Reviews JSON lines or ratings CSV, detected from the content."""
    if Path(path).is_file() and not looks_like_json(path):
        return read_ratings(path, on_bad_line)
    return read_reviews(path, on_bad_line)
