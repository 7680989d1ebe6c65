"""Adaptive pipeline balancing, pure logic: stage boundaries, re-balance trigger, micro-batch choice.

Inputs are measured piece costs (`PieceCost`, from `hybridrec.train.profile`): the embedding (first
stage only), each transformer layer, and the output layer + loss (last stage only). In a recommender
with a large item vocabulary the first and last pieces dominate, so an even split of the transformer
layers leaves the end stages slow.

- `balanced_partition` chooses layers per stage minimising the slowest stage. By default it keeps to
  what megatron-core 0.16.1's TransformerConfig can build: `num_layers_in_first_pipeline_stage` /
  `num_layers_in_last_pipeline_stage` with the middle stages sharing the rest evenly, >= 1 layer per
  stage, and every stage's count divisible by vpp (`Partition.megatron_kwargs()` gives the fields).
  `representable="any"` searches every contiguous split (megatron's `pipeline_model_parallel_layout`).
- `RebalanceMonitor` watches measured stage times and says when they drift past a threshold from the
  plan; `rescale_costs` folds the measured times back into the piece costs for the next plan.
- `choose_micro_batches` picks the micro-batch size/count minimising the predicted 1F1B step time
  (m + p - 1) * slowest stage, under a per-stage memory budget.
Every decision carries a `reason` string for the log.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from hybridrec.errors import ConfigError


@dataclass(frozen=True)
class PieceCost:
    """One measured piece of the model at the profiled micro-batch size."""

    name: str  # "embedding", "layer3", "output"
    time_s: float  # forward + backward seconds per micro-batch
    param_bytes: int = 0
    # bytes autograd keeps for backward per micro-batch (activations in flight under 1F1B)
    activation_bytes: int = 0


@dataclass(frozen=True)
class ModelCosts:
    """Measured costs of a whole model: embedding, transformer layers in order, output + loss."""

    embedding: PieceCost
    layers: tuple[PieceCost, ...]
    output: PieceCost
    micro_batch_size: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def stage_pieces(self, layers_per_stage: list[int]) -> list[list[PieceCost]]:
        if sum(layers_per_stage) != self.num_layers:
            raise ValueError(f"partition {layers_per_stage} does not cover {self.num_layers} layers")
        out, start = [], 0
        for stage, count in enumerate(layers_per_stage):
            pieces = list(self.layers[start:start + count])
            start += count
            if stage == 0:
                pieces.insert(0, self.embedding)
            if stage == len(layers_per_stage) - 1:
                pieces.append(self.output)
            out.append(pieces)
        return out

    def stage_times(self, layers_per_stage: list[int]) -> list[float]:
        return [sum(p.time_s for p in pieces) for pieces in self.stage_pieces(layers_per_stage)]


@dataclass(frozen=True)
class Partition:
    layers_per_stage: tuple[int, ...]
    stage_times: tuple[float, ...]  # predicted (or measured) seconds per micro-batch, fwd + bwd
    reason: str = ""

    @property
    def max_over_mean(self) -> float:
        return imbalance(list(self.stage_times))

    @property
    def slowest(self) -> float:
        return max(self.stage_times)

    def megatron_kwargs(self) -> dict[str, int | None]:
        """TransformerConfig fields for this split (None, None = megatron's even split)."""
        counts = list(self.layers_per_stage)
        pp = len(counts)
        if pp == 1 or len(set(counts)) == 1:
            return {"num_layers_in_first_pipeline_stage": None, "num_layers_in_last_pipeline_stage": None}
        middle = counts[1:-1]
        if len(set(middle)) > 1:
            raise ValueError(f"{counts} needs pipeline_model_parallel_layout (middle stages differ)")
        return {"num_layers_in_first_pipeline_stage": counts[0], "num_layers_in_last_pipeline_stage": counts[-1]}

    def layout_string(self) -> str:
        """megatron's pipeline_model_parallel_layout string, e.g. 'Ettt|tL' (any split; vpp = 1)."""
        stages = []
        for stage, count in enumerate(self.layers_per_stage):
            head = "E" if stage == 0 else ""
            tail = "L" if stage == len(self.layers_per_stage) - 1 else ""
            stages.append(head + "t" * count + tail)
        return "|".join(stages)


def imbalance(stage_times: list[float]) -> float:
    """max / mean of stage times: 1.0 is perfectly balanced."""
    mean = sum(stage_times) / len(stage_times)
    return max(stage_times) / mean if mean > 0 else 1.0


def uniform_layers(num_layers: int, pp: int) -> list[int]:
    """megatron's default even split (num_layers % pp == 0 is required there)."""
    if num_layers % pp:
        raise ConfigError("model.num_layers", num_layers, f"a multiple of parallel.pp={pp} for an even split")
    return [num_layers // pp] * pp


def candidate_splits(num_layers: int, pp: int, vpp: int = 1, representable: str = "megatron",
                     min_layers: int = 1) -> list[list[int]]:
    """Every split megatron can build: first/last free, middle stages equal ('megatron'), or any ('any')."""
    if representable not in ("megatron", "any"):
        raise ValueError(f"representable must be 'megatron' or 'any', got {representable!r}")
    if pp == 1:
        return [[num_layers]]
    out: list[list[int]] = []
    if representable == "any":
        if math.comb(num_layers + pp - 1, pp - 1) > 200_000:
            raise ValueError(f"too many splits of {num_layers} layers over {pp} stages to enumerate")
        out = [c for c in _compositions(num_layers, pp) if min(c) >= min_layers]
    else:
        for first in range(max(1, min_layers), num_layers + 1):
            for last in range(max(1, min_layers), num_layers - first + 1):
                rest, middle = num_layers - first - last, pp - 2
                if middle == 0 and rest == 0:
                    out.append([first, last])
                elif middle > 0 and rest > 0 and rest % middle == 0 and rest // middle >= min_layers:
                    out.append([first, *([rest // middle] * middle), last])
    return [c for c in out if all(n % vpp == 0 for n in c)]


def _compositions(total: int, parts: int) -> list[list[int]]:
    """All ways to write `total` as `parts` ordered non-negative counts (small pipelines only)."""
    if parts == 1:
        return [[total]]
    return [[k, *rest] for k in range(total + 1) for rest in _compositions(total - k, parts - 1)]


def balanced_partition(costs: ModelCosts, pp: int, vpp: int = 1, representable: str = "megatron",
                       min_layers: int = 1) -> Partition:
    """The split with the smallest slowest stage (ties: smaller max/mean, then closer to even)."""
    splits = candidate_splits(costs.num_layers, pp, vpp, representable, min_layers)
    if not splits:
        raise ConfigError(
            "model.num_layers", costs.num_layers,
            f"enough layers for pp={pp} stages with >= {min_layers} layer(s) each, divisible by vpp={vpp}",
        )
    even = costs.num_layers / pp

    def key(split: list[int]) -> tuple[float, float, float]:
        times = costs.stage_times(split)
        return (max(times), imbalance(times), sum(abs(n - even) for n in split))

    best = min(splits, key=key)
    times = costs.stage_times(best)
    reason = _explain(costs, best, times, pp, len(splits))
    return Partition(tuple(best), tuple(times), reason)


def uniform_partition(costs: ModelCosts, pp: int) -> Partition:
    split = uniform_layers(costs.num_layers, pp)
    times = costs.stage_times(split)
    return Partition(tuple(split), tuple(times), f"even split of {costs.num_layers} layers over {pp} stages")


def _explain(costs: ModelCosts, best: list[int], times: list[float], pp: int, searched: int) -> str:
    mean_layer = statistics.fmean(p.time_s for p in costs.layers) if costs.layers else 0.0
    parts = [
        f"embedding {costs.embedding.time_s * 1e3:.2f} ms = {costs.embedding.time_s / max(mean_layer, 1e-12):.1f} layers",
        f"output+loss {costs.output.time_s * 1e3:.2f} ms = {costs.output.time_s / max(mean_layer, 1e-12):.1f} layers",
        f"layer {mean_layer * 1e3:.2f} ms",
    ]
    text = (f"chose layers/stage {best} of {searched} candidates: stage ms "
            f"{[round(t * 1e3, 2) for t in times]} (max/mean {imbalance(times):.3f}); " + ", ".join(parts))
    if costs.num_layers % pp == 0:
        even = costs.stage_times(uniform_layers(costs.num_layers, pp))
        text += (f"; even split {uniform_layers(costs.num_layers, pp)} would be "
                 f"{[round(t * 1e3, 2) for t in even]} (max/mean {imbalance(even):.3f}, "
                 f"slowest {max(even) / max(times):.2f}x ours)")
    return text


# ---------------------------------------------------------------------------- drift and re-balancing
@dataclass
class RebalanceMonitor:
    """Feed measured per-stage compute times each step; `check()` says when to re-balance.

    Trigger: over the last `window` steps, the median measured max/mean exceeds the plan's predicted
    max/mean by more than `threshold` (relative), after at least `window` observations and at most
    once per `cooldown` steps.
    """

    planned: Partition
    threshold: float = 0.15
    window: int = 5
    cooldown: int = 10
    _history: deque = field(default_factory=deque)
    _steps_since: int = 0

    def observe(self, measured_stage_times: list[float]) -> None:
        if len(measured_stage_times) != len(self.planned.stage_times):
            raise ValueError("one measured time per pipeline stage is needed")
        self._history.append(list(measured_stage_times))
        while len(self._history) > self.window:
            self._history.popleft()
        self._steps_since += 1

    def measured(self) -> list[float]:
        """Per-stage median over the window."""
        return [statistics.median(col) for col in zip(*self._history, strict=True)]

    def check(self) -> tuple[bool, str]:
        if len(self._history) < self.window:
            return False, f"collecting ({len(self._history)}/{self.window} steps)"
        if self._steps_since < self.cooldown:
            return False, f"cooldown ({self._steps_since}/{self.cooldown} steps since the last plan)"
        measured = imbalance(self.measured())
        planned = self.planned.max_over_mean
        drift = measured / planned - 1.0
        if drift > self.threshold:
            return True, (f"measured max/mean {measured:.3f} vs planned {planned:.3f}: drift {drift:+.1%} "
                          f"> threshold {self.threshold:.0%}")
        return False, f"drift {drift:+.1%} within threshold {self.threshold:.0%}"

    def replan(self, costs: ModelCosts, vpp: int = 1, representable: str = "megatron") -> tuple[Partition, ModelCosts]:
        """New partition from costs rescaled by the measured stage times; resets the window."""
        scaled = rescale_costs(costs, list(self.planned.layers_per_stage), self.measured())
        plan = balanced_partition(scaled, len(self.planned.stage_times), vpp, representable)
        self.planned = plan
        self._history.clear()
        self._steps_since = 0
        return plan, scaled


def rescale_costs(costs: ModelCosts, layers_per_stage: list[int], measured: list[float]) -> ModelCosts:
    """Scale every piece on stage s by measured_s / predicted_s (a slower device or a slower layer mix)."""
    predicted = costs.stage_times(layers_per_stage)
    factors = [m / p if p > 0 else 1.0 for m, p in zip(measured, predicted, strict=True)]
    layers, start = [], 0
    for stage, count in enumerate(layers_per_stage):
        for piece in costs.layers[start:start + count]:
            layers.append(_scaled(piece, factors[stage]))
        start += count
    return ModelCosts(_scaled(costs.embedding, factors[0]), tuple(layers), _scaled(costs.output, factors[-1]),
                      costs.micro_batch_size)


def _scaled(piece: PieceCost, factor: float) -> PieceCost:
    return PieceCost(piece.name, piece.time_s * factor, piece.param_bytes, piece.activation_bytes)


# ---------------------------------------------------------------------------- dynamic micro-batching
@dataclass(frozen=True)
class StageModel:
    """Per-micro-batch time of a stage as fixed + per_sample * b, and its memory."""

    fixed_s: float
    per_sample_s: float
    static_bytes: int  # parameters + gradients + optimizer state
    activation_bytes_per_sample: int

    def time(self, micro_batch_size: int) -> float:
        return self.fixed_s + self.per_sample_s * micro_batch_size


def fit_stage_models(small: list[float], large: list[float], b_small: int, b_large: int,
                     static_bytes: list[int], activation_bytes_per_sample: list[int]) -> list[StageModel]:
    """Linear time models per stage from stage times measured at two micro-batch sizes."""
    if b_large <= b_small:
        raise ValueError("need two different micro-batch sizes, the second larger")
    out = []
    for s, (t1, t2) in enumerate(zip(small, large, strict=True)):
        slope = max((t2 - t1) / (b_large - b_small), 0.0)
        fixed = max(t1 - slope * b_small, 0.0)
        out.append(StageModel(fixed, slope, static_bytes[s], activation_bytes_per_sample[s]))
    return out


@dataclass(frozen=True)
class MicroBatchPlan:
    micro_batch_size: int
    num_micro_batches: int
    step_time_s: float  # predicted: (m + p - 1) * slowest stage per micro-batch
    bubble: float  # (p - 1) / (m + p - 1)
    peak_bytes: tuple[int, ...]  # per stage
    reason: str


def predicted_peak_bytes(stage: StageModel, stage_index: int, pp: int, num_micro: int, mbs: int) -> int:
    """1F1B keeps min(pp - stage, m) micro-batches' activations alive on a stage."""
    in_flight = min(pp - stage_index, num_micro)
    return stage.static_bytes + in_flight * stage.activation_bytes_per_sample * mbs


def choose_micro_batches(stages: list[StageModel], batch_per_dp_rank: int, vpp: int = 1,
                         memory_budget_bytes: int = 0) -> MicroBatchPlan:
    """The micro-batch size (a divisor of the per-rank batch) with the shortest predicted step."""
    pp = len(stages)
    options = []
    rejected: list[str] = []
    for mbs in range(1, batch_per_dp_rank + 1):
        if batch_per_dp_rank % mbs:
            continue
        m = batch_per_dp_rank // mbs
        if vpp > 1 and m % pp:
            continue
        slowest = max(s.time(mbs) for s in stages)
        step = (vpp * m + pp - 1) * slowest / vpp
        peaks = tuple(predicted_peak_bytes(s, i, pp, m, mbs) for i, s in enumerate(stages))
        if memory_budget_bytes and max(peaks) > memory_budget_bytes:
            rejected.append(f"mbs={mbs} ({max(peaks) / 2**20:.1f} MiB)")
            continue
        options.append((step, mbs, m, peaks))
    if not options:
        raise ConfigError("parallel.memory_budget_mb", memory_budget_bytes / 2**20,
                          f"room for at least one micro-batch size (over budget: {', '.join(rejected)})")
    step, mbs, m, peaks = min(options, key=lambda o: (o[0], -o[1]))
    bubble = (pp - 1) / (vpp * m + pp - 1)
    reason = (f"micro-batch {mbs} x {m}: predicted step {step * 1e3:.1f} ms = ({m} + {pp} - 1) x slowest stage "
              f"{max(s.time(mbs) for s in stages) * 1e3:.2f} ms; bubble (p-1)/(m+p-1) = {bubble:.3f}; "
              f"peak {max(peaks) / 2**20:.1f} MiB")
    if rejected:
        reason += f"; over the memory budget: {', '.join(rejected)}"
    return MicroBatchPlan(mbs, m, step, bubble, peaks, reason)
