"""Ranking evaluation of a job's model: HR@K / NDCG@K on `eval.split` for every protocol (full,
uni100, pop100), plus the most-popular baseline on the same candidates. Collective (under tp each
vocab shard counts items above the target; counts are all-reduced)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def evaluate(job: Any) -> dict[str, Any]:
    from hybridrec.data.batches import eval_examples
    from hybridrec.eval import ranking

    cfg, data = job.cfg.eval, job.data
    inputs, targets = eval_examples(data, cfg.split, job.cfg.data.max_seq_len)
    negatives = {p: torch.from_numpy(data.negatives[f"{p}/{cfg.split}"].astype(np.int64))
                 for p in cfg.protocols if p != "full"}
    eval_set = ranking.EvalSet(torch.from_numpy(inputs.astype(np.int64)),
                               torch.from_numpy(targets.astype(np.int64)), negatives)
    ranks = ranking.ranks(job.trainer.chunks, eval_set, list(cfg.protocols), data.num_items, cfg.batch_size,
                          exclude_history=cfg.exclude_history, mask_padding_keys=job.cfg.model.mask_padding_keys,
                          device=job.device)
    out: dict[str, Any] = {"metrics": ranking.hit_ndcg_table(ranks, cfg.k)}
    if cfg.baseline:
        from hybridrec.eval.popularity import most_popular_metrics

        out["baseline_most_popular"] = most_popular_metrics(
            data, list(cfg.protocols), cfg.split, cfg.k, cfg.exclude_history, seed=job.cfg.data.seed)
    job.telemetry.record_eval(out["metrics"])
    return out
