"""Evaluation: HR@K / NDCG@K from ranks (metrics) and the most-popular baseline (popularity)."""

from hybridrec.eval.metrics import hit_ndcg, metrics_at, rank_in_candidates, rank_of_targets
from hybridrec.eval.popularity import most_popular_metrics, most_popular_ranks

__all__ = ["hit_ndcg", "metrics_at", "most_popular_metrics", "most_popular_ranks", "rank_in_candidates",
           "rank_of_targets"]
