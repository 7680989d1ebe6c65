"""Item representations on MovieLens-100k with titles + genres: id vs text vs text+id (issue 10).

    .venv/bin/python benchmarks/item_repr.py [--steps 120] [--reprs id text text+id] [--fusion sum]

Data: `conf/data/ml100k_text.yaml` (recbole's ml-100k, 5-core, leave-one-out; item text = title (year)
| genres, WordPiece ids). Model: `conf/model/sasrec_small.yaml` (h=64, 2 blocks, dropout 0.2), one
process (tp=pp=dp=1), Adam lr `--lr`, global batch `--batch`, the same seed and batch order for every
representation. After `--steps` steps every test user is ranked (test target = last item, history =
everything before it) against all items (`full`) and against the 100 stored uniform negatives
(`uni100`); HR@10 = share of users whose target ranks in the top 10, NDCG@10 = mean 1/log2(rank+2)
inside the top 10 (pessimistic ties, `hybridrec.eval.metrics`). "cold" = the test users whose target
item has fewer than `--cold` interactions in the training part (`ProcessedData.item_counts`).
One markdown table is printed; nothing is claimed without its number.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np


def _data(args: argparse.Namespace) -> Any:
    from hybridrec.config.data import DataConfig
    from hybridrec.data.processed import load_processed

    cfg = DataConfig(source="ml100k", kcore=5, max_seq_len=args.seq, num_negatives=100, item_text=True,
                     text_max_tokens=32, text_vocab_size=4000, seed=0)
    return load_processed(cfg)


def train_and_rank(data: Any, item_repr: str, args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict]:
    import torch

    from hybridrec.config.model import ModelConfig
    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.data.batches import TrainBatchIterator, eval_examples, train_examples
    from hybridrec.distributed import backend
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.eval import ranking
    from hybridrec.model import parallel, sasrec
    from hybridrec.train.loop import Batch, Trainer

    parallel.initialize(1, 1, 1, seed=args.seed)
    mcfg = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=2, ffn_hidden_size=256, dropout=0.2,
                       vocab_pad_multiple=128, item_repr=item_repr, item_fusion=args.fusion,
                       item_text_pool=args.pool)
    layout = ParallelLayout.build(ParallelConfig(micro_batch_size=args.batch), 1, args.batch)
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(data.num_items, 128, 1), args.seq, data.num_items)
    tconfig = sasrec.transformer_config(mcfg, 1, 1, 1, "cpu")
    chunks = sasrec.build_chunks(mcfg, shape, tconfig, backend.device(), item_tokens=data.item_tokens)
    trainer = Trainer(chunks, tconfig, layout, TrainConfig(lr=args.lr, clip_grad=1.0))
    batches = TrainBatchIterator(train_examples(data, args.seq), args.batch, 0, 1, args.seed)
    start, losses = time.perf_counter(), []
    for _ in range(args.steps):
        inputs, labels, mask = next(batches)
        result = trainer.train_step(Batch(*(torch.from_numpy(np.ascontiguousarray(a))
                                            for a in (inputs, labels, mask))))
        losses.append(result.loss)
    train_s = time.perf_counter() - start
    inputs, targets = eval_examples(data, "test", args.seq)
    eval_set = ranking.EvalSet(torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64)),
                               {"uni100": torch.from_numpy(data.negatives["uni100/test"].astype(np.int64))})
    ranks = ranking.ranks(trainer.chunks, eval_set, ["full", "uni100"], data.num_items, batch_size=256)
    parallel.destroy()
    return ranks, {"train_s": train_s, "loss_first": losses[0], "loss_last": float(np.mean(losses[-5:])),
                   "params": sum(p.numel() for c in chunks for p in c.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", type=int, default=10, help="cold = target item with < this many train interactions")
    parser.add_argument("--reprs", nargs="+", default=["id", "text", "text+id"])
    parser.add_argument("--fusion", default="sum")
    parser.add_argument("--pool", default="mean")
    args = parser.parse_args()

    import torch
    import torch.distributed as dist

    from hybridrec.data.batches import eval_examples
    from hybridrec.distributed import backend
    from hybridrec.distributed.env import free_port
    from hybridrec.eval.metrics import hit_ndcg

    backend.setup("cpu")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    data = _data(args)
    _, targets = eval_examples(data, "test", args.seq)
    cold = data.item_counts[targets] < args.cold
    epochs = args.steps * args.batch / max(len(targets), 1)
    print(f"# ml-100k (5-core): {data.num_users} users, {data.num_items} items, test users with a cold target "
          f"(< {args.cold} train interactions): {int(cold.sum())}; {args.steps} steps x batch {args.batch} "
          f"(~{epochs:.0f} epochs), lr {args.lr}, h=64 L=2, dropout 0.2, seed {args.seed}, fusion {args.fusion}, "
          f"pool {args.pool}; torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    try:
        for item_repr in args.reprs:
            ranks, info = train_and_rank(data, item_repr, args)
            for protocol in ("uni100", "full"):
                r = ranks[protocol]
                hr, nd = hit_ndcg(r, 10)
                hr_c, nd_c = hit_ndcg(r[cold], 10)
                rows.append(f"| {item_repr} | {protocol} | {hr:.4f} | {nd:.4f} | {hr_c:.4f} | {nd_c:.4f} | "
                            f"{info['loss_last']:.3f} | {info['params']:,} | {info['train_s']:.0f} |")
            print(f"# {item_repr}: trained in {info['train_s']:.0f} s, loss {info['loss_first']:.3f} -> "
                  f"{info['loss_last']:.3f} (mean of last 5 steps)", flush=True)
    finally:
        dist.destroy_process_group()
    print(f"| item_repr | protocol | HR@10 all | NDCG@10 all | HR@10 cold (n={int(cold.sum())}) | NDCG@10 cold | "
          "final loss | params | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
