"""Measure the real megatron model pieces on one process: per-piece and per-stage forward+backward time
and memory, the inputs of `hybridrec.train.balance`.

Pieces of the recommender (a megatron-core GPTModel, local spec): the item + position embedding (first
stage), each transformer layer, and the final norm + tied output layer + vocab-parallel cross entropy
(last stage). With a large item vocabulary the first and last pieces are heavy. Times are the minimum of
`repeats` runs after a warm-up (interference only adds time, so the minimum is the steadiest estimate
of a piece's own cost). The clock is the device's step clock (`backend.current().step_clock()`): on a
CPU run with one torch thread the process CPU time, which does not count time the process waits for a
core on a shared machine, CUDA events on GPU, else wall time; memory is parameter bytes and the bytes autograd saves for backward
(counted with `torch.autograd.graph.saved_tensors_hooks`, parameters excluded).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from hybridrec.train import balance
from hybridrec.train.balance import ModelCosts, PieceCost


@dataclass(frozen=True)
class ProfileShape:
    vocab_size: int
    seq_len: int
    micro_batch_size: int


def transformer_config(model_cfg: Any) -> Any:
    """The model's megatron TransformerConfig on one process (tp = pp = 1), from the one factory
    the job uses (`model.sasrec.transformer_config`), so a profile measures the model that trains."""
    from hybridrec.distributed import backend
    from hybridrec.model import sasrec

    return sasrec.transformer_config(model_cfg, 1, 1, 1, backend.device().type)


def build_gpt(tconfig: Any, vocab_size: int, seq_len: int, pre_process: bool = True, post_process: bool = True):
    """This rank's GPTModel piece (the whole model when pp = 1)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    from hybridrec.distributed import backend

    model = GPTModel(config=tconfig, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=vocab_size,
                     max_sequence_length=seq_len, pre_process=pre_process, post_process=post_process,
                     parallel_output=True, share_embeddings_and_output_weights=True,
                     position_embedding_type="learned_absolute")
    return model.to(backend.device())


@contextlib.contextmanager
def single_process_megatron(seed: int = 1234, device: str = "cpu") -> Iterator[None]:
    """megatron's parallel state at tp = pp = 1, torn down afterwards. Without a process group a world
    of one (the device's backend) is created; inside a job every rank must enter (creating the groups
    is collective)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from hybridrec.distributed import backend
    from hybridrec.distributed.env import free_port

    backend.setup(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend.current().collective_backend, init_method=f"tcp://127.0.0.1:{free_port()}",
                                rank=0, world_size=1)
    try:
        ps.initialize_model_parallel(1, 1)
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed)
        yield
    finally:
        ps.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- pieces as functions
def _inputs(shape: ProfileShape, seed: int = 0) -> dict[str, torch.Tensor]:
    from hybridrec.distributed import backend

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, shape.vocab_size, (shape.micro_batch_size, shape.seq_len), generator=gen)
    labels = torch.randint(1, shape.vocab_size, (shape.micro_batch_size, shape.seq_len), generator=gen)
    causal = torch.triu(torch.ones(shape.seq_len, shape.seq_len, dtype=torch.bool), diagonal=1)
    dev = backend.device()
    return {
        "ids": ids.to(dev), "labels": labels.to(dev),
        "positions": torch.arange(shape.seq_len).unsqueeze(0).expand_as(ids).contiguous().to(dev),
        "mask": causal.view(1, 1, shape.seq_len, shape.seq_len).to(dev),
        "loss_mask": torch.ones(shape.micro_batch_size, shape.seq_len).to(dev),
    }


def _piece_fns(model: Any, inputs: dict[str, torch.Tensor]) -> list[tuple[str, Callable, list[torch.nn.Parameter]]]:
    """(name, fn(hidden) -> tensor, parameters) for embedding, each layer, output + loss."""
    out: list[tuple[str, Callable, list[torch.nn.Parameter]]] = []
    out.append(("embedding", lambda _x: model.embedding(input_ids=inputs["ids"], position_ids=inputs["positions"]),
                list(model.embedding.parameters())))
    for index, layer in enumerate(model.decoder.layers):
        out.append((f"layer{index}", _layer_fn(layer, inputs["mask"]), list(layer.parameters())))

    def output(x: torch.Tensor) -> torch.Tensor:
        x = model.decoder.final_layernorm(x)
        logits, _ = model.output_layer(x, weight=model.shared_embedding_or_output_weight())
        loss = model.compute_language_model_loss(inputs["labels"], logits)
        return (loss * inputs["loss_mask"]).sum() / inputs["loss_mask"].sum()

    # under pp > 1 the last stage holds its own copy of the tied item embedding
    out.append(("output", output, [model.shared_embedding_or_output_weight(),
                                   *model.decoder.final_layernorm.parameters()]))
    return out


def _layer_fn(layer: Any, mask: torch.Tensor) -> Callable:
    def run(x: torch.Tensor) -> torch.Tensor:
        hidden = layer(hidden_states=x, attention_mask=mask)
        return hidden[0] if isinstance(hidden, tuple) else hidden

    return run


def _hidden(shape: ProfileShape, hidden_size: int) -> torch.Tensor:
    from hybridrec.distributed import backend

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape.seq_len, shape.micro_batch_size, hidden_size, generator=gen) * 0.02
    return x.to(backend.device())


def _run_fwd_bwd(fns: list[Callable], x0: torch.Tensor | None, count_saved: bool,
                 param_ptrs: set[int]) -> tuple[float, int]:
    """Forward through `fns` then backward; returns (seconds, saved activation bytes)."""
    saved: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if count_saved and t.data_ptr() not in param_ptrs:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            saved[key] = t.untyped_storage().nbytes()
        return t

    from hybridrec.distributed import backend

    device = backend.current()
    clock = device.step_clock()
    device.synchronize()
    clock.start()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x = None if x0 is None else x0.detach().requires_grad_(True)
        for fn in fns:
            x = fn(x)
    assert x is not None
    if x.dim() == 0:
        x.backward()
    else:
        x.backward(torch.ones_like(x) * 1e-3)
    return clock.stop(), sum(saved.values())


def clock_name() -> str:
    """What the profile's times are: the device's step clock ("process CPU time", "CUDA events", ...)."""
    from hybridrec.distributed import backend

    return backend.current().step_clock().name


def _best_time(fns: list[Callable], x0: torch.Tensor | None, repeats: int, warmup: int,
                 param_ptrs: set[int], model: Any) -> tuple[float, int]:
    activation = 0
    for i in range(warmup):
        _, activation = _run_fwd_bwd(fns, x0, count_saved=(i == 0), param_ptrs=param_ptrs)
        model.zero_grad(set_to_none=True)
    times = []
    for _ in range(repeats):
        seconds, _ = _run_fwd_bwd(fns, x0, count_saved=False, param_ptrs=param_ptrs)
        model.zero_grad(set_to_none=True)
        times.append(seconds)
    return min(times), activation


def profile_pieces(model: Any, shape: ProfileShape, repeats: int = 3, warmup: int = 1) -> ModelCosts:
    """Forward + backward time and memory of every piece of a full (pp = 1) GPTModel."""
    inputs = _inputs(shape)
    x0 = _hidden(shape, model.config.hidden_size)
    ptrs = {p.data_ptr() for p in model.parameters()}
    pieces = []
    for name, fn, params in _piece_fns(model, inputs):
        start = None if name == "embedding" else x0
        seconds, activation = _best_time([fn], start, repeats, max(warmup, 1), ptrs, model)
        param_bytes = sum(p.numel() * p.element_size() for p in params)
        pieces.append(PieceCost(name, seconds, param_bytes, activation))
    return ModelCosts(pieces[0], tuple(pieces[1:-1]), pieces[-1], shape.micro_batch_size)


def measure_stage_times(model: Any, shape: ProfileShape, layers_per_stage: list[int], repeats: int = 3,
                        warmup: int = 1) -> list[float]:
    """Measured forward + backward seconds of each stage's pieces run together (one micro-batch)."""
    return measure_partitions(model, shape, [layers_per_stage], repeats, warmup)[0]


def measure_partitions(model: Any, shape: ProfileShape, partitions: list[list[int]], repeats: int = 3,
                       warmup: int = 1) -> list[list[float]]:
    """Stage times of several partitions, measured in alternating rounds so load changes hit all alike."""
    inputs = _inputs(shape)
    x0 = _hidden(shape, model.config.hidden_size)
    ptrs = {p.data_ptr() for p in model.parameters()}
    fns = [fn for _, fn, _ in _piece_fns(model, inputs)]
    embedding, layers, output = fns[0], fns[1:-1], fns[-1]
    plans = []
    for split in partitions:
        if sum(split) != len(layers):
            raise ValueError(f"partition {split} does not cover {len(layers)} layers")
        stages, start = [], 0
        for stage, count in enumerate(split):
            stage_fns = list(layers[start:start + count])
            start += count
            if stage == 0:
                stage_fns.insert(0, embedding)
            if stage == len(split) - 1:
                stage_fns.append(output)
            stages.append((stage_fns, None if stage == 0 else x0))
        plans.append(stages)
    best = [[float("inf")] * len(split) for split in partitions]
    for round_index in range(warmup + repeats):
        for p_index, stages in enumerate(plans):
            for s_index, (stage_fns, start_x) in enumerate(stages):
                seconds, _ = _run_fwd_bwd(stage_fns, start_x, count_saved=False, param_ptrs=ptrs)
                model.zero_grad(set_to_none=True)
                if round_index >= warmup:
                    best[p_index][s_index] = min(best[p_index][s_index], seconds)
    return best


def profile_model(model_cfg: Any, shape: ProfileShape, repeats: int = 3, seed: int = 1234,
                  threads: int | None = None) -> ModelCosts:
    """Build the full model on this process and profile it (a world of one)."""
    if threads:
        torch.set_num_threads(threads)
    with single_process_megatron(seed):
        model = build_gpt(transformer_config(model_cfg), shape.vocab_size, shape.seq_len)
        return profile_pieces(model, shape, repeats)


def describe(costs: ModelCosts) -> str:
    rows = [f"{p.name:>10}: {p.time_s * 1e3:8.2f} ms  params {p.param_bytes / 2**20:7.2f} MiB  "
            f"saved {p.activation_bytes / 2**20:7.2f} MiB"
            for p in (costs.embedding, *costs.layers, costs.output)]
    return f"per-piece fwd+bwd at micro-batch {costs.micro_batch_size} (pid {os.getpid()}):\n" + "\n".join(rows)


# ---------------------------------------------------------------------------- timing a training step
class _NamedTimer:
    def __init__(self, owner: StepTimers, name: str):
        self.owner, self.name = owner, name

    def start(self, barrier: bool = False) -> None:
        self.owner._started[self.name] = (time.perf_counter(), time.process_time())

    def stop(self, barrier: bool = False) -> None:
        began = self.owner._started.pop(self.name, None)
        if began is not None:
            totals, cpu = self.owner.totals, self.owner.cpu_totals
            totals[self.name] = totals.get(self.name, 0.0) + time.perf_counter() - began[0]
            cpu[self.name] = cpu.get(self.name, 0.0) + time.process_time() - began[1]


class StepTimers:
    """Wall-time accumulators callable like megatron's Timers (assign to `TransformerConfig.timers`).

    The schedules report `forward-compute`, `backward-compute` and the p2p waits (`forward-recv`,
    `backward-send-forward-recv`, ...); `compute_s()` is this stage's own work per step, `p2p_s()`
    the time spent in pipeline sends/receives (bubble waits included). `cpu_totals` holds the
    process CPU time of the same intervals (the work itself, without waiting for a core).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.cpu_totals: dict[str, float] = {}
        self._started: dict[str, tuple[float, float]] = {}

    def __call__(self, name: str, log_level: int | None = None) -> _NamedTimer:
        return _NamedTimer(self, name)

    def log(self, *args: Any, **kwargs: Any) -> None:
        """megatron calls this to print; the numbers are read with `snapshot` instead."""

    def compute_s(self) -> float:
        return self.totals.get("forward-compute", 0.0) + self.totals.get("backward-compute", 0.0)

    def p2p_s(self) -> float:
        return sum(v for k, v in self.totals.items() if "send" in k or "recv" in k)

    def compute_cpu_s(self) -> float:
        return self.cpu_totals.get("forward-compute", 0.0) + self.cpu_totals.get("backward-compute", 0.0)

    def snapshot(self, reset: bool = True) -> dict[str, float]:
        out = {**self.totals, "compute_s": self.compute_s(), "p2p_s": self.p2p_s(),
               "compute_cpu_s": self.compute_cpu_s()}
        if reset:
            self.totals, self.cpu_totals = {}, {}
        return out


@contextlib.contextmanager
def timed_collectives(totals: dict[str, float]) -> Iterator[None]:
    """Add the wall time of synchronous torch.distributed collectives (as megatron calls them: tp
    all-reduces, DDP gradient reduction, embedding/loss reductions) to totals['collective_s']."""
    import torch.distributed as dist
    from megatron.core.distributed import param_and_grad_buffer as buffers
    from megatron.core.tensor_parallel import mappings

    targets = [(dist, "all_reduce"), (dist, "broadcast"), (dist, "all_gather"),
               (mappings, "dist_all_gather_func"), (mappings, "dist_reduce_scatter_func"),
               (buffers, "dist_all_gather_func"), (buffers, "dist_reduce_scatter_func")]
    originals = [(module, name, getattr(module, name)) for module, name in targets if hasattr(module, name)]

    def wrap(fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("async_op"):
                return fn(*args, **kwargs)
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals["collective_s"] = totals.get("collective_s", 0.0) + time.perf_counter() - began

        return timed

    for module, name, fn in originals:
        setattr(module, name, wrap(fn))
    try:
        yield
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)


# ---------------------------------------------------------------------------- adaptive plan for a job
@dataclass(frozen=True)
class AdaptivePlan:
    partition: balance.Partition
    uniform: balance.Partition | None
    micro: balance.MicroBatchPlan | None
    costs: ModelCosts

    def model_config(self, model_cfg: Any) -> Any:
        """The model config with megatron's first/last stage layer counts of this plan."""
        return replace(model_cfg, **self.partition.megatron_kwargs())

    def describe(self) -> str:
        text = f"pipeline partition {list(self.partition.layers_per_stage)}: {self.partition.reason}"
        return text + (f"; {self.micro.reason}" if self.micro else "")


def _stage_models(small: ModelCosts, large: ModelCosts, split: list[int]) -> list[balance.StageModel]:
    static = [4 * sum(p.param_bytes for p in pieces) for pieces in large.stage_pieces(split)]  # param+grad+adam
    per_sample = [sum(p.activation_bytes for p in pieces) // large.micro_batch_size
                  for pieces in large.stage_pieces(split)]
    return balance.fit_stage_models(small.stage_times(split), large.stage_times(split), small.micro_batch_size,
                            large.micro_batch_size, static, per_sample)


def plan_adaptive(model_cfg: Any, parallel_cfg: Any, layout: Any, vocab_size: int, seq_len: int,
                  seed: int = 1234) -> AdaptivePlan:
    """Profile on rank 0 (a tp = pp = 1 copy of the model), choose the split (and, with
    `parallel.dynamic_micro_batch`, the micro-batch size), and give every rank the same plan.

    Call on every rank after `init_process_group` and before megatron's groups for the real layout
    exist (it creates and destroys tp = pp = 1 groups to build the profiling copy).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from hybridrec.distributed import backend

    plan: list[AdaptivePlan | None] = [None]
    distributed = dist.is_initialized()
    with single_process_megatron(seed, backend.device().type):
        if not distributed or dist.get_rank() == 0:
            model = build_gpt(transformer_config(model_cfg), vocab_size, seq_len)
            mbs = layout.micro_batch_size
            costs = profile_pieces(model, ProfileShape(vocab_size, seq_len, mbs), parallel_cfg.profile_repeats)
            partition = balance.balanced_partition(costs, layout.pp, layout.vpp)
            uniform = balance.uniform_partition(costs, layout.pp) if model_cfg.num_layers % layout.pp == 0 else None
            micro = None
            if parallel_cfg.dynamic_micro_batch:
                other = max(1, mbs // 2) if mbs > 1 else 2
                other_costs = profile_pieces(model, ProfileShape(vocab_size, seq_len, other),
                                             parallel_cfg.profile_repeats)
                small, large = (other_costs, costs) if other < mbs else (costs, other_costs)
                stages = _stage_models(small, large, list(partition.layers_per_stage))
                micro = balance.choose_micro_batches(stages, layout.global_batch_size // layout.dp, layout.vpp,
                                                     int(parallel_cfg.memory_budget_mb * 2**20))
            plan[0] = AdaptivePlan(partition, uniform, micro, costs)
    if distributed:
        dist.broadcast_object_list(plan, src=0)
    assert plan[0] is not None and not ps.model_parallel_is_initialized()
    return plan[0]


def stage_times_across_pipeline(local_seconds: float) -> list[float]:
    """Every pipeline stage's measured seconds (e.g. `StepTimers.compute_s()`), in stage order,
    for `RebalanceMonitor.observe` (collective over megatron's pipeline group)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    group = ps.get_pipeline_model_parallel_group()
    out = [0.0] * dist.get_world_size(group)
    dist.all_gather_object(out, float(local_seconds), group=group)
    return out
