"""HR@K / NDCG@K and rank helpers against hand-computed values; the most-popular baseline on a toy
data set whose ranks are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybridrec.data import ProcessedData
from hybridrec.eval import hit_ndcg, metrics_at, most_popular_metrics, most_popular_ranks
from hybridrec.eval.metrics import rank_in_candidates, rank_of_targets
from hybridrec.eval.popularity import popularity_scores


def test_hit_ndcg_hand_computed() -> None:
    ranks = np.array([0, 1, 5, 10, 20])
    hr, ndcg = hit_ndcg(ranks, 10)
    assert hr == pytest.approx(3 / 5)
    assert ndcg == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(7)) / 5)
    assert ndcg == pytest.approx(0.3974274, abs=1e-7)
    assert hit_ndcg(ranks, 1) == pytest.approx((0.2, 0.2))
    assert hit_ndcg(ranks, 11) == pytest.approx((0.8, (1 + 1 / math.log2(3) + 1 / math.log2(7) + 1 / math.log2(12)) / 5))
    assert metrics_at(ranks, [1, 10]) == {"HR@1": 0.2, "NDCG@1": 0.2, "HR@10": 0.6, "NDCG@10": pytest.approx(ndcg)}
    with pytest.raises(ValueError):
        hit_ndcg(ranks, 0)


def test_rank_in_candidates_ties() -> None:
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.2, 0.9, 0.2, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert rank_in_candidates(scores).tolist() == [0, 2, 3]  # pessimistic: a constant scorer is last
    assert rank_in_candidates(scores, ties="optimistic").tolist() == [0, 1, 0]


def test_rank_of_targets_full_ranking_skips_padding_target_and_excluded() -> None:
    scores = np.array([[9.0, 0.5, 0.7, 0.1, 0.9], [9.0, 0.5, 0.7, 0.1, 0.9]])
    targets = np.array([2, 3])
    assert rank_of_targets(scores, targets).tolist() == [1, 3]  # column 0 (padding) never counts
    exclude = np.zeros_like(scores, dtype=bool)
    exclude[1, 4] = True  # e.g. a history item or an item beyond num_items
    assert rank_of_targets(scores, targets, exclude).tolist() == [1, 2]


def toy() -> ProcessedData:
    # train parts give counts 1:4 2:3 3:2 4:1 5:0 6:0
    seqs = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5], [1, 2, 6, 3], [1, 4, 2]]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    items = np.concatenate(seqs).astype(np.int32)
    counts = np.array([0, 4, 3, 2, 1, 0, 0])
    negs = {"uni100/test": np.array([[1, 2], [4, 3], [4, 5], [1, 3]], dtype=np.int32)}
    return ProcessedData(4, 6, offsets, items, counts, negs, {})


def test_most_popular_full_ranking_known_ranks() -> None:
    data = toy()
    for seed in range(4):
        ranks = most_popular_ranks(data, "full", "test", seed=seed)
        assert ranks[2:].tolist() == [2, 1] and sorted(ranks[:2].tolist()) == [4, 5]  # 5 and 6 tie at 0
        excluded = most_popular_ranks(data, "full", "test", exclude_history=True, seed=seed)
        assert excluded[[0, 2, 3]].tolist() == [0, 0, 0] and excluded[1] in (0, 1)
    hr, ndcg = metrics_at(most_popular_ranks(data, "full", "test"), [2]).values()
    assert (hr, ndcg) == pytest.approx((0.25, 1 / math.log2(3) / 4))


def test_most_popular_sampled_protocol_uses_stored_negatives() -> None:
    data = toy()
    assert most_popular_ranks(data, "uni100", "test").tolist() == [2, 2, 0, 1]
    result = most_popular_metrics(data, ["uni100"], "test", [1])
    assert result == {"uni100": {"HR@1": 0.25, "NDCG@1": 0.25}}


def test_popularity_tie_break_is_seeded_and_keeps_count_order() -> None:
    counts = np.array([0, 5, 5, 5, 1, 9])
    a, b = popularity_scores(counts, 0), popularity_scores(counts, 0)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a[1:])) == 5 and a[0] == -np.inf
    assert np.argsort(-a[1:])[0] + 1 == 5 and np.argsort(-a[1:])[-1] + 1 == 4
