"""Each raw format parses a small fixture written here (plain and gzip), and every kind of malformed
input yields a DataError naming the file and line, or a counted skip under on_bad_line=skip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from hybridrec.data.formats import READERS, amazon2014, movielens
from hybridrec.errors import ConfigError, DataError


def write(path: Path, lines: list[str] | bytes, gz: bool) -> Path:
    data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


REVIEWS_2014 = [
    json.dumps({"reviewerID": "U1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1300000000}),
    json.dumps({"reviewerID": "U2", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000100, "summary": "ok"}),
    "",
    json.dumps({"reviewerID": "U1", "asin": "B02", "overall": 4.0, "unixReviewTime": "1300000200"}),
]
RATINGS_2014 = ["U1,B01,5.0,1300000000", "U2,B02,3.0,1300000100", "U1,B02,4.0,1300000200"]
REVIEWS_2023 = [
    json.dumps({"user_id": "U1", "parent_asin": "B01", "asin": "X", "rating": 5.0, "timestamp": 1588615855070}),
    json.dumps({"user_id": "U2", "parent_asin": "B02", "rating": 3.0, "timestamp": 1588615855071}),
    json.dumps({"user_id": "U1", "parent_asin": "B02", "rating": 4.0, "timestamp": 1588615856000}),
]
FIXTURES = {
    "amazon2014-reviews": ("amazon2014", "reviews.json", REVIEWS_2014),
    "amazon2014-ratings": ("amazon2014", "ratings.csv", RATINGS_2014),
    "amazon2018": ("amazon2018", "Electronics.json", REVIEWS_2014),
    "amazon2023": ("amazon2023", "Electronics.jsonl", REVIEWS_2023),
}


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_each_amazon_format_parses_its_fixture(tmp_path: Path, name: str, gz: bool) -> None:
    source, filename, lines = FIXTURES[name]
    path = write(tmp_path / (filename + (".gz" if gz else "")), lines, gz)
    raw = READERS[source](path, "error")
    assert raw.user_keys == ["U1", "U2"]
    assert raw.item_keys == ["B01", "B02"]
    np.testing.assert_array_equal(raw.users, [0, 1, 0])
    np.testing.assert_array_equal(raw.items, [0, 1, 1])
    expected_times = [1588615855070, 1588615855071, 1588615856000] if source == "amazon2023" else \
        [1300000000, 1300000100, 1300000200]
    np.testing.assert_array_equal(raw.timestamps, expected_times)
    assert raw.stats["raw_interactions"] == 3


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.json", REVIEWS_2014, gz=True)  # gzip without .gz suffix
    assert READERS["amazon2018"](path, "error").stats["raw_interactions"] == 3
    plain = write(tmp_path / "plain.json.gz", REVIEWS_2014, gz=False)  # plain despite the suffix
    assert READERS["amazon2018"](plain, "error").stats["raw_interactions"] == 3


def test_amazon2014_tells_reviews_from_ratings(tmp_path: Path) -> None:
    assert amazon2014.looks_like_json(write(tmp_path / "a", REVIEWS_2014, gz=True))
    assert not amazon2014.looks_like_json(write(tmp_path / "b", RATINGS_2014, gz=False))
    assert amazon2014.read(tmp_path / "b").stats["format"] == "amazon2014 ratings CSV"


GOOD = json.dumps({"reviewerID": "U1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1300000000})
BAD_CASES = {
    "bad_json": ('{"reviewerID": "U1", "asin": ', "bad JSON"),
    "missing_field": (json.dumps({"reviewerID": "U1", "overall": 5.0, "unixReviewTime": 1}), "missing field 'asin'"),
    "bad_timestamp": (json.dumps({"reviewerID": "U1", "asin": "B", "unixReviewTime": "soon"}),
                      "non-numeric timestamp 'soon'"),
    "bad_id": (json.dumps({"reviewerID": "", "asin": "B", "unixReviewTime": 5}), "field 'reviewerID'"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_bad_line_errors_name_file_and_line(tmp_path: Path, kind: str, gz: bool) -> None:
    bad, message = BAD_CASES[kind]
    path = write(tmp_path / "reviews.json", [GOOD, GOOD, bad, GOOD], gz)
    with pytest.raises(DataError) as info:
        READERS["amazon2018"](path, "error")
    assert f"{path}:3: " in str(info.value)
    assert message in str(info.value)
    assert info.value.line == 3 and info.value.path == str(path)


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_lines_are_counted_and_skipped_under_skip_policy(tmp_path: Path, kind: str) -> None:
    bad, _ = BAD_CASES[kind]
    path = write(tmp_path / "reviews.json", [GOOD, bad, GOOD, bad], gz=False)
    raw = READERS["amazon2018"](path, "skip")
    assert raw.stats["raw_interactions"] == 2
    assert raw.stats["skipped"] == {kind: 2}
    assert raw.stats["skipped_examples"][0].startswith(f"{path}:2: ")
    assert raw.stats["skipped_examples"][1].startswith(f"{path}:4: ")


def test_bad_encoding_names_line(tmp_path: Path) -> None:
    data = (GOOD + "\n").encode() + b'{"reviewerID": "U\xff\xfe", "asin": "B", "unixReviewTime": 1}\n'
    path = write(tmp_path / "reviews.json", data, gz=False)
    with pytest.raises(DataError, match=r"reviews\.json:2: bad encoding"):
        READERS["amazon2018"](path, "error")
    assert READERS["amazon2018"](path, "skip").stats["skipped"] == {"bad_encoding": 1}


def test_truncated_gzip_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    lines = [GOOD] * 2000
    blob = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(blob[: len(blob) // 2])
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match="gzip stream is truncated or corrupt") as info:
            READERS["amazon2018"](path, policy)
        assert str(path) in str(info.value)
        assert info.value.line is not None


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_empty_file_is_an_error(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / "reviews.json", b"", gz)
    with pytest.raises(DataError, match="file is empty") as info:
        READERS["amazon2014"](path, "skip")
    assert str(path) in str(info.value)
    blank = write(tmp_path / "blank.json", ["", "  "], gz)
    with pytest.raises(DataError, match="no interactions in 2 lines"):
        READERS["amazon2018"](blank, "error")


def test_only_bad_lines_under_skip_is_an_error_not_an_empty_data_set(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.json", ["{nope", "{nope"], gz=False)
    with pytest.raises(DataError, match="no interactions"):
        READERS["amazon2018"](path, "skip")


def test_ratings_csv_with_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", ["U1,B01,5.0,1300000000", "U1,B01,5.0"], gz=False)
    with pytest.raises(DataError, match=r"ratings\.csv:2: expected 4 comma-separated columns"):
        amazon2014.read_ratings(path)


def test_missing_file_and_bad_policy(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        READERS["amazon2023"](tmp_path / "nope.jsonl", "error")
    path = write(tmp_path / "r.json", [GOOD], gz=False)
    with pytest.raises(ConfigError, match="data.on_bad_line"):
        READERS["amazon2018"](path, "ignore")


def test_movielens_from_the_recbole_wheel() -> None:
    path = movielens.default_path()
    assert path.is_file() and "site-packages" in str(path)
    raw = movielens.read()
    assert raw.stats["raw_interactions"] == 100_000
    assert len(raw.user_keys) == 943 and len(raw.item_keys) == 1682
    assert raw.user_keys[0] == "196" and raw.item_keys[0] == "242" and raw.timestamps[0] == 881250949


def test_movielens_header_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "x.inter", ["user\titem\trating\ttime", "1\t2\t3\t4"], gz=False)
    with pytest.raises(DataError, match=r"x\.inter:1: header"):
        movielens.read(path)
