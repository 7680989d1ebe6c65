"""Shared harness (no tests of its own) for the item-text model: like tests/test_train_harness.py (same
tiny sequences, same training loop and eval set) but with synthetic item token ids and
`model.item_repr` / `item_fusion` / `item_text_pool` chosen per run. Returns rank 0's record."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from test_train_harness import NUM_ITEMS, SEQ, USERS, spawn_ranks, start_rank, tiny_data

TEXT_VOCAB = 90  # padded to 128 for tp 1 and 2 with vocab_pad_multiple 64
MAX_TOKENS = 6


def tiny_item_tokens(seed: int = 0) -> Any:
    """ItemTokens-like object: items of one 'genre' share a token, plus 1-4 own tokens; 5 items without text."""
    from hybridrec.data.text_tokens import ItemTokens

    rng = np.random.default_rng(seed)
    ids = np.zeros((NUM_ITEMS + 1, MAX_TOKENS), dtype=np.int32)
    for item in range(1, NUM_ITEMS + 1):
        if item % 20 == 7:
            continue  # no metadata
        words = [2 + item % 8] + list(rng.integers(10, TEXT_VOCAB, size=rng.integers(1, 5)))
        ids[item, : len(words)] = words
    lengths = (ids > 0).sum(axis=1).astype(np.int32)
    return ItemTokens(token_ids=ids, lengths=lengths, vocab_size=TEXT_VOCAB, tokenizer_json="{}")


def _worker(rank: int, world: int, spec: dict[str, Any]) -> None:
    import torch.distributed as dist

    from hybridrec.config.model import ModelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.distributed import backend
    from hybridrec.eval import ranking
    from hybridrec.model import parallel, sasrec
    from hybridrec.train.loop import Batch, Trainer

    device, layout = start_rank(rank, world, spec)
    mcfg = ModelConfig(hidden_size=32, num_layers=spec["layers"], num_attention_heads=4, ffn_hidden_size=64,
                       dropout=0.0, vocab_pad_multiple=64, item_repr=spec["item_repr"],
                       item_fusion=spec["fusion"], item_text_pool=spec["pool"])
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(NUM_ITEMS, 64, layout.tp), SEQ, NUM_ITEMS)
    tconfig = sasrec.transformer_config(mcfg, layout.tp, layout.pp, layout.vpp, device)
    chunks = sasrec.build_chunks(mcfg, shape, tconfig, backend.device(), item_tokens=tiny_item_tokens())
    param_names = sorted({info.global_name for c in chunks for info in c.hybridrec_param_infos})
    trainer = Trainer(chunks, tconfig, layout, TrainConfig(lr=spec["lr"], clip_grad=spec["clip"]))
    data = tiny_data()
    coords = layout.coords(rank)
    per_dp = spec["global_batch"] // layout.dp
    order = np.random.default_rng(3)
    perms = [order.permutation(USERS)[: spec["global_batch"]] for _ in range(spec["steps"])]
    losses, norms = [], []
    for step in range(spec["steps"]):
        rows = perms[step][coords.dp * per_dp:(coords.dp + 1) * per_dp]
        result = trainer.train_step(Batch(*(torch.from_numpy(data[k][rows]) for k in ("inputs", "labels", "mask"))))
        losses.append(result.loss)
        norms.append(result.grad_norm)
    eval_set = ranking.EvalSet(torch.from_numpy(data["eval_inputs"]), torch.from_numpy(data["eval_targets"]),
                               {"uni100": torch.from_numpy(data["negatives"])})
    table_calls = 0
    for chunk in chunks:
        if hasattr(chunk, "item_table"):
            original = chunk.item_table

            def counted(original=original):
                nonlocal table_calls
                table_calls += 1
                return original()

            chunk.item_table = counted
    ranks = ranking.ranks(trainer.chunks, eval_set, ["full", "uni100"], NUM_ITEMS, batch_size=8)
    if rank == 0:
        record = {"losses": losses, "grad_norms": norms, "ranks": {k: v.tolist() for k, v in ranks.items()},
                  "metrics": ranking.hit_ndcg_table(ranks, [5, 10]), "layout": layout.name(),
                  "param_names": param_names, "eval_table_calls": table_calls}
        Path(spec["out"]).write_text(json.dumps(record))
    dist.barrier()
    parallel.destroy()
    dist.destroy_process_group()


def run_text_layout(tp: int = 1, pp: int = 1, dp: int = 1, vpp: int = 1, *, item_repr: str = "text+id",
                    fusion: str = "sum", pool: str = "mean", steps: int = 4, mbs: int = 2, global_batch: int = 16,
                    layers: int = 4, lr: float = 3e-3, clip: float = 1.0, timeout_s: float = 900.0) -> dict[str, Any]:
    """Train the item-text model with the layout on tp*pp*dp spawned gloo processes; rank 0's record."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"tp": tp, "pp": pp, "vpp": vpp, "steps": steps, "mbs": mbs, "global_batch": global_batch,
                "layers": layers, "lr": lr, "clip": clip, "item_repr": item_repr, "fusion": fusion, "pool": pool,
                "out": os.path.join(tmp, "record.json")}
        return spawn_ranks(_worker, tp * pp * dp, spec, timeout_s, f"item-text layout tp{tp} pp{pp} dp{dp}")
