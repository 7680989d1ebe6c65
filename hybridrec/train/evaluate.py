"""Ranking evaluation of a job's model: HR@K / NDCG@K on `eval.split` for every protocol (full and
its other convention full_excl / full_incl, uni100, pop100), plus the most-popular baseline on the same
candidates; with validation, from the best-validation weights. Collective (under tp each
vocab shard counts items above the target; counts are all-reduced)."""

from __future__ import annotations

import contextlib
from typing import Any


def evaluate(job: Any) -> dict[str, Any]:
    """The test metrics (`hybridrec.eval.evaluate`: both full-ranking conventions side by side) from the
    best-validation weights when validation ran with `train.keep_best` (then also "metrics_last_step",
    the last weights' metrics, when the best step is not the last)."""
    from hybridrec.eval.evaluate import evaluate as evaluate_split

    hook = job.validation
    context = hook.best_weights(job.trainer) if hook is not None and hook.keep_best else contextlib.nullcontext(False)
    with context as best:
        out = evaluate_split(job.trainer.chunks, job.data, job.cfg, job.device, job.table)
    if best and hook.stopping.best_step != job.trainer.step:
        out["metrics_last_step"] = evaluate_split(job.trainer.chunks, job.data, job.cfg, job.device,
                                                 job.table)["metrics"]
    if hook is not None:
        out["validation"] = hook.record(job.trainer.step)
    job.telemetry.record_eval(out["metrics"])
    return out
