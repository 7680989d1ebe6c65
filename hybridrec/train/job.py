"""One rank's job, built from its parts: `build_job(cfg) -> Job`.

    cfg -> process group (torchrun / Slurm / single) -> data (rank 0 builds the cache first)
        -> start plan (adaptive pipeline split) -> megatron groups -> comm (`build_comm`)
        -> telemetry (`build_telemetry`) -> model chunks + Trainer -> batches

`Job` holds the built parts and the few operations that need several of them: (re)building the
model with a given per-stage split, saving a checkpoint and resuming from one. The training loop
(`hybridrec.train.run_loop`), its hooks (`hybridrec.train.hooks`) and evaluation
(`hybridrec.train.evaluate`) use a `Job`; `hybridrec.main` composes them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class Job:
    cfg: Any  # RunConfig
    out: Path
    env: Any  # DistEnv
    rank: int
    device: torch.device
    layout: Any = None  # ParallelLayout (the start plan may change its micro-batching)
    data: Any = None  # ProcessedData
    shape: Any = None  # sasrec.ModelShape
    model_cfg: Any = None  # ModelConfig with this run's per-stage split
    balance: dict[str, Any] = dataclasses.field(default_factory=dict)  # summary.json["balance"]
    start_plan: Any = None  # adaptive.StartPlan
    coords: dict[str, int] = dataclasses.field(default_factory=dict)
    comm: Any = None  # distributed.comm.Comm
    telemetry: Any = None  # telemetry.session.Telemetry
    trainer: Any = None  # train.loop.Trainer
    param_infos: list[Any] = dataclasses.field(default_factory=list)
    batches: Any = None  # data.batches.TrainBatchIterator
    validation: Any = None  # train.validation.ValidationHook (train.eval_every > 0)
    table: Any = None  # embedding.trainer_table.TrainerTable when embedding.enabled (the 2D item table)

    # -- model ------------------------------------------------------------------------------------
    def build_model(self, full: dict[str, torch.Tensor] | None = None) -> None:
        """This rank's chunks (with `self.model_cfg`'s per-stage layer counts) and the Trainer;
        `full` ({global name: tensor}, from any layout) replaces the initial weights."""
        from hybridrec.model import sasrec
        from hybridrec.train import checkpoint
        from hybridrec.train.loop import Trainer

        cfg, lay = self.cfg, self.layout
        tconfig = sasrec.transformer_config(self.model_cfg, lay.tp, lay.pp, lay.vpp, self.device.type,
                                            cfg.parallel.batch_p2p_comm)
        finalize = self.comm.finalize_model_grads
        if cfg.embedding.enabled:  # the 2D sparse-parallel item table (hybridrec.embedding.wiring)
            from hybridrec.embedding import wiring

            chunks = wiring.build_chunks(self, tconfig)
            finalize = wiring.finalize_with_table(finalize, self.table)
        else:
            chunks = sasrec.build_chunks(self.model_cfg, self.shape, tconfig, self.device,
                                         item_tokens=getattr(self.data, "item_tokens", None))  # item_repr != id
        self.param_infos = [chunk.hybridrec_param_infos for chunk in chunks]
        if full is not None:
            checkpoint.apply_full_state(chunks, self.param_infos, full)
        self.trainer = None  # free the old chunks' buffers before the new ones exist
        self.trainer = Trainer(chunks, tconfig, lay, cfg.train,
                               use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                               mask_padding_keys=cfg.model.mask_padding_keys,
                               finalize_model_grads_func=finalize,
                               timers=self.telemetry.trainer_timers, ddp_options=self.comm.ddp_options)
        self.comm.attach(self.trainer)  # megatron's bucket starts -> GradSync (overlap), no_sync_func

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_root(self) -> Path:
        return self.out / CHECKPOINTS

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint `train.resume` names ('auto': the newest complete one; None: start fresh)."""
        from hybridrec.train import checkpoint

        spec = self.cfg.train.resume
        if not spec:
            return None
        return checkpoint.latest(self.checkpoint_root) if spec == "auto" else Path(spec)

    def save(self) -> Path:
        """Collective: every rank writes its part of a checkpoint of the current step."""
        from hybridrec.train import checkpoint

        manifest = {"layout": self.layout.to_dict(), "vocab_size": self.shape.vocab_size,
                    "num_items": self.shape.num_items, "max_seq_len": self.shape.max_seq_len,
                    "model": dataclasses.asdict(self.model_cfg)}
        extra: dict[str, Any] = {"data": self.batches.state_dict()}
        comm_state = self.comm.state_dict()
        if comm_state is not None:
            extra["grad_sync"] = comm_state
        if self.validation is not None:  # curve, patience and this rank's best weights
            extra["validation"] = self.validation.state_dict()
        if self.table is not None:
            extra["embedding_table"] = self.table.state_dict()
        return checkpoint.save(self.checkpoint_root, self.trainer, self.param_infos, self.coords, manifest,
                               extra)

    def resume(self) -> str | None:
        """Restore trainer, data position and error-feedback state; returns a message for the log."""
        from hybridrec.train import checkpoint

        if not self.cfg.train.resume:
            return None
        ckpt = self.resume_checkpoint()
        if ckpt is None:
            return "resume=auto: no checkpoint yet, starting fresh"
        extra = checkpoint.restore(ckpt, self.trainer, self.layout.to_dict())
        self.batches.load_state_dict(extra["data"])
        self.comm.load_state_dict(extra.get("grad_sync"))
        if self.validation is not None and "validation" in extra:
            self.validation.load_state_dict(extra["validation"], self.device)
        if self.table is not None:
            self.table.load_state_dict(extra["embedding_table"])
        return f"resumed from {ckpt} at step {self.trainer.step}"

    def close(self, status: str) -> None:
        if self.telemetry is not None:
            self.telemetry.close(status, self.balance)
        if self.comm is not None:
            self.comm.close()
        if self.table is not None:
            self.table.close()


def _load_data(cfg: Any, rank: int) -> Any:
    """Rank 0 builds (or validates) the HDF5 cache first; the others then read it."""
    import torch.distributed as dist

    from hybridrec.data.processed import load_processed

    if rank == 0:
        data = load_processed(cfg.data)
    dist.barrier()
    if rank != 0:
        data = load_processed(cfg.data)
    return data


def _resume_model(job: Job) -> dict[str, Any] | None:
    """The model config saved with the checkpoint an adaptive run resumes from (its per-stage split)."""
    from hybridrec.train import checkpoint

    ckpt = job.resume_checkpoint() if job.cfg.parallel.balance == "adaptive" else None
    return None if ckpt is None else checkpoint.read_manifest(ckpt).get("model")


def start_process_group(cfg: Any) -> Job:
    """Preflight, device, process group: the part of the build that can refuse a config."""
    import torch.distributed as dist

    from hybridrec import preflight
    from hybridrec.distributed import backend
    from hybridrec.distributed.env import DistEnv, init_process_group

    env = DistEnv.from_environ()
    layout = preflight.validate(cfg, env.world_size)
    backend.setup(cfg.train.device, env.local_rank)
    init_process_group(env, backend.process_group_backend(cfg.parallel.backend), cfg.parallel.timeout_s)
    return Job(cfg=cfg, out=Path(cfg.output_dir or "."), env=env, rank=dist.get_rank(), device=backend.device(),
               layout=layout)


def build_job(job: Job, say: Any = print) -> Job:
    """Every other part, in dependency order (all collective). `say(message)` logs on rank 0."""
    from hybridrec.data.batches import TrainBatchIterator, train_examples
    from hybridrec.distributed.comm import build_comm
    from hybridrec.model import parallel, sasrec
    from hybridrec.telemetry.session import build_telemetry
    from hybridrec.train import adaptive
    from hybridrec.train.validation import ValidationHook

    cfg = job.cfg
    # data before megatron's groups: the adaptive plan profiles the model at the real vocabulary
    job.data = _load_data(cfg, job.rank)
    from hybridrec.data.skips import skip_message

    skipped = skip_message(job.data.stats)
    if skipped:
        say(skipped)
    job.shape = sasrec.ModelShape(
        sasrec.padded_vocab_size(job.data.num_items, cfg.model.vocab_pad_multiple, job.layout.tp),
        cfg.data.max_seq_len, job.data.num_items)
    start = adaptive.plan_start(cfg, job.layout, job.shape.vocab_size, _resume_model(job))
    job.start_plan, job.model_cfg, job.layout, job.balance = start, start.model_cfg, start.layout, start.record
    if start.message:
        say(start.message)
    lay = job.layout
    parallel.initialize(lay.tp, lay.pp, lay.vpp, cfg.train.seed)
    coords = lay.coords(job.rank)
    job.coords = {"tp": coords.tp, "pp": coords.pp, "dp": coords.dp}
    job.comm = build_comm(cfg, lay, job.rank)
    job.telemetry = build_telemetry(job, watch=start.plan is not None)
    job.build_model()
    examples = train_examples(job.data, cfg.data.max_seq_len, cfg.data.train_windows, cfg.data.train_stride)
    job.batches = TrainBatchIterator(examples, cfg.train.global_batch_size, coords.dp, lay.dp, cfg.train.seed)
    job.validation = ValidationHook.for_run(cfg, job.data, job.device, job.table)  # None unless train.eval_every
    job.telemetry.open_recorder(job)
    return job
