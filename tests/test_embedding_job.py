"""The 2D table as the job's item table, through `jobs.train_job` under torchrun:

- E = 1 (replicated) with replica_sync=grad and the table on Adam with the dense model's settings
  reproduces the job with megatron's own table step for step (loss relative difference <= 1e-6,
  same HR@10; clipping off, since the table's norm is not in megatron's clip);
- 4 ranks, E = 2, momentum-scaled row-wise AdaGrad with weight averaging: trains, evaluates, each
  rank holds ceil(items / 2) rows (the record's bytes are the accounting's), and resuming from the
  step-2 checkpoint gives the uninterrupted run's losses and metrics exactly;
- E = 2 with gradient averaging through a compressed GradSync moves replica bytes each step;
- under tp the table is copied over each replica's tp ranks: tp2 (E = 1) and tp2 x dp2 (E = 2) on Adam
  reproduce megatron's own vocab-parallel table step for step; tp2 x dp2 with E = 1 (M = 2) and
  weight averaging keeps the tp copies and the replicas identical and resumes exactly;
- with validation and early stopping the table's rows are part of the best weights: the test metrics
  of an early-stopped run equal those of a run trained exactly to its best step.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
JOB = ["model=sasrec_tiny", "train=quick", "train.lr=0.005", "train.clip_grad=0", "parallel=auto_dp",
       "parallel.micro_batch_size=8", "eval.protocols=[full,uni100]", "eval.baseline=false", "telemetry=off"]


def torchrun_job(out: Path, nproc: int, extra: list[str], cache: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "jobs.train_job", *JOB, *extra, f"hydra.run.dir={out}", f"data.cache_dir={cache}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done", summary.get("error")
    return summary


def test_replicated_table_on_adam_reproduces_the_megatron_table_loss_curve(tmp_path: Path) -> None:
    steps = ["train.steps=6", "train.save_final=false"]
    ref = torchrun_job(tmp_path / "off", 2, [*steps, "embedding=off"], tmp_path / "cache")
    got = torchrun_job(tmp_path / "e1", 2, [*steps, "embedding=replicated", "embedding.optimizer=adam"],
                       tmp_path / "cache")
    assert "embedding" not in ref and got["embedding"]["group_size"] == 1 and got["embedding"]["replicas"] == 2
    assert_same_curve(ref, got)


def assert_same_curve(ref: dict, got: dict, rtol: float = 1e-6) -> None:
    for (step, a), (_, b) in zip(ref["loss_curve"], got["loss_curve"], strict=True):
        assert abs(a - b) <= rtol * abs(a), (step, a, b)
    assert ref["loss_curve"][-1][1] < ref["loss_curve"][0][1] - 0.05  # it trains: the comparison means something
    for protocol in ("full", "uni100"):
        assert abs(ref["metrics"][protocol]["HR@10"] - got["metrics"][protocol]["HR@10"]) < 1e-9


def test_table_under_tp2_reproduces_megatrons_vocab_parallel_table(tmp_path: Path) -> None:
    steps = ["train.steps=6", "train.save_final=false", "parallel=tp2"]
    ref = torchrun_job(tmp_path / "off", 2, [*steps, "embedding=off"], tmp_path / "cache")
    got = torchrun_job(tmp_path / "e1", 2, [*steps, "embedding=replicated", "embedding.optimizer=adam"],
                       tmp_path / "cache")
    rec = got["embedding"]
    assert (rec["group_size"], rec["replicas"], rec["tp_copies"]) == (1, 1, 2)
    assert_same_curve(ref, got)


@pytest.mark.slow
def test_table_sharded_under_tp2_x_dp2_reproduces_megatron(tmp_path: Path) -> None:
    steps = ["train.steps=6", "train.save_final=false", "parallel=tp2", "parallel.dp=2"]
    ref = torchrun_job(tmp_path / "off", 4, [*steps, "embedding=off"], tmp_path / "cache")
    got = torchrun_job(tmp_path / "e2", 4, [*steps, "embedding=two_d", "embedding.group_size=2",
                                            "embedding.optimizer=adam", "embedding.replica_sync=grad"],
                       tmp_path / "cache")
    rec, items = got["embedding"], got["data"]["num_items"]
    assert (rec["group_size"], rec["replicas"], rec["tp_copies"]) == (2, 1, 2)
    assert rec["max_rows_over_ranks"] == math.ceil(items / 2) and rec["alltoall_bytes_per_step_mean"] > 0
    assert_same_curve(ref, got)


@pytest.mark.slow
def test_tp_copies_and_replicas_stay_identical_under_weight_averaging_and_resume(tmp_path: Path) -> None:
    import torch

    from hybridrec.embedding.checkpoint_table import full_word_embedding
    from hybridrec.train import checkpoint

    cache = tmp_path / "cache"
    run = ["train.steps=4", "train.checkpoint_every=2", "parallel=tp2", "parallel.dp=2", "embedding=replicated",
           "embedding.optimizer=momentum_scaled_rowwise_adagrad", "embedding.replica_sync=weights"]
    full = torchrun_job(tmp_path / "full", 4, run, cache)
    rec, items = full["embedding"], full["data"]["num_items"]
    assert (rec["group_size"], rec["replicas"], rec["tp_copies"], rec["momentum_scale"]) == (1, 2, 2, 2.0)
    assert rec["replica_sync_bytes_per_step_mean"] > 0 and full["loss_curve"][-1][1] < full["loss_curve"][0][1]
    ckpt = checkpoint.step_dir(tmp_path / "full" / "checkpoints", 4)
    tables = [torch.load(checkpoint.rank_file(ckpt, r), weights_only=False)["extra"]["embedding_table"]
              for r in range(4)]
    for r in range(1, 4):  # global ranks: dp * 2 + tp; every rank holds all rows, all alike
        assert torch.equal(tables[0]["weight"], tables[r]["weight"]), r
        assert torch.equal(tables[0]["optimizer"]["state"][0]["sum"], tables[r]["optimizer"]["state"][0]["sum"])
    word = full_word_embedding(ckpt)  # extra rows from both tp slices, items from tp index 0's table
    assert tuple(word.shape) == (full["data"]["vocab_size"], 32)
    assert torch.equal(word[1:items + 1], tables[0]["weight"])

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", resumed_dir / "step_00000002")
    resumed = torchrun_job(resumed_dir / "run", 4, [*run, f"train.resume={resumed_dir / 'step_00000002'}"], cache)
    assert resumed["loss_curve"] == full["loss_curve"][2:]
    assert resumed["metrics"] == full["metrics"]


@pytest.mark.slow
def test_four_ranks_two_d_table_holds_half_the_rows_and_resumes_exactly(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = ["train.steps=4", "train.checkpoint_every=2", "embedding=two_d", "embedding.group_size=2"]
    full = torchrun_job(tmp_path / "full", 4, run, cache)
    rec, items = full["embedding"], full["data"]["num_items"]
    assert (rec["group_size"], rec["replicas"], rec["replica_sync"]) == (2, 2, "weights")
    assert rec["optimizer"] == "momentum_scaled_rowwise_adagrad" and rec["momentum_scale"] == 2.0
    assert rec["max_rows_over_ranks"] <= math.ceil(items / 2) == rec["rows_bound_ceil_items_over_E"]
    assert rec["parameter_bytes_per_rank"] == rec["accounting"]["parameter_bytes"] == rec["rows_per_rank"] * 32 * 4
    assert rec["optimizer_state_bytes_per_rank"] == rec["accounting"]["optimizer_state_bytes"] == rec["rows_per_rank"] * 4
    assert 0 < rec["alltoall_bytes_per_step_mean"] <= rec["alltoall_bytes_per_step_max"] <= rec["alltoall_bound_bytes_per_step"]
    assert rec["replica_sync_bytes_per_step_mean"] > 0 and rec["scoring_bytes_per_step_mean"] > 0
    assert full["loss_curve"][-1][1] < full["loss_curve"][0][1]
    assert 0.0 < full["metrics"]["uni100"]["HR@10"] <= 1.0

    # weights mode: after every step the replicas of a shard (ranks 0 and 2; 1 and 3) hold the same rows
    # and AdaGrad accumulators; the shards of one group (ranks 0 and 1) hold different rows
    import torch

    from hybridrec.train import checkpoint

    for step in (2, 4):
        ckpt = checkpoint.step_dir(tmp_path / "full" / "checkpoints", step)
        tables = [torch.load(checkpoint.rank_file(ckpt, r), weights_only=False)["extra"]["embedding_table"]
                  for r in range(4)]
        for a, b in ((0, 2), (1, 3)):
            assert torch.equal(tables[a]["weight"], tables[b]["weight"])
            assert torch.equal(tables[a]["optimizer"]["state"][0]["sum"], tables[b]["optimizer"]["state"][0]["sum"])
        assert tables[0]["weight"].shape[0] + tables[1]["weight"].shape[0] == items
    # one-process reassembly of the unsharded word embedding: modulo rows, shard 1 holds ids 2, 4, 6, ...
    from hybridrec.embedding.checkpoint_table import full_word_embedding

    word = full_word_embedding(ckpt)
    assert tuple(word.shape) == (full["data"]["vocab_size"], 32)
    assert torch.equal(word[2:items + 1:2], tables[1]["weight"]) and torch.equal(word[1:items + 1:2], tables[0]["weight"])

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", resumed_dir / "step_00000002")
    resumed = torchrun_job(resumed_dir / "run", 4, [*run, f"train.resume={resumed_dir / 'step_00000002'}"], cache)
    assert resumed["loss_curve"] == full["loss_curve"][2:]
    assert resumed["metrics"] == full["metrics"]


@pytest.mark.slow
def test_gradient_averaging_goes_through_the_compressed_grad_sync(tmp_path: Path) -> None:
    got = torchrun_job(tmp_path / "grad", 4, ["train.steps=3", "train.save_final=false", "embedding=two_d_exact",
                                              "allreduce=flat", "compression=fp16"], tmp_path / "cache")
    rec = got["embedding"]
    assert rec["replica_sync"] == "grad" and rec["replica_sync_engine"] == "flat fp16 sync"
    # ring all-reduce of the fp16 shard gradient over M = 2 replicas: 2 (M-1)/M x rows x dim x 2 bytes
    assert rec["replica_sync_bytes_per_step_mean"] == pytest.approx(rec["rows_per_rank"] * 32 * 2, rel=0.01)


@pytest.mark.slow
def test_best_validation_weights_include_the_tables_rows(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    table = ["embedding=two_d", "embedding.group_size=2", "embedding.optimizer=adam", "train.lr=0.01",
             "train.save_final=false"]
    a = torchrun_job(tmp_path / "a", 2, [*table, "train.steps=60", "train.eval_every=5", "train.patience=2"], cache)
    val = a["validation"]
    assert val["early_stopped"] and val["test_weights"] == "best" and val["best_step"] < a["steps"]
    b = torchrun_job(tmp_path / "b", 2, [*table, f"train.steps={val['best_step']}"], cache)
    assert "validation" not in b and a["metrics"] == b["metrics"]  # best dense weights *and* best table rows
    assert a["metrics_last_step"] != a["metrics"]
