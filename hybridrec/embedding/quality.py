"""Quality check of 2D sparse parallelism: the same small recommender trained on the same synthetic
sequences and steps with an unsharded table (baseline) and with the sharded table under a given
layout, scored by HR@10 / NDCG@10 against 100 fixed uniform negatives on the test split.

The model is deliberately tiny so that only the embedding table and its optimizer matter: a
user's state at position t is the mean of the item embeddings of the history up to t, and an
item's score is its dot product with that state (one table for inputs and outputs). Loss:
softmax cross-entropy of the next item against 64 negatives shared by the global batch.
Data: `hybridrec.data.load_processed` with the synthetic `tiny` source.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist

from hybridrec.config.data import DataConfig
from hybridrec.data.batches import TrainBatchIterator, eval_examples, train_examples
from hybridrec.data.processed import ProcessedData, load_processed
from hybridrec.embedding.groups import EmbeddingGroups
from hybridrec.embedding.rowwise_adagrad import RowWiseAdagrad
from hybridrec.embedding.sharded import ShardedEmbedding, create_process_groups, init_rows
from hybridrec.eval.metrics import metrics_at, rank_in_candidates

Lookup = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class QualitySetup:
    dim: int = 32
    max_len: int = 20
    global_batch: int = 128
    steps: int = 300
    lr: float = 0.1
    num_negatives: int = 64
    init_std: float = 0.1
    seed: int = 0
    data_seed: int = 0
    cache_dir: str = ""


def load_data(setup: QualitySetup) -> ProcessedData:
    return load_processed(DataConfig(source="synthetic", synthetic_scale="tiny", seed=setup.data_seed,
                                     max_seq_len=setup.max_len, cache_dir=setup.cache_dir))


def batch_loss(lookup: Lookup, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               negatives: torch.Tensor, norm: float) -> torch.Tensor:
    """Sum over positions of the sampled-softmax loss, divided by `norm`."""
    present = (inputs != 0).to(torch.float32).unsqueeze(-1)
    history = torch.cumsum(lookup(inputs) * present, dim=1) / torch.cumsum(present, dim=1).clamp(min=1.0)
    positive = (history * lookup(labels)).sum(-1, keepdim=True)
    negative = history @ lookup(negatives).T
    log_p = torch.log_softmax(torch.cat([positive, negative], dim=-1), dim=-1)[..., 0]
    return -(log_p * mask).sum() / norm


def step_negatives(setup: QualitySetup, num_items: int, step: int) -> torch.Tensor:
    rng = np.random.default_rng([setup.seed, 7, step])
    return torch.from_numpy(rng.integers(1, num_items + 1, setup.num_negatives))


def evaluate(table: np.ndarray, data: ProcessedData, max_len: int) -> dict[str, float]:
    """HR@10 / NDCG@10 (uni100, test split) for a full (num_items + 1) x dim table."""
    inputs, targets = eval_examples(data, "test", max_len)
    present = (inputs != 0)[..., None]
    history = (table[inputs] * present).sum(1) / np.maximum(present.sum(1), 1)
    candidates = np.concatenate([targets[:, None], data.negatives["uni100/test"]], axis=1)
    scores = np.einsum("ud,ucd->uc", history, table[candidates])
    return metrics_at(rank_in_candidates(scores), [10])


def train_baseline(setup: QualitySetup, data: ProcessedData, momentum_scale: float = 1.0) -> dict:
    """Unsharded table, one process, global batch, row-wise AdaGrad."""
    rows = data.num_items + 1
    weight = torch.nn.Parameter(init_rows(np.arange(rows), rows, setup.dim, setup.init_std, setup.seed))
    opt = RowWiseAdagrad([weight], lr=setup.lr, momentum_scale=momentum_scale)
    batches = TrainBatchIterator(train_examples(data, setup.max_len), setup.global_batch, 0, 1, setup.seed)
    started = time.perf_counter()
    for step in range(setup.steps):
        inputs, labels, mask = (torch.from_numpy(a) for a in batches.batch(step))
        loss = batch_loss(lambda ids: torch.nn.functional.embedding(ids, weight, sparse=True),
                          inputs, labels, mask, step_negatives(setup, data.num_items, step),
                          float(mask.sum()))
        loss.backward()
        opt.step()
        weight.grad = None
    return {"layout": "unsharded", "wall_s": round(time.perf_counter() - started, 2),
            "final_loss": round(loss.item(), 4), **evaluate(weight.detach().numpy(), data, setup.max_len)}


def train_sharded(rank: int, world: int, group_size: int, replica_sync: str, momentum_scale: float,
                  setup: QualitySetup, data: ProcessedData) -> dict | None:
    """One rank of the sharded run (process group already initialised); rank 0 returns metrics."""
    groups = EmbeddingGroups.build(world, group_size)
    rows = data.num_items + 1
    table = ShardedEmbedding(rows, setup.dim, groups, rank, create_process_groups(groups, rank),
                             replica_sync_mode=replica_sync, init_std=setup.init_std, seed=setup.seed)
    opt = RowWiseAdagrad([table.weight], lr=setup.lr, momentum_scale=momentum_scale)
    examples = train_examples(data, setup.max_len)
    batches = TrainBatchIterator(examples, setup.global_batch, rank, world, setup.seed)
    started = time.perf_counter()
    for step in range(setup.steps):
        inputs, labels, mask = (torch.from_numpy(a) for a in batches.batch(step))
        global_count = float(examples[2][batches.global_indices(step)].sum())
        loss = batch_loss(table, inputs, labels, mask, step_negatives(setup, data.num_items, step),
                          global_count / world)
        loss.backward()
        table.finish_grad_sync()
        opt.step()
        table.sync_replica_weights(opt)
        table.weight.grad = None
    wall = time.perf_counter() - started
    shards = [None] * world
    dist.all_gather_object(shards, (table.global_rows(), table.weight.detach().numpy()))
    if rank != 0:
        return None
    full = np.zeros((rows, setup.dim), dtype=np.float32)
    for global_rows, values in shards:
        full[global_rows] = values
    return {"layout": f"E={groups.group_size} M={groups.num_replicas} sync={replica_sync} c={momentum_scale:g}",
            "wall_s": round(wall, 2), **evaluate(full, data, setup.max_len), "setup": asdict(setup)}
