"""The optimizer recipe of issue 17 on the real megatron optimizer (one gloo process): the learning rate of
every update follows warmup + decay, weight decay shrinks 2-D weights but not biases / norm weights, label
smoothing gives megatron's smoothed cross entropy, and a bad schedule is refused naming the field."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_train_harness import spawn_ranks, start_rank

from hybridrec.config.train import TrainConfig, validate_train
from hybridrec.errors import ConfigError

ITEMS, SEQ, ROWS = 100, 8, 16


def _train(spec: dict[str, Any], device: str, layout: Any) -> dict[str, Any]:
    from hybridrec.config.model import ModelConfig
    from hybridrec.distributed import backend
    from hybridrec.model import sasrec
    from hybridrec.train.loop import Batch, Trainer

    mcfg = ModelConfig(hidden_size=16, num_layers=1, num_attention_heads=2, ffn_hidden_size=32, dropout=0.0,
                       vocab_pad_multiple=64)
    shape = sasrec.ModelShape(sasrec.padded_vocab_size(ITEMS, 64, 1), SEQ, ITEMS)
    tconfig = sasrec.transformer_config(mcfg, 1, 1, 1, device)
    trainer = Trainer(sasrec.build_chunks(mcfg, shape, tconfig, backend.device()), tconfig, layout,
                      TrainConfig(steps=spec["steps"], **spec["train"]))
    rng = np.random.default_rng(0)
    inputs = torch.from_numpy(rng.integers(1, ITEMS + 1, size=(ROWS, SEQ)))
    labels = torch.from_numpy(rng.integers(1, ITEMS + 1, size=(ROWS, SEQ)))
    mask = torch.from_numpy((rng.random((ROWS, SEQ)) < 0.8).astype(np.float32))
    model = sasrec.unwrap(trainer.chunks[0])
    record: dict[str, Any] = {"lrs": [], "losses": [],
                              "before": {name: p.detach().tolist() for name, p in model.named_parameters()}}
    eps = spec["train"].get("label_smoothing", 0.0)
    if eps:  # the smoothed CE by torch, from the initial weights
        with torch.no_grad():
            logits = model(inputs, sasrec.position_ids(inputs), sasrec.attention_mask(inputs, True)).float()
        vocab = logits.shape[-1]
        # megatron spreads eps over the V-1 other classes; torch over all V: eps_torch = eps * V / (V-1)
        token = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), reduction="none",
                                                  label_smoothing=eps * vocab / (vocab - 1)).reshape(ROWS, SEQ)
        record["reference_loss"] = float((token * mask).sum() / mask.sum())
    for _ in range(spec["steps"]):
        result = trainer.train_step(Batch(inputs, labels, mask))
        record["lrs"].append(result.lr)
        record["losses"].append(result.loss)
    record["groups"] = [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in trainer.optimizer.param_groups]
    record["after"] = {name: p.detach().tolist() for name, p in model.named_parameters()}
    return record


def _worker(rank: int, world: int, spec: dict[str, Any]) -> None:
    import torch.distributed as dist

    from hybridrec.model import parallel

    device, layout = start_rank(rank, world, spec)
    records = {name: _train(run, device, layout) for name, run in spec["runs"].items()}
    Path(spec["out"]).write_text(json.dumps(records))
    parallel.destroy()
    dist.destroy_process_group()


RUNS = {
    "cosine": {"steps": 10, "train": {"lr": 1e-3, "warmup_steps": 4, "lr_decay": "cosine", "min_lr": 1e-4}},
    "constant": {"steps": 3, "train": {"lr": 2e-3}},
    "decayed": {"steps": 1, "train": {"lr": 1e-2, "weight_decay": 5.0, "clip_grad": 0.0}},
    "plain": {"steps": 1, "train": {"lr": 1e-2, "clip_grad": 0.0}},
    "smoothed": {"steps": 1, "train": {"lr": 1e-3, "label_smoothing": 0.1}},
}


@pytest.fixture(scope="module")
def records() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"tp": 1, "pp": 1, "vpp": 1, "mbs": ROWS, "global_batch": ROWS, "runs": RUNS,
                "out": os.path.join(tmp, "record.json")}
        return spawn_ranks(_worker, 1, spec, 300, "schedule runs")


def test_warmup_then_cosine_decay_per_update(records: dict[str, Any]) -> None:
    expected = [1e-3 * t / 4 for t in range(1, 5)]
    expected += [1e-4 + 0.5 * (1 + math.cos(math.pi * (t - 4) / 6)) * 9e-4 for t in range(5, 11)]
    np.testing.assert_allclose(records["cosine"]["lrs"], expected, rtol=1e-12)
    assert all(group["lr"] == pytest.approx(1e-4) for group in records["cosine"]["groups"])


def test_constant_schedule_is_the_plain_lr(records: dict[str, Any]) -> None:
    assert records["constant"]["lrs"] == [2e-3] * 3


def test_weight_decay_skips_biases_and_norm_weights(records: dict[str, Any]) -> None:
    decayed, plain = records["decayed"], records["plain"]
    assert sorted(g["weight_decay"] for g in decayed["groups"]) == [0.0, 5.0]
    # one AdamW update from the same weights and gradients: w' = w (1 - lr wd) - lr u, so the two runs
    # differ by exactly -lr * wd * w on 2-D weights and not at all on biases / norm weights
    for name, before in decayed["before"].items():
        w = np.asarray(before)
        diff = np.asarray(decayed["after"][name]) - np.asarray(plain["after"][name])
        expected = -1e-2 * 5.0 * w if w.ndim >= 2 else np.zeros_like(w)
        np.testing.assert_allclose(diff, expected, atol=1e-6, err_msg=name)


def test_label_smoothing_is_megatrons_smoothed_cross_entropy(records: dict[str, Any]) -> None:
    smoothed = records["smoothed"]
    assert smoothed["losses"][0] == pytest.approx(smoothed["reference_loss"], rel=1e-5)
    assert smoothed["losses"][0] > records["plain"]["losses"][0]


@pytest.mark.parametrize("fields,field", [
    ({"lr_decay": "step"}, "train.lr_decay"),
    ({"warmup_steps": 200, "steps": 200}, "train.warmup_steps"),
    ({"min_lr": 1.0}, "train.min_lr"),
    ({"label_smoothing": 1.0}, "train.label_smoothing"),
    ({"select_metric": "uni100/HR@10"}, "train.select_metric"),
    ({"eval_every": -1}, "train.eval_every"),
])
def test_bad_fields_are_refused_by_name(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        validate_train(TrainConfig(**fields))
