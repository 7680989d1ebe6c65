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


def _grad_sync(cfg: RunConfig, layout: Any, rank: int) -> tuple[Any, Any]:
    """(GradSync, finalize_model_grads replacement) unless allreduce.algorithm is megatron's own."""
    if cfg.allreduce.algorithm == "megatron":
        return None, None
    from hybridrec.dist.accounting import ByteCounter
    from hybridrec.dist.allreduce.groups import build_comm_groups
    from hybridrec.dist.grad_sync import GradSync
    from hybridrec.dist.megatron_grad_hook import make_finalize_model_grads

    rack_map = _rack_map(cfg, layout.world_size)
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
        from hybridrec.dist import backend
        from hybridrec.dist.env import DistEnv, init_process_group

        self.cfg, self.out = cfg, Path(cfg.output_dir or ".")
        self.env = DistEnv.from_environ()
        self.layout = preflight.validate(cfg, self.env.world_size)
        self.device_name = backend.setup(cfg.train.device, self.env.local_rank)
        init_process_group(self.env, backend.process_group_backend(cfg.parallel.backend), cfg.parallel.timeout_s)
        self.rank, self.dist = dist.get_rank(), dist

    def build(self) -> None:
        from hybridrec.data.batches import TrainBatchIterator, train_examples
        from hybridrec.dist import backend
        from hybridrec.model import parallel, sasrec
        from hybridrec.train.loop import Trainer

        cfg, lay = self.cfg, self.layout
        parallel.initialize(lay.tp, lay.pp, lay.vpp, cfg.train.seed)
        self.data = _load_data(cfg, self.rank)
        self.shape = sasrec.ModelShape(
            sasrec.padded_vocab_size(self.data.num_items, cfg.model.vocab_pad_multiple, lay.tp),
            cfg.data.max_seq_len, self.data.num_items)
        self.timers = self._timers()
        self.grad_sync, finalize = _grad_sync(cfg, lay, self.rank)
        tconfig = sasrec.transformer_config(cfg.model, lay.tp, lay.pp, lay.vpp, self.device_name,
                                            cfg.parallel.batch_p2p_comm)
        chunks = sasrec.build_chunks(cfg.model, self.shape, tconfig, backend.device(),
                                     item_tokens=getattr(self.data, "item_tokens", None))  # item_repr != id
        self.param_infos = [chunk.hybridrec_param_infos for chunk in chunks]
        self.trainer = Trainer(chunks, tconfig, lay, cfg.train,
                               use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                               mask_padding_keys=cfg.model.mask_padding_keys,
                               finalize_model_grads_func=finalize, timers=self.timers)
        coords = lay.coords(self.rank)
        self.coords = {"tp": coords.tp, "pp": coords.pp, "dp": coords.dp}
        self.batches = TrainBatchIterator(train_examples(self.data, cfg.data.max_seq_len),
                                          cfg.train.global_batch_size, coords.dp, lay.dp, cfg.train.seed)
        self.recorder = self._recorder()

    def _timers(self) -> Any:
        if not self.cfg.telemetry.enabled:
            return None
        from hybridrec.telemetry.timers import PhaseTimers

        return PhaseTimers()

    def _recorder(self) -> Any:
        if not self.cfg.telemetry.enabled:
            return None
        from hybridrec.telemetry.recorder import RunRecorder, rank_file, run_metadata

        meta = run_metadata(config=dataclasses.asdict(self.cfg), layout=self.layout.to_dict(), rank=self.rank,
                            world_size=self.layout.world_size)
        return RunRecorder(rank_file(self.out, self.rank), meta, flush_every=self.cfg.telemetry.flush_every_steps)

    def resume(self) -> None:
        from hybridrec.train import checkpoint

        spec = self.cfg.train.resume
        if not spec:
            return
        ckpt = checkpoint.latest(self.out / CHECKPOINTS) if spec == "auto" else Path(spec)
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
                    "model": dataclasses.asdict(self.cfg.model)}
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
            if self.recorder is not None:
                self.recorder.log_step(result.step, metrics)
            if result.step % max(cfg.log_every, 1) == 0 or result.step == cfg.steps:
                _print0(self.rank, format_progress(result, seconds, samples))
            if cfg.checkpoint_every and result.step % cfg.checkpoint_every == 0 and result.step < cfg.steps:
                self.save()
            self._stop_if_preempted(result.step)
        return {"loss_curve": losses, "samples_per_s": samples / seconds if seconds else 0.0, "train_s": seconds,
                "comm_share": float(np.mean(comm_shares)) if comm_shares else None}

    def _stop_if_preempted(self, step: int) -> None:
        """Slurm preemption protocol (docs/ARCHITECTURE.md): a collective check every step; on a
        signal every rank saves the checkpoint and raises Preempted for the requeue wrapper."""
        from jobs.requeue import Preempted, PreemptionGuard

        if PreemptionGuard.current().should_stop():
            self.save()
            raise Preempted(step)

    def evaluate(self) -> dict[str, Any]:
        from hybridrec.data.batches import eval_examples
        from hybridrec.dist import backend
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
    """Run one rank of the job described by `cfg`; rank 0 writes `summary.json`. Returns the summary."""
    start = time.perf_counter()
    summary: dict[str, Any] = {"config": dataclasses.asdict(cfg), "status": "failed", "error": None}
    job: _Job | None = None
    try:
        job = _Job(cfg)
        summary["layout"] = job.layout.to_dict()
        job.build()
        job.resume()
        summary.update(job.train())
        summary["steps"] = job.trainer.step
        summary.update(job.evaluate())
        if cfg.train.save_final:
            summary["checkpoint"] = str(job.save())
        summary["data"] = {"num_users": job.data.num_users, "num_items": job.data.num_items,
                           "vocab_size": job.shape.vocab_size}
        summary["status"] = "done"
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["wall_s"] = time.perf_counter() - start
        rank = job.rank if job is not None else 0
        if rank == 0 and cfg.output_dir:
            atomic_write_json(Path(cfg.output_dir) / SUMMARY, summary)
        if job is not None and job.recorder is not None:
            job.recorder.close(status=summary["status"])
        _teardown()
    return summary


def _teardown() -> None:
    import torch.distributed as dist

    from hybridrec.model import parallel

    with contextlib.suppress(Exception):  # groups half-built: nothing more to tear down
        parallel.destroy()
    if dist.is_initialized():
        dist.destroy_process_group()
