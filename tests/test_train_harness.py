"""Shared harness (no tests of its own): train the tiny recommender with a given tp x pp x dp (+vpp)
layout on real gloo processes (`hybridrec.distributed.spawn.run_ranks`, spawn start) and return rank 0's record:
loss per step, grad norms, ranks and HR/NDCG on a fixed eval set. Used by the equivalence and
checkpoint tests; the one-process run is the reference."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

NUM_ITEMS = 100  # vocab 128 for tp 1 and 2 with vocab_pad_multiple 64 (same shapes in every layout)
SEQ = 10
USERS = 64


def tiny_data(seed: int = 0) -> dict[str, np.ndarray]:
    """Sequences with structure (next = a fixed successor of the current item, 70% of the time)."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(NUM_ITEMS) + 1
    seqs = np.zeros((USERS, SEQ + 2), dtype=np.int64)
    for u in range(USERS):
        item = rng.integers(1, NUM_ITEMS + 1)
        for t in range(SEQ + 2):
            seqs[u, t] = item
            item = successor[item - 1] if rng.random() < 0.7 else rng.integers(1, NUM_ITEMS + 1)
    lengths = rng.integers(4, SEQ + 2, size=USERS)
    for u in range(USERS):  # left padding of various lengths
        seqs[u, : SEQ + 2 - lengths[u]] = 0
    inputs, labels = seqs[:, :SEQ].copy(), seqs[:, 1:SEQ + 1].copy()
    labels[inputs == 0] = 0
    negatives = rng.integers(1, NUM_ITEMS + 1, size=(USERS, 20))
    return {"inputs": inputs, "labels": labels, "mask": (labels > 0).astype(np.float32),
            "eval_inputs": seqs[:, 1:SEQ + 1].copy(), "eval_targets": seqs[:, SEQ + 1].copy(),
            "negatives": negatives}


def start_rank(rank: int, world: int, spec: dict[str, Any]) -> tuple[str, Any]:
    """In a rank of `spawn_ranks` (gloo group already up): the spec's layout and megatron's groups ->
    (device, layout)."""
    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.distributed import backend
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.model import parallel

    device = backend.setup("cpu")
    layout = ParallelLayout.build(ParallelConfig(tp=spec["tp"], pp=spec["pp"], vpp=spec["vpp"],
                                                 micro_batch_size=spec["mbs"]), world, spec["global_batch"])
    parallel.initialize(layout.tp, layout.pp, layout.vpp, seed=7)
    return device, layout


def spawn_ranks(worker: Any, world: int, spec: dict[str, Any], timeout_s: float, what: str) -> dict[str, Any]:
    """Run `worker(rank, world, spec)` on `world` spawned gloo ranks (all ended after `timeout_s`);
    rank 0's record (spec['out'])."""
    from hybridrec.distributed.spawn import RankFailed, run_ranks

    try:
        run_ranks(worker, world, spec, timeout_s=timeout_s, deadline_s=timeout_s, start_method="spawn")
    except RankFailed as exc:
        raise RankFailed(f"{what}: {exc}", exc.rank, exc.exitcode) from None
    return json.loads(Path(spec["out"]).read_text())


def _worker(rank: int, world: int, spec: dict[str, Any]) -> None:
    import torch.distributed as dist

    from hybridrec.config.model import ModelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.distributed import backend
    from hybridrec.eval import ranking
    from hybridrec.model import parallel, sasrec
    from hybridrec.train import checkpoint
    from hybridrec.train.loop import Batch, Trainer

    device, layout = start_rank(rank, world, spec)
    mcfg = ModelConfig(hidden_size=32, num_layers=spec["layers"], num_attention_heads=4, ffn_hidden_size=64,
                       dropout=0.0, vocab_pad_multiple=64,
                       num_layers_in_first_pipeline_stage=spec.get("first_stage_layers"),
                       num_layers_in_last_pipeline_stage=spec.get("last_stage_layers"))
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(NUM_ITEMS, 64, layout.tp), SEQ, NUM_ITEMS)
    tconfig = sasrec.transformer_config(mcfg, layout.tp, layout.pp, layout.vpp, device)
    chunks = sasrec.build_chunks(mcfg, shape, tconfig, backend.device())
    infos = [c.hybridrec_param_infos for c in chunks]
    if spec.get("load_full"):  # evaluate a checkpoint of any layout, reassembled from full tensors
        _, full = checkpoint.load_full_state(spec["load_full"])
        checkpoint.apply_full_state(chunks, infos, full)
    comm = _grad_sync_comm(spec, layout, rank, world)
    trainer = Trainer(chunks, tconfig, layout, TrainConfig(lr=spec["lr"], clip_grad=1.0),
                      use_distributed_optimizer=spec["distopt"],
                      finalize_model_grads_func=comm.finalize_model_grads if comm else None,
                      ddp_options=comm.ddp_options if comm else None)
    if comm is not None:
        comm.attach(trainer)
    data = tiny_data()
    from megatron.core import parallel_state as ps

    coords = layout.coords(rank)
    per_dp = spec["global_batch"] // layout.dp
    order = np.random.default_rng(3)
    perms = [order.permutation(USERS)[: spec["global_batch"]] for _ in range(spec["steps"])]
    start = 0
    if spec.get("resume_from"):
        extra = checkpoint.restore(spec["resume_from"], trainer, layout.to_dict())
        start = extra["data_step"]
    losses, norms = [], []
    for step in range(start, spec["steps"]):
        rows = perms[step][coords.dp * per_dp:(coords.dp + 1) * per_dp]
        batch = Batch(*(torch.from_numpy(data[k][rows]) for k in ("inputs", "labels", "mask")))
        result = trainer.train_step(batch)
        losses.append(result.loss)
        norms.append(result.grad_norm)
        if spec.get("save_at") == step + 1:
            checkpoint.save(spec["ckpt_root"], trainer, infos, {"tp": coords.tp, "pp": coords.pp, "dp": coords.dp},
                            {"layout": layout.to_dict(), "vocab_size": shape.vocab_size}, {"data_step": step + 1})
            if spec.get("stop_after_save"):
                break
    eval_set = ranking.EvalSet(torch.from_numpy(data["eval_inputs"]), torch.from_numpy(data["eval_targets"]),
                               {"uni100": torch.from_numpy(data["negatives"])})
    ranks = ranking.ranks(trainer.chunks, eval_set, ["full", "uni100"], NUM_ITEMS, batch_size=8)
    if rank == 0:
        record = {"losses": losses, "grad_norms": norms, "ranks": {k: v.tolist() for k, v in ranks.items()},
                  "metrics": ranking.hit_ndcg_table(ranks, [5, 10]), "layout": layout.name(),
                  "dp_group": ps.get_data_parallel_world_size()}
        Path(spec["out"]).write_text(json.dumps(record))
    dist.barrier()
    if comm is not None:
        comm.close()
    parallel.destroy()
    dist.destroy_process_group()


def _grad_sync_comm(spec: dict[str, Any], layout: Any, rank: int, world: int) -> Any:
    """spec['allreduce'] (AllreduceConfig fields, e.g. algorithm, overlap): the job's GradSync wiring
    (`comm.grad_sync_comm`) with even ranks in rack a, odd ranks in rack b; None keeps
    megatron's own DDP reduction."""
    if not spec.get("allreduce"):
        return None
    from hybridrec.config.comm import AllreduceConfig, CompressionConfig
    from hybridrec.distributed.comm import grad_sync_comm
    from hybridrec.topology import RackMap

    racks = RackMap.from_racks_list(["a" if r % 2 == 0 else "b" for r in range(world)])
    return grad_sync_comm(racks, layout.groups("dp"), AllreduceConfig(**spec["allreduce"]),
                          CompressionConfig(**spec.get("compression", {})), rank)


def run_layout(tp: int = 1, pp: int = 1, dp: int = 1, vpp: int = 1, *, steps: int = 4, mbs: int = 2,
               global_batch: int = 16, layers: int = 4, lr: float = 3e-3, distopt: bool = False,
               timeout_s: float = 900.0, **extra: Any) -> dict[str, Any]:
    """Train with the layout on tp*pp*dp spawned gloo processes; rank 0's record."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"tp": tp, "pp": pp, "vpp": vpp, "steps": steps, "mbs": mbs, "global_batch": global_batch,
                "layers": layers, "lr": lr, "distopt": distopt, "out": os.path.join(tmp, "record.json"), **extra}
        return spawn_ranks(_worker, tp * pp * dp, spec, timeout_s, f"layout tp{tp} pp{pp} dp{dp} vpp{vpp}")
