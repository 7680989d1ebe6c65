"""Most-popular baseline: score = train-part interaction count, under the full / uni100 / pop100
protocols, with the same candidates and tie policy as the model's evaluation.

Equal counts are ordered by a fixed seeded random permutation of the items (a random tie-break that
is the same on every run), so the baseline is neither flattered nor punished by ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hybridrec.data.split import history_ends, targets
from hybridrec.errors import ConfigError
from hybridrec.eval.metrics import metrics_at, rank_in_candidates

if TYPE_CHECKING:
    from hybridrec.data.processed import ProcessedData

PROTOCOLS = ("full", "uni100", "pop100")
FULL_VARIANTS = {"full_incl": False, "full_excl": True}  # as hybridrec.eval.ranking.FULL_VARIANTS


def popularity_scores(item_counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """(num_items + 1,) float64 scores, all distinct: count + a seeded tie-break in [0, 1); index 0 = -inf."""
    num = len(item_counts)
    tie_break = np.random.default_rng([seed, 0x7E]).permutation(num) / num
    scores = item_counts.astype(np.float64) + tie_break
    scores[0] = -np.inf
    return scores


def most_popular_ranks(
    data: ProcessedData, protocol: str, split: str = "test", exclude_history: bool = False, seed: int = 0,
    window: int | None = None,
) -> np.ndarray:
    """Rank (0 = best) of each user's target under the popularity scorer; shape (num_users,).

    `exclude_history` drops the user's history items from the full ranking: all of them, or with
    `window` only the last `window` (the model's input window, as `eval.ranking` excludes)."""
    if protocol not in PROTOCOLS:
        raise ConfigError("eval.protocols", protocol, " | ".join(PROTOCOLS))
    scores = popularity_scores(data.item_counts, seed)
    target = targets(data.offsets, data.items, split)
    if protocol != "full":
        key = f"{protocol}/{split}"
        if key not in data.negatives:
            raise ConfigError("eval.protocols", protocol, f"one of the stored negatives {sorted(data.negatives)}")
        candidates = np.concatenate([target[:, None], data.negatives[key].astype(np.int64)], axis=1)
        return rank_in_candidates(scores[candidates])
    # full ranking: position of the target in the global order (scores are distinct)
    order = np.argsort(-scores[1:], kind="stable") + 1
    position = np.empty(data.num_items + 1, dtype=np.int64)
    position[order] = np.arange(data.num_items)
    ranks = position[target]
    if exclude_history:
        owner_all = np.repeat(np.arange(data.num_users), np.diff(data.offsets))
        position_all, ends = np.arange(len(data.items)), history_ends(data.offsets, split)[owner_all]
        in_history = position_all < ends
        if window is not None:
            in_history &= position_all >= ends - window
        owner, hist = owner_all[in_history], data.items[in_history].astype(np.int64)
        # each distinct history item (other than the target) ranked above the target is removed
        pairs = np.unique(owner * (data.num_items + 1) + hist)
        pair_user, pair_item = np.divmod(pairs, data.num_items + 1)
        above = (position[pair_item] < ranks[pair_user]) & (pair_item != target[pair_user])
        ranks = ranks - np.bincount(pair_user[above], minlength=data.num_users)
    return ranks


def most_popular_metrics(
    data: ProcessedData, protocols: list[str], split: str = "test", ks: list[int] | tuple[int, ...] = (10,),
    exclude_history: bool = False, seed: int = 0, window: int | None = None,
) -> dict[str, dict[str, float]]:
    """{protocol: {"HR@k": .., "NDCG@k": ..}} for the baseline. `full_incl` / `full_excl` are the full
    ranking with the history (or its last `window` items) kept / excluded, whatever `exclude_history` says."""
    out = {}
    for protocol in protocols:
        base, exclude = protocol, exclude_history
        if protocol in FULL_VARIANTS:
            base, exclude = "full", FULL_VARIANTS[protocol]
        out[protocol] = metrics_at(most_popular_ranks(data, base, split, exclude, seed, window), ks)
    return out
