"""Validation during training, early stopping and best-model selection (issue 17), as a step hook.

- `EarlyStopping` (pure): feeds on (step, value) pairs of a higher-is-better metric; keeps the best value
  and step, counts validations without an improvement larger than `min_delta`, and says why to stop
  once `patience` of them have passed (patience 0 = never).
- `ValidationHook`: every `train.eval_every` steps (and at the last step) ranks the valid split with the
  model as it is (`hybridrec.eval.evaluate`: full ranking, both conventions, collective under every tp x
  pp x dp layout, so every rank sees the same numbers and takes the same decision), appends the point to
  the curve, keeps a copy of this rank's weights when the selection metric improved (in memory, one
  model-sized copy per rank, reused), and returns a stop reason when early stopping fires.
  `best_weights(trainer)` swaps the best weights in for the test evaluation and back afterwards (the
  checkpoint then stays the resumable last state); `restore_best(trainer)` installs them for good.
  `record()` is what summary.json stores under "validation"; `state_dict()` / `load_state_dict()` carry
  curve, stopping state and best weights through a checkpoint's per-rank extra state.

The loop calls, per step: `reason = hook.after_step(step, trainer)`; `if reason: break` (in the job:
`hook.step_hook(say)` in `hybridrec.train.hooks.default_hooks`, built by `ValidationHook.for_run`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hybridrec.data.processed import ProcessedData

Metrics = dict[str, dict[str, float]]

TABLE_ROWS = "item_table.rows"  # the 2D table's shard among the best weights (not a megatron name)


@dataclass
class EarlyStopping:
    """Patience on a higher-is-better metric. `observe` returns True when the value is a new best."""

    patience: int = 0
    min_delta: float = 0.0
    best_value: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def observe(self, step: int, value: float) -> bool:
        if self.best_value is None or value > self.best_value + self.min_delta:
            self.best_value, self.best_step, self.since_best = float(value), int(step), 0
            return True
        self.since_best += 1
        return False

    def stop_reason(self, metric: str = "metric") -> str | None:
        """Why to stop now, or None (never with patience 0)."""
        if self.patience <= 0 or self.since_best < self.patience:
            return None
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (f"early stopping: {metric} did not improve{delta} in {self.since_best} validations "
                f"(best {self.best_value:.6g} at step {self.best_step})")

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def select(metrics: Metrics, metric: str) -> float:
    """`metrics["full"]["NDCG@10"]` for metric "full/NDCG@10"."""
    protocol, name = metric.split("/", 1)
    return float(metrics[protocol][name])


class ValidationHook:
    """Periodic validation + early stopping + best weights; see the module doc."""

    def __init__(self, evaluate: Callable[[Sequence[torch.nn.Module]], Metrics], *, eval_every: int,
                 total_steps: int, select_metric: str = "full/NDCG@10", patience: int = 0, min_delta: float = 0.0,
                 keep_best: bool = True, clock: Callable[[], float] = time.perf_counter, table: Any = None):
        if eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {eval_every}")
        self.evaluate, self.eval_every, self.total_steps = evaluate, eval_every, total_steps
        self.select_metric, self.keep_best, self.clock = select_metric, keep_best, clock
        self.table = table  # the 2D item table (embedding.enabled): its rows are part of the best weights
        self.stopping = EarlyStopping(patience, min_delta)
        self.curve: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.stopped_step: int | None = None
        self.seconds = 0.0
        self._best: list[dict[str, torch.Tensor]] | None = None
        self.lost_best: str | None = None

    @classmethod
    def for_run(cls, cfg: Any, data: ProcessedData, device: torch.device | None = None,
                table: Any = None) -> ValidationHook | None:
        """The hook for a job (`cfg`: RunConfig): the valid split of `data` (or `train.valid_max_users`
        of its users, fixed by data.seed), `train.valid_protocols` with both conventions; None when
        `train.eval_every` is 0."""
        from hybridrec.eval import evaluate as ev

        train = cfg.train
        if train.eval_every <= 0:
            return None
        protocols = ev.reported_protocols(train.valid_protocols, cfg.eval.exclude_history,
                                          getattr(cfg.eval, "both_conventions", True))
        users = ev.fixed_users(data.num_users, train.valid_max_users, cfg.data.seed)
        eval_set = ev.build_eval_set(data, "valid", cfg.data.max_seq_len, protocols, users)

        def evaluate(chunks: Sequence[torch.nn.Module]) -> Metrics:
            return ev.model_metrics(chunks, eval_set, protocols, data.num_items, cfg.eval.k, cfg.eval.batch_size,
                                    exclude_history=cfg.eval.exclude_history,
                                    mask_padding_keys=cfg.model.mask_padding_keys, device=device, table=table)

        return cls(evaluate, eval_every=train.eval_every, total_steps=train.steps, select_metric=train.select_metric,
                   patience=train.patience, min_delta=train.min_delta, keep_best=train.keep_best, table=table)

    # -- the step hook ------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def after_step(self, step: int, trainer: Any) -> str | None:
        """Validate when due; returns a stop reason (early stopping) or None. Collective when due."""
        if not self.due(step) or (self.curve and self.curve[-1]["step"] == step):
            return None
        start = self.clock()
        metrics = self.evaluate(trainer.chunks)
        value = select(metrics, self.select_metric)
        improved = self.stopping.observe(step, value)
        if improved and self.keep_best:
            self._snapshot(trainer)
        seconds = self.clock() - start
        self.seconds += seconds
        self.curve.append({"step": step, "metrics": metrics, "value": value, "best": improved, "seconds": seconds})
        reason = self.stopping.stop_reason(self.select_metric)
        if reason is not None:
            self.stopped, self.stopped_step = reason, step
        return reason

    def step_hook(self, say: Callable[[str], None] = print) -> _JobStepHook:
        """This hook in the job loop's protocol (`hybridrec.train.hooks.StepHook`), logging each
        validation through `say` (rank 0's printer)."""
        return _JobStepHook(self, say)

    def describe_last(self) -> str:
        point = self.curve[-1]
        cells = "  ".join(f"{protocol} {name} {value:.4f}" for protocol, row in point["metrics"].items()
                          for name, value in row.items())
        best = f"best {self.stopping.best_value:.4f} at step {self.stopping.best_step}"
        return f"valid  step {point['step']:6d}  {cells}  ({best}; {point['seconds']:.2f}s)"

    # -- best weights -------------------------------------------------------------------------------
    def _params(self, trainer: Any) -> list[dict[str, torch.Tensor]]:
        """This rank's parameters per chunk by global name (local name where the model has no
        `hybridrec_param_infos`), so a model rebuilt with another pipeline split never matches; with the
        2D table its shard of item rows joins the first chunk (the table is outside the chunks)."""
        from hybridrec.model.sasrec import unwrap

        out = []
        for chunk in trainer.chunks:
            model = unwrap(chunk)
            names = {info.local_name: info.global_name for info in getattr(model, "hybridrec_param_infos", [])}
            out.append({names.get(name, name): p for name, p in model.named_parameters()})
        if self.table is not None:
            out[0][TABLE_ROWS] = self.table.weight
        return out

    def _fits(self, live: list[dict[str, torch.Tensor]]) -> bool:
        best = self._best
        return best is not None and len(live) == len(best) and all(
            kept.keys() == chunk.keys() and all(kept[n].shape == p.shape for n, p in chunk.items())
            for kept, chunk in zip(best, live, strict=False))

    def _snapshot(self, trainer: Any) -> None:
        with torch.no_grad():
            live = self._params(trainer)
            if not self._fits(live):  # first snapshot, or the model was rebuilt with another split
                self._best = [{name: p.detach().clone() for name, p in chunk.items()} for chunk in live]
                self.lost_best = None
                return
            for kept, chunk in zip(self._best, live, strict=True):
                for name, p in chunk.items():
                    kept[name].copy_(p)

    @property
    def has_best(self) -> bool:
        return self._best is not None

    def _usable(self, trainer: Any) -> bool:
        """Best weights exist and fit this rank's model (a live re-partition moves layers between stages:
        then this rank's copy no longer matches and the test uses the last weights)."""
        if self._best is None:
            return False
        if not self._fits(self._params(trainer)):
            self._best, self.lost_best = None, "the pipeline was re-partitioned after the best step"
            return False
        return True

    def restore_best(self, trainer: Any) -> bool:
        """Copy the best-validation weights into the trainer's model (False when there are none)."""
        if not self._usable(trainer):
            return False
        with torch.no_grad():
            for kept, chunk in zip(self._best, self._params(trainer), strict=True):
                for name, p in chunk.items():
                    p.copy_(kept[name])
        return True

    @contextlib.contextmanager
    def best_weights(self, trainer: Any) -> Iterator[bool]:
        """Within the block the model holds the best-validation weights (yields whether it does); the
        last weights come back afterwards."""
        if not self._usable(trainer):
            yield False
            return
        with torch.no_grad():
            last = [{name: p.detach().clone() for name, p in chunk.items()} for chunk in self._params(trainer)]
        self.restore_best(trainer)
        try:
            yield True
        finally:
            with torch.no_grad():
                for kept, chunk in zip(last, self._params(trainer), strict=True):
                    for name, p in chunk.items():
                        p.copy_(kept[name])

    # -- reporting and resume -----------------------------------------------------------------------
    def record(self, final_step: int | None = None) -> dict[str, Any]:
        """summary.json's "validation": curve, best step/value/metrics, why training stopped."""
        best = next((p for p in self.curve if p["step"] == self.stopping.best_step), None)
        stopped = self.stopped
        if stopped is None:
            stopped = f"train.steps={self.total_steps} reached" if final_step in (None, self.total_steps) \
                else f"stopped at step {final_step} by the loop"
        return {"every": self.eval_every, "select_metric": self.select_metric, "patience": self.stopping.patience,
                "curve": self.curve, "best_step": self.stopping.best_step, "best_value": self.stopping.best_value,
                "best_metrics": None if best is None else best["metrics"], "stopped": stopped,
                "early_stopped": self.stopped is not None,
                "stopped_step": self.stopped_step if self.stopped is not None else final_step,
                "seconds": self.seconds, "test_weights": "best" if self.keep_best and self.has_best else "last",
                "lost_best": self.lost_best}

    def state_dict(self) -> dict[str, Any]:
        """This rank's state (curve, stopping, best weights as CPU tensors) for a checkpoint's extra."""
        best = None if self._best is None else [{k: v.cpu() for k, v in c.items()} for c in self._best]
        return {"curve": self.curve, "stopping": self.stopping.state_dict(), "best": best, "seconds": self.seconds,
                "stopped": self.stopped, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        self.curve = list(state["curve"])
        self.stopping.load_state_dict(state["stopping"])
        self.seconds, self.stopped, self.stopped_step = state["seconds"], state["stopped"], state["stopped_step"]
        best = state.get("best")
        self._best = None if best is None else [{k: v.to(device or v.device) for k, v in c.items()} for c in best]


class _JobStepHook:
    """`ValidationHook` as a job loop hook: `after_step(job, result, metrics)`; adds the selection
    metric to the step's metrics row when it validated."""

    def __init__(self, hook: ValidationHook, say: Callable[[str], None]):
        self.hook, self.say = hook, say

    def after_step(self, job: Any, result: Any, metrics: dict[str, Any]) -> str | None:
        validated = len(self.hook.curve)
        reason = self.hook.after_step(result.step, job.trainer)
        if len(self.hook.curve) > validated:
            metrics[f"valid/{self.hook.select_metric}"] = self.hook.curve[-1]["value"]
            self.say(self.hook.describe_last())
        if reason:
            self.say(f"step {result.step}: {reason}")
        return reason
