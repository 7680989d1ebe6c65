"""The vocab-sharded rank counting equals brute-force ranking of the full score matrix, for any
number of shards, with and without history exclusion and for sampled candidates."""

from __future__ import annotations

import pytest
import torch

from hybridrec.eval.ranking import (
    Shard,
    count_above_full,
    count_above_sampled,
    target_scores_local,
)

NUM_ITEMS, VOCAB, ROWS = 37, 48, 16


def sharded_counts(scores: torch.Tensor, targets: torch.Tensor, shards: int, fn) -> torch.Tensor:
    size = VOCAB // shards
    parts = [(scores[:, s * size:(s + 1) * size], Shard(s * size, size)) for s in range(shards)]
    target = sum(target_scores_local(local, shard, targets) for local, shard in parts)
    return sum(fn(local, shard, target) for local, shard in parts)


@pytest.fixture()
def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(ROWS, VOCAB, generator=g).round(decimals=1)  # rounding makes ties
    targets = torch.randint(1, NUM_ITEMS + 1, (ROWS,), generator=g)
    history = torch.randint(0, NUM_ITEMS + 1, (ROWS, 6), generator=g)
    negatives = torch.randint(1, NUM_ITEMS + 1, (ROWS, 9), generator=g)
    return scores, targets, history, negatives


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_full_ranking_counts_equal_brute_force(case, shards: int) -> None:
    scores, targets, history, _ = case
    got = sharded_counts(scores, targets, shards, lambda s, sh, t: count_above_full(s, sh, t, NUM_ITEMS, None, targets))
    got_hist = sharded_counts(scores, targets, shards,
                              lambda s, sh, t: count_above_full(s, sh, t, NUM_ITEMS, history, targets))
    for row in range(ROWS):
        tgt = int(targets[row])
        others = [j for j in range(1, NUM_ITEMS + 1) if j != tgt]
        above = [j for j in others if scores[row, j] >= scores[row, tgt]]
        assert int(got[row]) == len(above)
        seen = set(history[row].tolist()) - {0}
        assert int(got_hist[row]) == len([j for j in above if j not in seen])


@pytest.mark.parametrize("shards", [1, 3])
def test_sampled_ranking_counts_equal_brute_force(case, shards: int) -> None:
    scores, targets, _, negatives = case
    vocab_shards = 4 if shards == 3 else shards  # 48 splits into 1, 2, 4 equal shards
    got = sharded_counts(scores, targets, vocab_shards, lambda s, sh, t: count_above_sampled(s, sh, t, negatives))
    for row in range(ROWS):
        tscore = scores[row, targets[row]]
        assert int(got[row]) == int((scores[row, negatives[row]] >= tscore).sum())
