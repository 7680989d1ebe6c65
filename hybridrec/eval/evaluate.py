"""One split's evaluation for the job and for validation during training: which protocols are reported,
the users' left-padded histories and targets (optionally a fixed subset of users), the model's HR/NDCG
through `eval.ranking` (collective, every layout) and the most-popular baseline on the same protocols.

Both ranking conventions side by side (issue 17): with `eval.both_conventions` a full-ranking run also
reports the other convention as its own protocol, `full_excl` (the input window of `data.max_seq_len`
items excluded from the candidates, as most published SASRec numbers) when `full` keeps the history
(`eval.exclude_history=false`, the default), or `full_incl` when `full` excludes it. The baseline
excludes the same window (`popularity.most_popular_ranks(window=max_len)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from hybridrec.data.processed import ProcessedData
    from hybridrec.eval.ranking import EvalSet


def reported_protocols(protocols: Sequence[str], exclude_history: bool, both_conventions: bool) -> list[str]:
    """The configured protocols plus, right after `full`, the other full-ranking convention."""
    out = list(protocols)
    other = "full_incl" if exclude_history else "full_excl"
    if both_conventions and "full" in out and other not in out:
        out.insert(out.index("full") + 1, other)
    return out


def fixed_users(num_users: int, max_users: int, seed: int) -> np.ndarray | None:
    """A sorted random subset of `max_users` users fixed by `seed` (None = every user)."""
    if max_users <= 0 or max_users >= num_users:
        return None
    return np.sort(np.random.default_rng([seed, 0x5A1D]).choice(num_users, size=max_users, replace=False))


def build_eval_set(data: ProcessedData, split: str, max_len: int, protocols: Sequence[str],
                   users: np.ndarray | None = None) -> EvalSet:
    """Histories, targets and the stored negatives of the sampled protocols, for `users` (None = all)."""
    from hybridrec.data.batches import eval_examples
    from hybridrec.eval.ranking import FULL_VARIANTS, EvalSet

    inputs, targets = eval_examples(data, split, max_len)
    rows = slice(None) if users is None else users
    negatives = {p: torch.from_numpy(data.negatives[f"{p}/{split}"][rows].astype(np.int64))
                 for p in protocols if p != "full" and p not in FULL_VARIANTS}
    return EvalSet(torch.from_numpy(inputs[rows].astype(np.int64)), torch.from_numpy(targets[rows].astype(np.int64)),
                   negatives)


def model_metrics(chunks: Sequence[torch.nn.Module], eval_set: EvalSet, protocols: Sequence[str], num_items: int,
                  ks: Sequence[int], batch_size: int, *, exclude_history: bool, mask_padding_keys: bool,
                  device: torch.device | None = None, table: Any = None) -> dict[str, dict[str, float]]:
    """{protocol: {"HR@k", "NDCG@k"}} of the model; collective (every rank calls it, same result).
    `table`: the job's 2D item table (`embedding.enabled`): each shard counts its items above the target."""
    from hybridrec.eval import ranking

    if table is None:
        ranks = ranking.ranks(chunks, eval_set, list(protocols), num_items, batch_size,
                              exclude_history=exclude_history, mask_padding_keys=mask_padding_keys, device=device)
    else:
        ranks = _ranks_2d(chunks, table, eval_set, protocols, batch_size, exclude_history, mask_padding_keys, device)
    return ranking.hit_ndcg_table(ranks, ks)


def _ranks_2d(chunks: Sequence[torch.nn.Module], table: Any, eval_set: EvalSet, protocols: Sequence[str],
              batch_size: int, exclude_history: bool, mask_padding_keys: bool,
              device: torch.device | None) -> dict[str, np.ndarray]:
    """Ranks from the 2D table's per-shard counts; the other full-ranking convention is its own pass
    (the table excludes the history for all protocols of a pass or for none)."""
    from hybridrec.embedding.trainer_eval import ranks_2d
    from hybridrec.eval.ranking import FULL_VARIANTS

    main = [p for p in protocols if p not in FULL_VARIANTS]
    out = ranks_2d(chunks[0], table, eval_set, main, batch_size, exclude_history=exclude_history,
                   mask_padding_keys=mask_padding_keys, device=device) if main else {}
    for variant in (p for p in protocols if p in FULL_VARIANTS):
        out[variant] = ranks_2d(chunks[0], table, eval_set, ["full"], batch_size, exclude_history=FULL_VARIANTS[variant],
                                mask_padding_keys=mask_padding_keys, device=device)["full"]
    return {p: out[p] for p in protocols}


def evaluate(chunks: Sequence[torch.nn.Module], data: ProcessedData, cfg: Any, device: torch.device | None = None,
             table: Any = None) -> dict[str, Any]:
    """The job's final evaluation (`cfg`: RunConfig): {"metrics": .., "baseline_most_popular": ..
    (when eval.baseline)} on `cfg.eval.split`, every protocol of `reported_protocols`."""
    from hybridrec.eval.popularity import most_popular_metrics

    ev, max_len = cfg.eval, cfg.data.max_seq_len
    protocols = reported_protocols(ev.protocols, ev.exclude_history, getattr(ev, "both_conventions", True))
    eval_set = build_eval_set(data, ev.split, max_len, protocols)
    out: dict[str, Any] = {"metrics": model_metrics(
        chunks, eval_set, protocols, data.num_items, ev.k, ev.batch_size, exclude_history=ev.exclude_history,
        mask_padding_keys=cfg.model.mask_padding_keys, device=device, table=table)}
    if ev.baseline:
        out["baseline_most_popular"] = most_popular_metrics(data, protocols, ev.split, ev.k, ev.exclude_history,
                                                            seed=cfg.data.seed, window=max_len)
    return out
