"""Item metadata (title, categories, brand, year) per format family, and the item texts built from it.

`read(source, path, on_bad_line) -> MetadataTable` (items keyed by the same raw key the interaction
readers use: asin, parent_asin, MovieLens item id). Malformed lines follow the interaction readers'
policy (`on_bad_line=error` -> DataError file:line; `skip` -> counted in stats["skipped"]).
`item_texts(item_keys, table)` gives the text of items 1..num_items ("" where an item has no metadata)
and counts those in stats["items_without_metadata"].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hybridrec.data.metadata import amazon, movielens
from hybridrec.data.metadata._records import ItemMeta, MetadataTable
from hybridrec.errors import ConfigError

MetaReader = Callable[[str | Path, str], MetadataTable]

READERS: dict[str, MetaReader] = {
    "amazon2014": amazon.read_2014,
    "amazon2018": amazon.read_2018,
    "amazon2023": amazon.read_2023,
    "ml100k": movielens.read,
}


def read(source: str, path: str | Path, on_bad_line: str = "error") -> MetadataTable:
    if source not in READERS:
        raise ConfigError("data.source", source, f"a source with item metadata: {' | '.join(READERS)}")
    return READERS[source](path, on_bad_line)


def item_texts(item_keys: list[str], table: MetadataTable) -> tuple[list[str], dict[str, int]]:
    """Texts for items 1..len(item_keys) (list index i-1) and counts of items with / without metadata."""
    texts = []
    missing = 0
    for key in item_keys:
        meta = table.items.get(key)
        text = meta.text() if meta is not None else ""
        missing += not text
        texts.append(text)
    return texts, {"items_with_metadata": len(item_keys) - missing, "items_without_metadata": missing}


__all__ = ["READERS", "ItemMeta", "MetadataTable", "item_texts", "read"]
