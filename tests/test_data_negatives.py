"""Fixed negatives: identical for the same seed, different for another, never the user's history or
target, distinct within a row, and pop100 follows the train popularity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridrec.config.data import DataConfig
from hybridrec.data import load_processed
from hybridrec.data.negatives import sample_negatives
from hybridrec.errors import ConfigError


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory):
    return load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path_factory.mktemp("c"))))


def test_negatives_are_identical_across_runs_with_same_seed(tmp_path: Path) -> None:
    a = load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path / "a")))
    b = load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path / "b")))
    c = load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path / "c"), seed=1))
    for key in a.negatives:
        np.testing.assert_array_equal(a.negatives[key], b.negatives[key])
        assert not np.array_equal(a.negatives[key], c.negatives[key])
    assert not np.array_equal(a.negatives["uni100/valid"], a.negatives["uni100/test"])


def test_negatives_never_contain_history_or_target_and_are_distinct(ml100k) -> None:
    for key, negs in ml100k.negatives.items():
        assert negs.shape == (ml100k.num_users, 100) and negs.dtype == np.int32
        assert negs.min() >= 1 and negs.max() <= ml100k.num_items
        for u in range(ml100k.num_users):
            row = negs[u]
            assert len(np.unique(row)) == 100, key
            assert not np.isin(row, ml100k.sequence(u)).any(), (key, u)


def test_pop100_follows_train_popularity(ml100k) -> None:
    uni = np.bincount(ml100k.negatives["uni100/test"].ravel(), minlength=ml100k.num_items + 1)
    pop = np.bincount(ml100k.negatives["pop100/test"].ravel(), minlength=ml100k.num_items + 1)
    counts = ml100k.item_counts
    assert np.corrcoef(pop[1:], counts[1:])[0, 1] > 0.9
    # uniform: user u draws each of its free items with probability 100 / (num_items - |S_u|)
    lengths = np.diff(ml100k.offsets)
    per_user = 100 / (ml100k.num_items - lengths)
    owner = np.repeat(np.arange(ml100k.num_users), lengths)
    expected = per_user.sum() - np.bincount(ml100k.items, weights=per_user[owner], minlength=ml100k.num_items + 1)
    z = (uni[1:] - expected[1:]) / np.sqrt(expected[1:])
    assert abs(z.mean()) < 0.1 and 0.7 < z.std() < 1.2
    assert np.corrcoef(pop[1:], counts[1:])[0, 1] > 0.9 > np.corrcoef(uni[1:], counts[1:])[0, 1]
    assert pop[1:][counts[1:] == 0].sum() == 0  # never-trained items are not drawn


def test_users_with_few_free_items_fall_back_to_exact_sampling() -> None:
    # 12 items; user 0 has 9 of them -> exactly the 3 others must come out
    offsets = np.array([0, 9, 12])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], dtype=np.int32)
    negs = sample_negatives(offsets, items, 12, 3, seed=0, protocol="uni100", split="test")
    assert sorted(negs[0].tolist()) == [10, 11, 12]
    assert not np.isin(negs[1], items[9:]).any()
    counts = np.array([0, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0, 0, 1])
    pop = sample_negatives(offsets, items, 12, 3, seed=0, protocol="pop100", split="test", item_counts=counts)
    assert sorted(pop[0].tolist()) == [10, 11, 12]  # zero-count items fill in when nothing else is left
    with pytest.raises(ConfigError, match="data.num_negatives"):
        sample_negatives(offsets, items, 12, 4, seed=0, protocol="uni100", split="test")
