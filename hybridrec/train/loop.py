"""One training step of the recommender with megatron-core's pipeline schedules.

`Trainer` wraps this rank's model chunks in megatron's DistributedDataParallel, builds megatron's
optimizer (Adam with decoupled weight decay, biases and 1-D weights not decayed; optional distributed
optimizer; gradient clipping) with megatron's OptimizerParamScheduler (linear warmup, then constant /
linear / cosine / inverse-square-root decay; the learning rate of update t is a pure function of t, so a
resumed or re-partitioned trainer continues the same schedule), and runs
`get_forward_backward_func()` (no pipelining, 1F1B, or interleaved 1F1B for vpp > 1) over the
micro-batches of this rank's share of the global batch.

The loss is normalised by the number of real (unmasked) labels in the whole global batch, so the
gradient is the same for every tp x pp x dp layout and every micro-batch split: each micro-batch
returns sum(token losses) * num_microbatches * dp / global_tokens; the schedule divides by
num_microbatches and DDP averages over dp.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from hybridrec.config.train import TrainConfig
from hybridrec.model.sasrec import attention_mask, position_ids


class LayoutLike(Protocol):
    tp: int
    pp: int
    vpp: int
    dp: int
    micro_batch_size: int
    num_micro_batches: int


@dataclass(frozen=True)
class Batch:
    """Rows of training examples: inputs/labels int64 (n, seq), mask float (n, seq)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.inputs[start:stop], self.labels[start:stop], self.mask[start:stop])

    def to(self, device: torch.device) -> Batch:
        return Batch(self.inputs.to(device), self.labels.to(device), self.mask.to(device))


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float  # mean cross entropy per real label over the global batch (same value on every rank)
    grad_norm: float | None
    update_successful: bool
    seconds: float
    samples: int  # global batch size
    lr: float | None = None  # learning rate of this update


def micro_batches(batch: Batch, num_microbatches: int) -> list[Batch]:
    rows = batch.inputs.shape[0]
    if rows % num_microbatches:
        raise ValueError(f"{rows} rows do not split into {num_microbatches} micro-batches")
    size = rows // num_microbatches
    return [batch.rows(i * size, (i + 1) * size) for i in range(num_microbatches)]


class Trainer:
    """Owns DDP-wrapped chunks, the optimizer and the step function of one rank."""

    def __init__(self, chunks: list[torch.nn.Module], tconfig: Any, layout: LayoutLike, train_cfg: TrainConfig,
                 *, use_distributed_optimizer: bool = False, mask_padding_keys: bool = True,
                 finalize_model_grads_func: Callable[..., None] | None = None, timers: Any = None,
                 ddp_options: dict[str, Any] | None = None):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        from hybridrec.config.train import validate_train

        validate_train(train_cfg)
        self.layout, self.tconfig, self.mask_padding_keys = layout, tconfig, mask_padding_keys
        self.label_smoothing = train_cfg.label_smoothing
        ddp_config = DistributedDataParallelConfig(  # ddp_options: Comm.ddp_options (bucketing, overlap)
            grad_reduce_in_fp32=True, use_distributed_optimizer=use_distributed_optimizer,
            **(ddp_options or {"overlap_grad_reduce": False}))
        self.chunks = [DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=chunk,
                                               disable_bucketing=index > 0)
                       for index, chunk in enumerate(chunks)]
        opt_config = OptimizerConfig(
            optimizer="adam", lr=train_cfg.lr, min_lr=train_cfg.min_lr, weight_decay=train_cfg.weight_decay,
            adam_beta1=0.9, adam_beta2=0.98, adam_eps=1e-8, clip_grad=train_cfg.clip_grad,
            use_distributed_optimizer=use_distributed_optimizer, params_dtype=torch.float32)
        # megatron's standard param groups give biases and 1-D weights wd_mult 0; the scheduler applies it
        self.optimizer = get_megatron_optimizer(opt_config, self.chunks)
        self.scheduler = _scheduler(self.optimizer, train_cfg)
        tconfig.finalize_model_grads_func = finalize_model_grads_func or finalize_model_grads
        tconfig.grad_scale_func = self.optimizer.scale_loss
        self.timers = timers
        if timers is not None:  # megatron's own timer calls (schedules, optimizer) land in our phases
            tconfig.timers = timers
            for part in self._optimizer_parts():
                if getattr(part, "config", None) is not None:
                    part.config.timers = timers
        self.dp_group = ps.get_data_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.is_last_stage = ps.is_pipeline_last_stage(ignore_virtual=True)
        self.last_stage_rank = ps.get_pipeline_model_parallel_last_rank()
        self.step = 0

    def _apply_schedule(self, update: int) -> float:
        """Learning rate and weight decay of update `update` (1-based) into every param group."""
        self.scheduler.num_steps = update
        self.scheduler.step(0)
        return self.current_lr()

    def current_lr(self) -> float:
        """The learning rate of the default param groups (the value megatron logs)."""
        from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

        lr = get_canonical_lr_for_logging(self.optimizer.param_groups)
        return float(lr if lr is not None else self.optimizer.param_groups[0]["lr"])

    # -- the step ---------------------------------------------------------------------------------
    def _forward_step(self, scale: float) -> Callable:
        def forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
            mb = next(data_iterator)
            smoothing = self.label_smoothing
            # with label smoothing the last stage returns logits and the loss is ours; else megatron's CE
            output = model(mb.inputs, position_ids(mb.inputs), attention_mask(mb.inputs, self.mask_padding_keys),
                           labels=None if smoothing else mb.labels)

            def loss_func(token_loss: torch.Tensor):
                if smoothing:
                    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

                    token_loss = vocab_parallel_cross_entropy(token_loss.float(), mb.labels, smoothing)
                loss_sum = (token_loss.float() * mb.mask).sum()
                return loss_sum * scale, {"loss_sum": loss_sum.detach().clone()}

            return output, loss_func

        return forward_step

    def train_step(self, batch: Batch) -> StepResult:
        """One optimizer step on this rank's rows of the global batch."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        start = time.perf_counter()
        lay = self.layout
        tokens = batch.mask.sum().to(torch.float64).reshape(1)
        dist.all_reduce(tokens, group=self.dp_group)
        global_tokens = max(float(tokens.item()), 1.0)
        scale = lay.num_micro_batches * lay.dp / global_tokens
        mbs = micro_batches(batch, lay.num_micro_batches)
        iterators: Any = [iter(mbs) for _ in self.chunks] if len(self.chunks) > 1 else iter(mbs)
        for chunk in self.chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        lr = self._apply_schedule(self.step + 1)
        reported = get_forward_backward_func()(
            forward_step_func=self._forward_step(scale), data_iterator=iterators,
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0],
            num_microbatches=lay.num_micro_batches, seq_length=batch.inputs.shape[1],
            micro_batch_size=mbs[0].inputs.shape[0], forward_only=False)
        with self._phase("optimizer"):
            update_successful, grad_norm, _ = self.optimizer.step()
        loss = self._global_mean_loss(reported, global_tokens, batch.inputs.device)
        self.step += 1
        return StepResult(step=self.step, loss=loss, grad_norm=None if grad_norm is None else float(grad_norm),
                          update_successful=bool(update_successful), seconds=time.perf_counter() - start,
                          samples=batch.inputs.shape[0] * lay.dp, lr=lr)

    def _phase(self, name: str) -> contextlib.AbstractContextManager:
        """`timers.phase(name)` when the trainer reports into PhaseTimers; nothing without timers."""
        phase = getattr(self.timers, "phase", None)
        return phase(name) if phase is not None else contextlib.nullcontext()

    def _global_mean_loss(self, reported: list[dict], global_tokens: float, device: torch.device) -> float:
        """Sum the (cloned) per-micro-batch loss sums over dp, divide by the global token count, and
        send the value from the last pipeline stage to every stage."""
        total = torch.zeros(1, dtype=torch.float64, device=device)
        if self.is_last_stage:
            for item in reported:
                total += item["loss_sum"].to(torch.float64)
            dist.all_reduce(total, group=self.dp_group)
        if self.layout.pp > 1:
            dist.broadcast(total, src=self.last_stage_rank, group=self.pp_group)
        return float(total.item()) / global_tokens

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "model": [chunk.module.state_dict() for chunk in self.chunks],
            "optimizer": self.optimizer.state_dict(),
        }
        # the distributed optimizer keeps Adam moments outside state_dict(): save this rank's shard
        parts = self._optimizer_parts()
        if any(hasattr(part, "get_parameter_state_dp_reshardable") for part in parts):
            state["optimizer_param_state"] = [_mark_unpadded(part.get_parameter_state_dp_reshardable())
                                              for part in parts]
        return state

    def _optimizer_parts(self) -> list[Any]:
        return list(getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    def adam_state_by_name(self, param_infos: list[list[Any]]) -> dict[str, dict[str, torch.Tensor]]:
        """{global parameter name: its Adam state (step, exp_avg, exp_avg_sq), CPU copies} for this rank's
        parameters: what survives a change of pipeline split (names do not depend on the layout).
        Only for megatron's non-distributed optimizer, whose torch Adam holds the model parameters."""
        owners = self._inner_optimizers_by_param()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for chunk, infos in zip(self.chunks, param_infos, strict=True):
            params = dict(chunk.module.named_parameters())
            for info in infos:
                param = params[info.local_name]
                state = owners[id(param)].state.get(param) if id(param) in owners else None
                if state:
                    out[info.global_name] = {key: value.detach().cpu().clone() for key, value in state.items()}
        return out

    def load_adam_state_by_name(self, param_infos: list[list[Any]], states: dict[str, dict[str, torch.Tensor]]) -> int:
        """Install `adam_state_by_name` output (from any pipeline split) for the parameters this rank
        holds now; returns how many parameters got a state."""
        owners = self._inner_optimizers_by_param()
        loaded = 0
        for chunk, infos in zip(self.chunks, param_infos, strict=True):
            params = dict(chunk.module.named_parameters())
            for info in infos:
                param, state = params[info.local_name], states.get(info.global_name)
                if state is None or id(param) not in owners:
                    continue
                # torch keeps Adam's step on the CPU (non-capturable); moments live with the parameter
                owners[id(param)].state[param] = {key: value.clone() if key == "step" else value.to(param.device)
                                                  for key, value in state.items()}
                loaded += 1
        return loaded

    def _inner_optimizers_by_param(self) -> dict[int, torch.optim.Optimizer]:
        if any(hasattr(part, "get_parameter_state_dp_reshardable") for part in self._optimizer_parts()):
            raise NotImplementedError("Adam state by name needs the non-distributed optimizer")
        return {id(param): part.optimizer for part in self._optimizer_parts()
                for group in part.optimizer.param_groups for param in group["params"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for chunk, chunk_state in zip(self.chunks, state["model"], strict=True):
            current = chunk.module.state_dict()
            with torch.no_grad():
                for name, tensor in chunk_state.items():
                    if isinstance(current.get(name), torch.Tensor):
                        current[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        if "optimizer_param_state" in state:
            with torch.no_grad():  # megatron copies into views of leaf parameters
                for part, part_state in zip(self._optimizer_parts(), state["optimizer_param_state"], strict=True):
                    part.load_parameter_state_from_dp_reshardable(part_state)
        _unshare_adam_steps(self._optimizer_parts())
        self.step = int(state["step"])


def _scheduler(optimizer: Any, cfg: TrainConfig) -> Any:
    """megatron's OptimizerParamScheduler for `cfg` (warmup from 0, decay to min_lr at lr_decay_steps)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay_steps = max(cfg.lr_decay_steps or cfg.steps, cfg.warmup_steps + 1)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if cfg.warmup_steps else cfg.lr, max_lr=cfg.lr, min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.warmup_steps, lr_decay_steps=decay_steps, lr_decay_style=cfg.lr_decay,
        start_wd=cfg.weight_decay, end_wd=cfg.weight_decay, wd_incr_steps=1, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False)


def _unshare_adam_steps(parts: list[Any]) -> None:
    """megatron 0.16.1's DistributedOptimizer.load_state_dict (without TE/Apex) hands every parameter the
    same `step` tensor; torch's Adam increments each parameter's step in place, so one shared tensor
    would count n_params per update and skew the bias correction after a resume. One copy each."""
    for part in parts:
        for param_state in getattr(getattr(part, "optimizer", None), "state", {}).values():
            if isinstance(param_state.get("step"), torch.Tensor):
                param_state["step"] = param_state["step"].clone()


def _mark_unpadded(param_state: dict[Any, Any]) -> dict[Any, Any]:
    """megatron 0.16.1's load_parameter_state_from_dp_reshardable filters entries on a 'padding' key that
    get_parameter_state_dp_reshardable does not write: every entry it writes is a real parameter."""
    for gbuf_index, by_dtype in param_state.items():
        if isinstance(gbuf_index, int):
            for buckets in by_dtype.values():
                for bucket in buckets:
                    for entry in bucket:
                        entry.setdefault("padding", False)
    return param_state


def format_progress(result: StepResult, elapsed_s: float, total_samples: int) -> str:
    rate = total_samples / elapsed_s if elapsed_s > 0 else 0.0
    norm = "n/a" if result.grad_norm is None else f"{result.grad_norm:.4f}"
    lr = "" if result.lr is None else f"  lr {result.lr:.2e}"
    return (f"step {result.step:6d}  loss {result.loss:.5f}  grad_norm {norm}{lr}  "
            f"samples/s {rate:9.1f}  step_s {result.seconds:.3f}")
