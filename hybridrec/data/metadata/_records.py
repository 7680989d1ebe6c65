"""Item metadata records and the line loop shared by the metadata readers (same bad-line policy as
the interaction readers in hybridrec.data.formats._lines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridrec.data.formats._lines import BAD_LINE_POLICIES, MAX_SKIP_EXAMPLES, BadLine, iter_lines
from hybridrec.errors import ConfigError, DataError


@dataclass
class ItemMeta:
    title: str = ""
    categories: list[str] = field(default_factory=list)
    brand: str = ""
    year: str = ""

    def text(self) -> str:
        """One line of text for the tokenizer: title (year), categories, brand; empty parts left out."""
        title = f"{self.title} ({self.year})" if self.title and self.year else self.title
        parts = [title, ", ".join(self.categories), self.brand]
        return " | ".join(part for part in parts if part)


@dataclass
class MetadataTable:
    items: dict[str, ItemMeta]
    stats: dict[str, Any] = field(default_factory=dict)


LineParser = Callable[[str], tuple[str, ItemMeta]]


def read_records(path: str | Path, parse_line: LineParser, on_bad_line: str, fmt: str,
                 skip_first: int = 0) -> MetadataTable:
    """Parse every non-blank line into (key, ItemMeta); the first record of a key wins."""
    if on_bad_line not in BAD_LINE_POLICIES:
        raise ConfigError("data.on_bad_line", on_bad_line, " | ".join(BAD_LINE_POLICIES))
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{fmt}: file not found")
    items: dict[str, ItemMeta] = {}
    skipped: dict[str, int] = {}
    examples: list[str] = []
    lines = duplicates = 0
    for line_no, raw in iter_lines(path):
        lines = line_no
        if line_no <= skip_first or not raw.strip():
            continue
        try:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadLine("bad_encoding", f"bad encoding (not UTF-8: {exc.reason} at byte {exc.start})") from None
            key, meta = parse_line(text)
        except BadLine as bad:
            if on_bad_line == "error":
                raise DataError(path, f"{bad} (set data.on_bad_line=skip to count and skip)", line_no) from None
            skipped[bad.kind] = skipped.get(bad.kind, 0) + 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append(f"{path}:{line_no}: {bad}")
            continue
        if key in items:
            duplicates += 1
            continue
        items[key] = meta
    if not items:
        raise DataError(path, f"{'file is empty' if lines == 0 else f'no item records in {lines} lines'}: "
                        f"expected {fmt} lines")
    stats = {"format": fmt, "path": str(path), "lines": lines, "records": len(items), "duplicate_keys": duplicates,
             "skipped": skipped, "skipped_total": sum(skipped.values()), "skipped_examples": examples}
    return MetadataTable(items, stats)


def text_field(record: dict[str, Any], name: str) -> str:
    """A string field ('' if absent); a non-string is a bad line."""
    value = record.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadLine("bad_field", f"field '{name}' is {type(value).__name__}, expected a string")
    return " ".join(value.split())


def string_list(value: Any, name: str) -> list[str]:
    """A list of strings, flattening one level of nesting (2014 categories are lists of lists)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadLine("bad_field", f"field '{name}' is {type(value).__name__}, expected a list")
    out: list[str] = []
    for entry in value:
        entries = entry if isinstance(entry, list) else [entry]
        for item in entries:
            if not isinstance(item, str):
                raise BadLine("bad_field", f"field '{name}' holds {type(item).__name__}, expected strings")
            if item and item not in out:
                out.append(item)
    return out
