"""Both full-ranking conventions side by side (issue 17 item 3): which protocols are reported, and the
most-popular baseline with the input window excluded equals a brute-force ranking over the candidates
that remain."""

from __future__ import annotations

import numpy as np
import pytest

from hybridrec.data import ProcessedData
from hybridrec.data.split import history_ends, targets
from hybridrec.eval.evaluate import fixed_users, reported_protocols
from hybridrec.eval.popularity import most_popular_metrics, most_popular_ranks, popularity_scores


def random_data(seed: int = 0, users: int = 30, items: int = 25) -> ProcessedData:
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(items, size=rng.integers(4, 15), replace=False) + 1 for _ in range(users)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    flat = np.concatenate(seqs).astype(np.int32)
    counts = np.zeros(items + 1, np.int64)
    for s in seqs:
        np.add.at(counts, s[:-2], 1)
    return ProcessedData(users, items, offsets, flat, counts, {})


def brute_force(data: ProcessedData, window: int | None, split: str, seed: int) -> np.ndarray:
    scores, target = popularity_scores(data.item_counts, seed), targets(data.offsets, data.items, split)
    ends = history_ends(data.offsets, split)
    out = []
    for u in range(data.num_users):
        history = data.items[data.offsets[u]:ends[u]]
        if window is not None:
            history = history[-window:]
        candidates = [i for i in range(1, data.num_items + 1) if i == target[u] or i not in set(history.tolist())]
        out.append(sum(scores[i] >= scores[target[u]] for i in candidates if i != target[u]))
    return np.array(out)


def test_reported_protocols_add_the_other_convention_after_full() -> None:
    assert reported_protocols(["full", "uni100"], False, True) == ["full", "full_excl", "uni100"]
    assert reported_protocols(["full"], True, True) == ["full", "full_incl"]
    assert reported_protocols(["uni100", "pop100"], False, True) == ["uni100", "pop100"]
    assert reported_protocols(["full", "uni100"], False, False) == ["full", "uni100"]


@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_baseline_excluding_the_window_equals_brute_force(window: int | None, split: str) -> None:
    data = random_data()
    got = most_popular_ranks(data, "full", split, exclude_history=True, seed=2, window=window)
    np.testing.assert_array_equal(got, brute_force(data, window, split, seed=2))


def test_baseline_conventions_side_by_side() -> None:
    data = random_data(1)
    both = most_popular_metrics(data, ["full", "full_excl"], "test", [5], seed=0, window=4)
    assert both["full"] == most_popular_metrics(data, ["full"], "test", [5], seed=0)["full"]
    assert both["full_excl"] == most_popular_metrics(data, ["full"], "test", [5], True, seed=0, window=4)["full"]
    assert both["full_excl"]["HR@5"] >= both["full"]["HR@5"]
    flipped = most_popular_metrics(data, ["full", "full_incl"], "test", [5], True, seed=0, window=4)
    assert flipped["full_incl"] == both["full"] and flipped["full"] == both["full_excl"]


def test_fixed_users_are_a_seeded_subset() -> None:
    assert fixed_users(100, 0, 1) is None and fixed_users(100, 100, 1) is None
    a, b = fixed_users(100, 10, 1), fixed_users(100, 10, 1)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 10 and (np.diff(a) > 0).all()
