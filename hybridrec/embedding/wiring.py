"""Where the job meets the 2D table (`embedding.enabled=true`): building it for a `Job`, stepping it
inside megatron's gradient finalisation, and the `embedding` record of summary.json. Kept here so
`hybridrec.train.job` only calls three functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def build_table(job: Any) -> Any:
    """The rank's `TrainerTable` for the job's data and model (collective over the world)."""
    from hybridrec.embedding.trainer_table import ItemVocab, TrainerTable
    from hybridrec.errors import ConfigError

    cfg = job.cfg
    if job.device.type != "cpu":  # the table's rows, gradient buffer and exchange are made on the host
        raise ConfigError("train.device", job.device.type,
                          "cpu with embedding.enabled=true (the 2D table keeps its rows and exchange buffers on "
                          "the host and its lookup has not run on a GPU; use embedding=off on GPUs)")
    vocab = ItemVocab(job.shape.num_items, job.shape.vocab_size)
    return TrainerTable(cfg.embedding, cfg.train, vocab, cfg.model.hidden_size, job.rank, job.env.world_size,
                        rack_map=job.comm.rack_map, allreduce=cfg.allreduce, compression=cfg.compression,
                        init_std=cfg.model.init_std, init_seed=cfg.model.init_seed, tp=job.layout.tp)


def finalize_with_table(base: Callable[..., None] | None, table: Any) -> Callable[..., None]:
    """megatron's `finalize_model_grads_func` (or the job's GradSync hook), then the table's step:
    megatron calls it once per training step, after the backward of the last micro-batch."""
    if base is None:
        from megatron.core.distributed import finalize_model_grads as base

    def finalize(*args: Any, **kwargs: Any) -> None:
        base(*args, **kwargs)
        table.step()

    return finalize


def build_chunks(job: Any, tconfig: Any) -> list[Any]:
    from hybridrec.model.sharded_output import build_chunks_2d

    if job.table is None:
        job.table = build_table(job)
    return build_chunks_2d(job.model_cfg, job.shape, tconfig, job.device, job.table)


def summary_record(job: Any) -> dict[str, Any]:
    """summary.json's `embedding` record: rank 0's table plus the largest shard over the ranks."""
    import torch
    import torch.distributed as dist

    lay = job.layout
    tokens = (job.cfg.train.global_batch_size // lay.dp) * job.cfg.data.max_seq_len
    record = job.table.record(tokens)
    rows = torch.tensor([record["rows_per_rank"]], dtype=torch.int64)
    dist.all_reduce(rows, op=dist.ReduceOp.MAX)
    record["max_rows_over_ranks"] = int(rows.item())
    return record
