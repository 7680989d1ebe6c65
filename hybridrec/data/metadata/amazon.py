"""Amazon item metadata: 2014 `meta_*.json.gz` (one Python dict literal per line, parsed with
ast.literal_eval, never eval), 2018 `meta_*.json.gz` (JSON lines), 2023 `meta_*.jsonl` (JSON lines
keyed by parent_asin). Fields used: title, categories (2014: list of category paths; 2018: `category`;
2023: `categories`, else `main_category`), brand (2014/2018 `brand`, 2023 `store`)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from hybridrec.data.formats._lines import BadLine, json_object, require_key
from hybridrec.data.metadata._records import ItemMeta, MetadataTable, read_records, string_list, text_field


def _literal(text: str) -> dict[str, Any]:
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise BadLine("bad_literal", f"not a Python dict literal ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise BadLine("bad_literal", f"expected a dict literal, got {type(record).__name__}")
    return record


def _json(text: str) -> dict[str, Any]:
    return json_object(text)


def _key(record: dict[str, Any], name: str) -> str:
    if name not in record:
        raise BadLine("missing_field", f"missing field '{name}'")
    return require_key(record[name], name)


def parse_2014(text: str) -> tuple[str, ItemMeta]:
    record = _literal(text)
    return _key(record, "asin"), ItemMeta(
        title=text_field(record, "title"), categories=string_list(record.get("categories"), "categories"),
        brand=text_field(record, "brand"),
    )


def parse_2018(text: str) -> tuple[str, ItemMeta]:
    record = _json(text)
    return _key(record, "asin"), ItemMeta(
        title=text_field(record, "title"), categories=string_list(record.get("category"), "category"),
        brand=text_field(record, "brand"),
    )


def parse_2023(text: str) -> tuple[str, ItemMeta]:
    record = _json(text)
    categories = string_list(record.get("categories"), "categories")
    if not categories and text_field(record, "main_category"):
        categories = [text_field(record, "main_category")]
    return _key(record, "parent_asin"), ItemMeta(
        title=text_field(record, "title"), categories=categories, brand=text_field(record, "store"),
    )


def read_2014(path: str | Path, on_bad_line: str = "error") -> MetadataTable:
    return read_records(path, parse_2014, on_bad_line, "amazon2014 metadata (Python dict literals)")


def read_2018(path: str | Path, on_bad_line: str = "error") -> MetadataTable:
    return read_records(path, parse_2018, on_bad_line, "amazon2018 metadata JSON")


def read_2023(path: str | Path, on_bad_line: str = "error") -> MetadataTable:
    return read_records(path, parse_2023, on_bad_line, "amazon2023 metadata jsonl")
