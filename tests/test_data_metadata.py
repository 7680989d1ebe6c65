"""Item metadata: each format parses a small fixture written here (plain and gzip), 2014 dict literals
are never evaluated as code, bad lines name file and line, items without metadata are counted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hybridrec.data import metadata
from hybridrec.data.metadata import ItemMeta, item_texts
from hybridrec.errors import ConfigError, DataError

META_2014 = [
    repr({"asin": "B01", "title": "USB  Cable", "categories": [["Electronics", "Accessories"], ["Electronics"]],
          "brand": "Acme", "price": 3.5, "related": {"also_bought": ["B02"]}}),
    repr({"asin": "B02", "categories": [["Electronics", "Audio"]]}),
]
META_2018 = [
    json.dumps({"asin": "B01", "title": "USB Cable", "category": ["Electronics", "Accessories"], "brand": "Acme"}),
    json.dumps({"asin": "B02", "title": "", "category": ["Electronics", "Audio"], "main_cat": "All Electronics"}),
]
META_2023 = [
    json.dumps({"parent_asin": "B01", "title": "USB Cable", "categories": ["Electronics", "Accessories"],
                "store": "Acme", "main_category": "All Electronics"}),
    json.dumps({"parent_asin": "B02", "title": None, "categories": [], "main_category": "Electronics Audio"}),
]
CASES = {"amazon2014": META_2014, "amazon2018": META_2018, "amazon2023": META_2023}


def write(path: Path, lines: list[str], gz: bool) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("source", sorted(CASES))
def test_each_metadata_format_parses_its_fixture(tmp_path: Path, source: str, gz: bool) -> None:
    table = metadata.read(source, write(tmp_path / "meta", CASES[source], gz))
    assert sorted(table.items) == ["B01", "B02"]
    first = table.items["B01"]
    assert (first.title, first.categories, first.brand) == ("USB Cable", ["Electronics", "Accessories"], "Acme")
    assert first.text() == "USB Cable | Electronics, Accessories | Acme"
    assert table.items["B02"].title == ""
    assert table.stats["records"] == 2


def test_2023_falls_back_to_main_category(tmp_path: Path) -> None:
    table = metadata.read("amazon2023", write(tmp_path / "m.jsonl", META_2023, False))
    assert table.items["B02"].text() == "Electronics Audio"


def test_2014_literals_are_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    path = write(tmp_path / "meta.json", [META_2014[0], evil], False)
    with pytest.raises(DataError, match=r"meta\.json:2: not a Python dict literal"):
        metadata.read("amazon2014", path)
    assert metadata.read("amazon2014", path, "skip").stats["skipped"] == {"bad_literal": 1}
    assert not marker.exists()


@pytest.mark.parametrize(("source", "bad", "message"), [
    ("amazon2018", '{"asin": "B03", "title": ', "bad JSON"),
    ("amazon2018", json.dumps({"title": "no key"}), "missing field 'asin'"),
    ("amazon2023", json.dumps({"parent_asin": "B03", "categories": "Electronics"}), "field 'categories' is str"),
    ("amazon2014", repr(["not", "a", "dict"]), "expected a dict literal"),
])
def test_bad_metadata_lines_name_file_and_line(tmp_path: Path, source: str, bad: str, message: str) -> None:
    path = write(tmp_path / "meta", CASES[source] + [bad], True)
    with pytest.raises(DataError) as info:
        metadata.read(source, path)
    assert f"{path}:3: " in str(info.value) and message in str(info.value)


def test_empty_metadata_file_and_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file is empty"):
        metadata.read("amazon2018", _empty(tmp_path))
    with pytest.raises(ConfigError, match="data.source"):
        metadata.read("synthetic", tmp_path / "x")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    return path


def test_items_without_metadata_are_counted() -> None:
    table = metadata.MetadataTable({"a": ItemMeta(title="Alpha"), "b": ItemMeta()})
    texts, counts = item_texts(["a", "b", "c"], table)
    assert texts == ["Alpha", "", ""]
    assert counts == {"items_with_metadata": 1, "items_without_metadata": 2}


def test_movielens_items_from_the_recbole_wheel() -> None:
    table = metadata.read("ml100k", "")
    assert table.stats["records"] == 1682
    assert table.items["1"].text() == "Toy Story (1995) | Animation, Children's, Comedy"
    assert table.items["267"].text() == ""  # the file's placeholder row ("unkonwn")
