"""Ranking metrics from ranks (rank 0 = best) and the helpers that turn scores into ranks.

Tie policy: a candidate that scores exactly the target's score counts as ranked above it
("pessimistic", the default), so a constant scorer gets the worst rank, not the best. "optimistic"
counts only strictly higher scores (what a vocab-sharded count of `score > target` gives).
"""

from __future__ import annotations

import numpy as np

TIES = ("pessimistic", "optimistic")


def hit_ndcg(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """HR@k = mean(rank < k); NDCG@k = mean(1 / log2(rank + 2) if rank < k else 0). One relevant item."""
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if ranks.size == 0:
        raise ValueError("no ranks to evaluate")
    hit = ranks < k
    gain = np.where(hit, 1.0 / np.log2(ranks.astype(np.float64) + 2.0), 0.0)
    return float(hit.mean()), float(gain.mean())


def metrics_at(ranks: np.ndarray, ks: list[int] | tuple[int, ...]) -> dict[str, float]:
    """{"HR@k": .., "NDCG@k": ..} for every k."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"], out[f"NDCG@{k}"] = hit_ndcg(ranks, k)
    return out


def _count_above(scores: np.ndarray, target_scores: np.ndarray, ties: str) -> np.ndarray:
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    above = scores > target_scores[:, None]
    if ties == "pessimistic":
        above |= scores == target_scores[:, None]
    return above


def rank_in_candidates(scores: np.ndarray, ties: str = "pessimistic") -> np.ndarray:
    """Rank of column 0 (the target) among the columns of `scores` (B, 1 + num_negatives)."""
    scores = np.asarray(scores)
    above = _count_above(scores[:, 1:], scores[:, 0], ties)
    return above.sum(axis=1).astype(np.int64)


def rank_of_targets(
    scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None, ties: str = "pessimistic"
) -> np.ndarray:
    """Rank of item targets[b] among all columns of `scores` (B, V) (full ranking).

    Column 0 (padding) never counts; `exclude` (B, V) bool marks further items that never count
    (e.g. columns beyond num_items, or the user's history); the target itself never counts.
    """
    scores = np.asarray(scores)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    above = _count_above(scores, target_scores, ties)
    above[:, 0] = False
    above[rows, targets] = False
    if exclude is not None:
        above &= ~exclude
    return above.sum(axis=1).astype(np.int64)
