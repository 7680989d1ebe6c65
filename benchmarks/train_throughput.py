"""Single-process training throughput of the megatron SASRec model (samples/s), CPU or one GPU.

    .venv/bin/python benchmarks/train_throughput.py [--items 420 63001] [--steps 20] [--batch 128]

Data: synthetic sequences of random item ids (left-padded to random lengths; throughput does not
depend on which ids they are). For each vocabulary size the full training step is timed
(forward, backward, megatron DDP finalize, Adam step) after warm-up steps.
samples/s = global batch / median step time; tokens/s counts real (unmasked) labels.
"""

from __future__ import annotations

import argparse
import statistics
import time


def measure(items: int, args: argparse.Namespace) -> dict[str, float]:
    import torch

    from hybridrec.config.model import ModelConfig
    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.config.train import TrainConfig
    from hybridrec.distributed import backend
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.model import sasrec
    from hybridrec.train.loop import Batch, Trainer

    mcfg = ModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=args.heads,
                       ffn_hidden_size=4 * args.hidden, dropout=0.1)
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(items, 128, 1), args.seq, items)
    tconfig = sasrec.transformer_config(mcfg, 1, 1, 1, backend.setup(args.device))
    device = backend.device()
    trainer = Trainer(sasrec.build_chunks(mcfg, shape, tconfig, device), tconfig,
                      ParallelLayout.build(ParallelConfig(micro_batch_size=args.batch), 1, args.batch),
                      TrainConfig(lr=1e-3))
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, items + 1, (args.batch, args.seq + 1), generator=gen)
    lengths = torch.randint(2, args.seq + 2, (args.batch, 1), generator=gen)
    seqs[torch.arange(args.seq + 1).unsqueeze(0) < (args.seq + 1 - lengths)] = 0
    inputs, labels = seqs[:, :-1], seqs[:, 1:].clone()
    labels[inputs == 0] = 0
    batch = Batch(inputs, labels, (labels > 0).float()).to(device)
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    params = sum(p.numel() for chunk in trainer.chunks for p in chunk.parameters())
    return {"items": items, "vocab": shape.vocab_size, "params": params, "step_s": median,
            "samples_per_s": args.batch / median, "tokens_per_s": float(batch.mask.sum()) / median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[420, 63001],
                        help="catalogue sizes (420 ~ synthetic tiny, 63001 = Amazon Electronics 5-core)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import torch
    import torch.distributed as dist

    from hybridrec.distributed import backend
    from hybridrec.distributed.env import free_port
    from hybridrec.model import parallel

    device = backend.setup(args.device)
    dist.init_process_group(backend.process_group_backend(), init_method=f"tcp://127.0.0.1:{free_port()}",
                            rank=0, world_size=1)
    parallel.initialize(1, 1, 1, seed=0)
    print(f"# single-process training throughput on {device} (torch threads: {torch.get_num_threads()}); "
          f"model h={args.hidden} L={args.layers} heads={args.heads} seq={args.seq} batch={args.batch}; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print("| items | vocab | params | step s (median) | samples/s = batch/step | real labels/s |")
    print("|---|---|---|---|---|---|")
    try:
        for items in args.items:
            row = measure(items, args)
            print(f"| {row['items']} | {row['vocab']} | {row['params']:,} | {row['step_s']:.4f} | "
                  f"{row['samples_per_s']:.1f} | {row['tokens_per_s']:.0f} |", flush=True)
    finally:
        parallel.destroy()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
