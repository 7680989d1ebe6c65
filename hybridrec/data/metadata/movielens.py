"""MovieLens-100k item metadata from the recbole wheel's `ml-100k.item` (tab-separated, header
`item_id:token movie_title:token_seq release_year:token class:token_seq`; genres space-separated)."""

from __future__ import annotations

from pathlib import Path

from hybridrec.data.formats._lines import BadLine, require_key
from hybridrec.data.formats.movielens import recbole_ml100k_dir
from hybridrec.data.metadata._records import ItemMeta, MetadataTable, read_records
from hybridrec.errors import DataError

EXPECTED_HEADER = ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq")
UNKNOWN = {"unknown", "unkonwn"}  # the file spells its placeholder both ways


def default_path() -> Path:
    return recbole_ml100k_dir() / "ml-100k.item"


def parse_line(text: str) -> tuple[str, ItemMeta]:
    columns = text.split("\t")
    if len(columns) != 4:
        raise BadLine("bad_columns", f"expected 4 tab-separated columns, got {len(columns)}")
    item, title, year, genres = (c.strip() for c in columns)
    return require_key(item, "item_id"), ItemMeta(
        title="" if title in UNKNOWN else title,
        year="" if year in UNKNOWN else year,
        categories=[g for g in genres.split() if g not in UNKNOWN],
    )


def read(path: str | Path = "", on_bad_line: str = "error") -> MetadataTable:
    path = Path(path) if path else default_path()
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = tuple(handle.readline().rstrip("\r\n").split("\t"))
        if header != EXPECTED_HEADER:
            raise DataError(path, f"header {header!r} is not the recbole item header {EXPECTED_HEADER!r}", 1)
    return read_records(path, parse_line, on_bad_line, "recbole ml-100k.item", skip_first=1)
