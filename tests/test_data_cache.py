"""The HDF5 cache round-trips exactly, is keyed by the data config and the raw file, and is atomic."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from hybridrec.config.data import DataConfig
from hybridrec.data import cache, load_processed


def assert_same(a, b) -> None:
    assert (a.num_users, a.num_items) == (b.num_users, b.num_items)
    for name in ("offsets", "items", "item_counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert sorted(a.negatives) == sorted(b.negatives)
    for key in a.negatives:
        assert a.negatives[key].dtype == np.int32
        np.testing.assert_array_equal(a.negatives[key], b.negatives[key])
    assert a.item_keys == b.item_keys


def test_cache_round_trips(tmp_path: Path) -> None:
    cfg = DataConfig(source="ml100k", cache_dir=str(tmp_path))
    built = load_processed(cfg)
    loaded = load_processed(cfg)
    assert built.stats["cache"] == "built" and loaded.stats["cache"] == "hit"
    assert built.cache_path == loaded.cache_path and Path(loaded.cache_path).parent == tmp_path
    assert_same(built, loaded)
    assert loaded.item_keys[:3] == built.item_keys[:3] and loaded.item_keys[0] == "242"  # first-appearance order
    assert {k: v for k, v in loaded.stats.items() if k != "cache"} == \
        {k: v for k, v in built.stats.items() if k != "cache"}
    with h5py.File(loaded.cache_path, "r") as handle:
        assert handle["sequences/items"].shape == (99_287,)
        assert handle["negatives/pop100/test"].shape == (943, 100)


def test_cache_key_follows_the_config_and_the_raw_file(tmp_path: Path) -> None:
    base = DataConfig(source="synthetic", cache_dir=str(tmp_path))
    h = cache.config_hash(base, None)
    assert cache.config_hash(DataConfig(source="synthetic", cache_dir="/elsewhere", max_seq_len=7), None) == h
    assert cache.config_hash(DataConfig(source="synthetic", seed=1), None) != h
    assert cache.config_hash(DataConfig(source="synthetic", kcore=4), None) != h
    raw = tmp_path / "r.json"
    raw.write_text("x\n")
    with_file = cache.config_hash(DataConfig(source="amazon2018", path=str(raw)), raw)
    raw.write_text("xy\n")
    assert cache.config_hash(DataConfig(source="amazon2018", path=str(raw)), raw) != with_file


def test_stale_or_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    first = load_processed(cfg)
    Path(first.cache_path).write_bytes(b"not hdf5")
    again = load_processed(cfg)
    assert again.stats["cache"] == "built"
    assert_same(first, again)
    assert load_processed(cfg).stats["cache"] == "hit"
    # use_cache=false always rebuilds
    assert load_processed(DataConfig(cache_dir=str(tmp_path), use_cache=False)).stats["cache"] == "built"


def test_cache_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "x.h5"

    arrays = {"a": np.arange(3)}
    cache.write(target, arrays, {"format_version": cache.FORMAT_VERSION}, None)
    before = target.read_bytes()
    with pytest.raises(TypeError):  # h5py cannot store an object: the write fails half-way
        cache.write(target, {"a": np.arange(3), "bad": object()}, {}, None)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"]  # no temp file left behind
    assert os.access(target, os.R_OK)
