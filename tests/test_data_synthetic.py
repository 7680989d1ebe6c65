"""The synthetic generator is seeded, has the intended scale, and carries sequential signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridrec.config.data import DataConfig
from hybridrec.data import load_processed, synthetic
from hybridrec.data.split import targets


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b, c = synthetic.generate("tiny", 0), synthetic.generate("tiny", 0), synthetic.generate("tiny", 1)
    for name in ("users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.items, c.items)


def test_tiny_scale_after_5core(tmp_path: Path) -> None:
    data = load_processed(DataConfig(source="synthetic", synthetic_scale="tiny", cache_dir=str(tmp_path)))
    assert 1_000 <= data.num_users <= 2_000 and 300 <= data.num_items <= 500
    lengths = np.diff(data.offsets)
    assert lengths.min() >= 5 and lengths.max() <= 40
    # enough free items for 100 negatives per user
    assert data.num_items - lengths.max() >= 100


def test_next_item_is_predictable_beyond_popularity(tmp_path: Path) -> None:
    """A bigram model (counted on train parts) predicts the test item far better than popularity."""
    data = load_processed(DataConfig(source="synthetic", synthetic_scale="tiny", cache_dir=str(tmp_path)))
    n = data.num_items + 1
    bigram = np.zeros((n, n))
    for u in range(data.num_users):
        train = data.sequence(u)[:-2]
        np.add.at(bigram, (train[:-1], train[1:]), 1)
    last = data.items[data.offsets[1:] - 2]
    target = targets(data.offsets, data.items, "test")
    top10_bigram = np.argsort(-bigram[last], axis=1)[:, :10]
    top10_pop = np.argsort(-data.item_counts)[:10]
    hit_bigram = (top10_bigram == target[:, None]).any(axis=1).mean()
    hit_pop = np.isin(target, top10_pop).mean()
    assert hit_bigram > hit_pop + 0.1, (hit_bigram, hit_pop)


def test_paper_spec_is_the_documented_one() -> None:
    spec = synthetic.SCALES["paper"]
    assert (spec.min_len, spec.max_len, spec.length_exponent) == (5, 450, 3.05)
    assert spec.num_users > 192_403 and spec.num_items > 63_001


@pytest.mark.slow
def test_paper_scale_counts_match_amazon_2014_5core_within_3_percent() -> None:
    from hybridrec.data import kcore

    raw = synthetic.generate("paper", 0)
    keep = kcore.dedupe_mask(raw.users, raw.items, raw.timestamps)
    keep, _ = kcore.kcore_mask(raw.users, raw.items, 5, 5, keep)
    users, items = len(np.unique(raw.users[keep])), len(np.unique(raw.items[keep]))
    for got, paper in ((users, 192_403), (items, 63_001), (int(keep.sum()), 1_689_188)):
        assert abs(got - paper) / paper < 0.03, (got, paper)
