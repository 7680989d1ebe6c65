"""The whole job for one rank: `run(cfg) -> summary dict`.

preflight -> process group from the environment (torchrun / Slurm / single) -> megatron groups ->
data (rank 0 builds the cache first) -> model + trainer -> optional resume -> training with progress
lines from rank 0 -> ranking evaluation -> checkpoint -> `summary.json` (rank 0, atomically) and
`telemetry/rank<k>.h5` per rank, all under `cfg.output_dir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrec.config import RunConfig
from hybridrec.io import atomic_write_json

SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


def _print0(rank: int, message: str) -> None:
    if rank == 0:
        print(message, flush=True)


def _rack_map(cfg: RunConfig, world_size: int) -> Any:
    """Rank -> rack from `allreduce.topology` (single | config | slurm); a collective (hostnames)."""
    import os
    import socket

    import torch.distributed as dist

    from hybridrec.topology import RackMap, local_topology_from_env

    mine = local_topology_from_env(os.environ, socket.gethostname())
    everyone: list[Any] = [None] * world_size
    dist.all_gather_object(everyone, mine)
    hosts = [entry[0] for entry in everyone]
    if cfg.allreduce.topology == "config":
        return RackMap.from_mapping(cfg.allreduce.racks, hosts)
    if cfg.allreduce.topology == "slurm":
        return RackMap.from_topology_addrs([e[1] for e in everyone], mine[2], hosts)
    return RackMap.single(world_size, hosts)


def _grad_sync(cfg: RunConfig, layout: Any, rank: int, rack_map: Any) -> tuple[Any, Any]:
    """(GradSync, finalize_model_grads replacement) unless allreduce.algorithm is megatron's own."""
    if cfg.allreduce.algorithm == "megatron":
        return None, None
    from hybridrec.distributed.accounting import ByteCounter
    from hybridrec.distributed.allreduce.groups import build_comm_groups
    from hybridrec.distributed.grad_sync import GradSync
    from hybridrec.distributed.megatron_grad_hook import make_finalize_model_grads

    groups = build_comm_groups(layout.groups("dp"), rack_map, rank)
    sync = GradSync.from_config(groups, cfg.allreduce, cfg.compression, ByteCounter(rack_map, rank))
    return sync, make_finalize_model_grads(sync)


def _load_data(cfg: RunConfig, rank: int) -> Any:
    import torch.distributed as dist

    from hybridrec.data.processed import load_processed

    if rank == 0:
        data = load_processed(cfg.data)
    dist.barrier()
    if rank != 0:
        data = load_processed(cfg.data)
    return data


class _Job:
    """State of one rank's run (kept small: each method is one phase of `run`)."""

    def __init__(self, cfg: RunConfig):
        import torch.distributed as dist

        from hybridrec import preflight
        from hybridrec.distributed import backend
        from hybridrec.distributed.env import DistEnv, init_process_group

        self.cfg, self.out = cfg, Path(cfg.output_dir or ".")
        self.env = DistEnv.from_environ()
        self.layout = preflight.validate(cfg, self.env.world_size)
        self.device_name = backend.setup(cfg.train.device, self.env.local_rank)
        init_process_group(self.env, backend.process_group_backend(cfg.parallel.backend), cfg.parallel.timeout_s)
        self.rank, self.dist = dist.get_rank(), dist
        self.recorder = self.undo_tp = None

    def build(self) -> None:
        from hybridrec.data.batches import TrainBatchIterator, train_examples
        from hybridrec.model import parallel, sasrec
        from hybridrec.train import adaptive

        cfg = self.cfg
        # data before megatron's groups: the adaptive plan profiles the model at the real vocabulary
        self.data = _load_data(cfg, self.rank)
        self.shape = sasrec.ModelShape(
            sasrec.padded_vocab_size(self.data.num_items, cfg.model.vocab_pad_multiple, self.layout.tp),
            cfg.data.max_seq_len, self.data.num_items)
        start = adaptive.plan_start(cfg, self.layout, self.shape.vocab_size, self._resume_model())
        self.model_cfg, self.layout, self.balance = start.model_cfg, start.layout, start.record
        if start.message:
            _print0(self.rank, start.message)
        lay = self.layout
        parallel.initialize(lay.tp, lay.pp, lay.vpp, cfg.train.seed)
        self.rack_map = _rack_map(cfg, lay.world_size)
        coords = lay.coords(self.rank)
        self.coords = {"tp": coords.tp, "pp": coords.pp, "dp": coords.dp}
        self.timers = self._timers()
        self.grad_sync, self.finalize = _grad_sync(cfg, lay, self.rank, self.rack_map)
        self.watch = None if start.plan is None else adaptive.DriftWatch(
            start.plan, cfg.parallel.rebalance_threshold, coords.pp, lay.pp)
        self.step_timers, self.trainer_timers = None, self.timers
        if self.watch is not None:  # megatron's compute timers for the watch too
            self.step_timers, self.trainer_timers = adaptive.watch_timers(self.timers)
            self.balance["watch_clock"] = "process CPU time" if self.device_name == "cpu" else "wall time"
        self._build_model()
        examples = train_examples(self.data, cfg.data.max_seq_len, cfg.data.train_windows, cfg.data.train_stride)
        self.batches = TrainBatchIterator(examples,
                                          cfg.train.global_batch_size, coords.dp, lay.dp, cfg.train.seed)
        self.recorder = self._recorder()

    def _build_model(self, full: dict[str, torch.Tensor] | None = None) -> None:
        """This rank's chunks (with `self.model_cfg`'s per-stage layer counts) and the Trainer; `full`
        ({global name: tensor}, any layout) replaces the initial weights."""
        from hybridrec.distributed import backend
        from hybridrec.model import sasrec
        from hybridrec.train import checkpoint
        from hybridrec.train.loop import Trainer

        cfg, lay = self.cfg, self.layout
        tconfig = sasrec.transformer_config(self.model_cfg, lay.tp, lay.pp, lay.vpp, self.device_name,
                                            cfg.parallel.batch_p2p_comm)
        chunks = sasrec.build_chunks(self.model_cfg, self.shape, tconfig, backend.device(),
                                     item_tokens=getattr(self.data, "item_tokens", None))  # item_repr != id
        self.param_infos = [chunk.hybridrec_param_infos for chunk in chunks]
        if full is not None:
            checkpoint.apply_full_state(chunks, self.param_infos, full)
        self.trainer = Trainer(chunks, tconfig, lay, cfg.train,
                               use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                               mask_padding_keys=cfg.model.mask_padding_keys,
                               finalize_model_grads_func=self.finalize,
                               timers=self.trainer_timers)

    def _resume_checkpoint(self) -> Path | None:
        from hybridrec.train import checkpoint

        spec = self.cfg.train.resume
        if not spec:
            return None
        return checkpoint.latest(self.out / CHECKPOINTS) if spec == "auto" else Path(spec)

    def _resume_model(self) -> dict[str, Any] | None:
        """The model config saved with the checkpoint this run resumes from (its per-stage split)."""
        from hybridrec.train import checkpoint

        ckpt = self._resume_checkpoint() if self.cfg.parallel.balance == "adaptive" else None
        return None if ckpt is None else checkpoint.read_manifest(ckpt).get("model")

    def _timers(self) -> Any:
        if not self.cfg.telemetry.enabled:
            return None
        from hybridrec.telemetry import timers as timers_mod

        tel = self.cfg.telemetry
        timers = timers_mod.PhaseTimers(cuda_sync=tel.cuda_sync if self.device_name == "cuda" else False)
        timers_mod.install(timers)  # GradSync's phase("dp_comm_intra"/"dp_comm_cross")
        self.undo_tp = timers_mod.instrument_tensor_parallel(timers) if tel.tp_timing else None
        return timers

    def _recorder(self) -> Any:
        if not self.cfg.telemetry.enabled:
            return None
        from hybridrec.telemetry.nvml import UtilizationSampler, visible_gpu_ids
        from hybridrec.telemetry.recorder import RunRecorder, rank_file, run_metadata

        tel = self.cfg.telemetry
        sampler = UtilizationSampler(tel.nvml_interval_s, visible_gpu_ids(self.env.local_rank)) \
            if tel.sampler else None
        meta = run_metadata(config=dataclasses.asdict(self.cfg), layout=self.layout.to_dict(),
                            topology=dataclasses.asdict(self.rack_map), rank=self.rank,
                            world_size=self.layout.world_size, balance=self.balance)
        recorder = RunRecorder(rank_file(self.out, self.rank), meta, flush_every=tel.flush_every_steps,
                               sampler=sampler)
        if sampler is not None:
            sampler.start()
        return recorder

    def close_telemetry(self, status: str) -> None:
        from hybridrec.telemetry import timers as timers_mod

        if getattr(self, "recorder", None) is not None:
            self.recorder.close(status=status, balance=self.balance)
        if getattr(self, "undo_tp", None) is not None:
            self.undo_tp()
            self.undo_tp = None
        timers_mod.install(None)

    def resume(self) -> None:
        from hybridrec.train import checkpoint

        if not self.cfg.train.resume:
            return
        ckpt = self._resume_checkpoint()
        if ckpt is None:
            _print0(self.rank, "resume=auto: no checkpoint yet, starting fresh")
            return
        extra = checkpoint.restore(ckpt, self.trainer, self.layout.to_dict())
        self.batches.load_state_dict(extra["data"])
        if self.grad_sync is not None and "grad_sync" in extra:
            self.grad_sync.load_state_dict(extra["grad_sync"])
        _print0(self.rank, f"resumed from {ckpt} at step {self.trainer.step}")

    def save(self) -> Path:
        from hybridrec.train import checkpoint

        manifest = {"layout": self.layout.to_dict(), "vocab_size": self.shape.vocab_size,
                    "num_items": self.shape.num_items, "max_seq_len": self.shape.max_seq_len,
                    "model": dataclasses.asdict(self.model_cfg)}
        return checkpoint.save(self.out / CHECKPOINTS, self.trainer, self.param_infos, self.coords, manifest,
                               self._extra_state())

    def _extra_state(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"data": self.batches.state_dict()}
        if self.grad_sync is not None:
            extra["grad_sync"] = self.grad_sync.state_dict()
        return extra

    def train(self) -> dict[str, Any]:
        from hybridrec.train.loop import Batch, format_progress

        cfg, device = self.cfg.train, torch.device("cpu") if self.device_name == "cpu" else torch.device("cuda")
        losses: list[list[float]] = []
        comm_shares: list[float] = []
        samples, seconds = 0, 0.0
        while self.trainer.step < cfg.steps:
            inputs, labels, mask = next(self.batches)
            batch = Batch(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (inputs, labels, mask))).to(device)
            if self.timers is not None:
                self.timers.begin_step()
            result = self.trainer.train_step(batch)
            samples, seconds = samples + result.samples, seconds + result.seconds
            losses.append([result.step, result.loss])
            metrics = {"loss": result.loss, "grad_norm": result.grad_norm or 0.0}
            if self.timers is not None:
                if self.grad_sync is not None and self.grad_sync.counter is not None:
                    self.timers.add_byte_counts(self.grad_sync.counter.step_end())
                metrics.update(self.timers.end_step(samples=result.samples, tokens=int(mask.sum())))
                comm_shares.append(metrics.get("comm_share_all", 0.0))
            if self.watch is not None:
                self._watch_balance(result.step, metrics)
            if self.recorder is not None:
                self.recorder.log_step(result.step, metrics)
            if result.step % max(cfg.log_every, 1) == 0 or result.step == cfg.steps:
                _print0(self.rank, format_progress(result, seconds, samples))
            if cfg.checkpoint_every and result.step % cfg.checkpoint_every == 0 and result.step < cfg.steps:
                self.save()
            self._stop_if_preempted(result.step)
        return {"loss_curve": losses, "samples_per_s": samples / seconds if seconds else 0.0, "train_s": seconds,
                "comm_share": float(np.mean(comm_shares)) if comm_shares else None}

    def _watch_balance(self, step: int, metrics: dict[str, float]) -> None:
        """Collective: this step's compute seconds of every stage -> drift monitor -> maybe re-balance."""
        from hybridrec.train.adaptive import stage_compute_seconds

        local = stage_compute_seconds(self.step_timers, self.device_name)
        fire, why = self.watch.observe(local)
        metrics["stage_compute_s"] = local
        metrics["stage_layers"] = float(self.watch.partition.layers_per_stage[self.coords["pp"]])
        if fire and step < self.cfg.train.steps:
            self._rebalance(step, why)

    def _rebalance(self, step: int, why: str) -> None:
        """Apply a new partition live: collective checkpoint, rebuild chunks + Trainer with the new
        per-stage layer counts, load the weights by global name, and carry Adam's state by global name
        across the pipeline group (non-distributed optimizer; with the distributed one it restarts)."""
        from hybridrec.train import checkpoint

        old = list(self.watch.partition.layers_per_stage)
        measured = [round(t * 1e3, 3) for t in self.watch.measured()]
        new = self.watch.replan()
        event = {"step": step, "old": old, "new": list(new.layers_per_stage), "reason": why,
                 "measured_stage_ms": measured, "predicted_max_over_mean": new.max_over_mean}
        if event["new"] == old:
            event.update(applied=False, optimizer_state="kept")
            _print0(self.rank, f"balance: step {step}: {why}; re-planned, split {old} kept")
        else:
            ckpt = self.save()
            _, full = checkpoint.load_full_state(ckpt)
            adam = self._gather_adam_state()
            self.model_cfg = dataclasses.replace(self.model_cfg, **new.megatron_kwargs())
            self.trainer = None  # free the old chunks' buffers before building the new ones
            self._build_model(full)
            self.trainer.step = step
            kept = adam is not None and self.trainer.load_adam_state_by_name(self.param_infos, adam) > 0
            if self.grad_sync is not None:  # error-feedback residuals belong to the old buffers
                self.grad_sync.drain()
                self.grad_sync.ctx.memory.clear()
            event.update(applied=True, optimizer_state="kept" if kept else "reset", checkpoint=str(ckpt))
            _print0(self.rank, f"balance: step {step}: {why}; re-partitioned {old} -> {event['new']} "
                               f"(weights via {ckpt}; Adam state {event['optimizer_state']})")
        self.balance["rebalances"].append(event)

    def _gather_adam_state(self) -> dict[str, Any] | None:
        """Collective over the pipeline group: every stage's Adam state by global name (layers change
        stage in a re-partition; tp and dp coordinates do not). None with the distributed optimizer."""
        from megatron.core import parallel_state as ps

        if self.cfg.parallel.use_distributed_optimizer:
            return None
        group = ps.get_pipeline_model_parallel_group()
        stages: list[Any] = [None] * self.dist.get_world_size(group)
        self.dist.all_gather_object(stages, self.trainer.adam_state_by_name(self.param_infos), group=group)
        return {name: state for stage in stages for name, state in stage.items()}

    def _stop_if_preempted(self, step: int) -> None:
        """Slurm preemption protocol (docs/ARCHITECTURE.md): a collective check every step; on a
        signal every rank saves the checkpoint and raises Preempted for the requeue wrapper."""
        from jobs.requeue import Preempted, PreemptionGuard

        if PreemptionGuard.current().should_stop():
            self.save()
            raise Preempted(step)

    def evaluate(self) -> dict[str, Any]:
        from hybridrec.data.batches import eval_examples
        from hybridrec.distributed import backend
        from hybridrec.eval import ranking

        cfg = self.cfg.eval
        inputs, targets = eval_examples(self.data, cfg.split, self.cfg.data.max_seq_len)
        negatives = {p: torch.from_numpy(self.data.negatives[f"{p}/{cfg.split}"].astype(np.int64))
                     for p in cfg.protocols if p != "full"}
        eval_set = ranking.EvalSet(torch.from_numpy(inputs.astype(np.int64)),
                                   torch.from_numpy(targets.astype(np.int64)), negatives)
        ranks = ranking.ranks(self.trainer.chunks, eval_set, list(cfg.protocols), self.data.num_items,
                              cfg.batch_size, exclude_history=cfg.exclude_history,
                              mask_padding_keys=self.cfg.model.mask_padding_keys, device=backend.device())
        out = {"metrics": ranking.hit_ndcg_table(ranks, cfg.k)}
        if cfg.baseline:
            from hybridrec.eval.popularity import most_popular_metrics

            out["baseline_most_popular"] = most_popular_metrics(
                self.data, list(cfg.protocols), cfg.split, cfg.k, cfg.exclude_history, seed=self.cfg.data.seed)
        if self.recorder is not None:
            self.recorder.log_eval(out["metrics"])
        return out


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run one rank of the job described by `cfg`; rank 0 writes `summary.json`. Returns the summary.

    On `jobs.requeue.Preempted` no summary is written (the requeued attempt writes the result) and the
    process group stays up for `run_requeueable`'s barriers."""
    from jobs.requeue import Preempted

    start = time.perf_counter()
    summary: dict[str, Any] = {"config": dataclasses.asdict(cfg), "status": "failed", "error": None}
    job: _Job | None = None
    try:
        job = _Job(cfg)
        summary["layout"] = job.layout.to_dict()
        job.build()
        summary["layout"], summary["balance"] = job.layout.to_dict(), job.balance
        job.resume()
        summary.update(job.train())
        summary["steps"] = job.trainer.step
        summary.update(job.evaluate())
        if cfg.train.save_final:
            summary["checkpoint"] = str(job.save())
        summary["data"] = {"num_users": job.data.num_users, "num_items": job.data.num_items,
                           "vocab_size": job.shape.vocab_size}
        summary["status"] = "done"
    except Preempted as exc:
        summary["status"], summary["error"] = "preempted", str(exc)
        raise
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["wall_s"] = time.perf_counter() - start
        rank = job.rank if job is not None else 0
        if rank == 0 and cfg.output_dir and summary["status"] != "preempted":
            atomic_write_json(Path(cfg.output_dir) / SUMMARY, summary)
        if job is not None:
            job.close_telemetry(summary["status"])
        if summary["status"] != "preempted":
            _teardown()
    return summary


def _teardown() -> None:
    import torch.distributed as dist

    from hybridrec.model import parallel

    with contextlib.suppress(Exception):  # groups half-built: nothing more to tear down
        parallel.destroy()
    if dist.is_initialized():
        dist.destroy_process_group()
