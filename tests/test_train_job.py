"""The Hydra job end to end on one process (and, slow, on 2 ranks under torchrun): it trains
(loss goes down), evaluates every protocol, writes summary.json, telemetry and a checkpoint that
reassembles into full tensors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hybridrec.distributed.spawn import run_bounded, torchrun_command
from hybridrec.train import checkpoint

ARGS = ["model=sasrec_tiny", "train=quick", "train.steps=12", "train.lr=0.005", "train.log_every=4",
        "eval.batch_size=512"]


def run_job(out: Path, extra: list[str], nproc: int = 1) -> dict:
    args = [*ARGS, *extra, f"hydra.run.dir={out}", f"data.cache_dir={out / 'cache'}"]
    cmd = torchrun_command(nproc, "jobs.train_job", args) if nproc > 1 else [sys.executable, "-m", "jobs.train_job", *args]
    proc = run_bounded(cmd, 1000, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "samples/s" in proc.stdout  # progress lines from rank 0
    return json.loads((out / "summary.json").read_text())


def check_summary(summary: dict, out: Path, ranks: int) -> None:
    assert summary["status"] == "done" and summary["error"] is None
    assert summary["steps"] == 12 and summary["samples_per_s"] > 0
    curve = [loss for _, loss in summary["loss_curve"]]
    assert curve[-1] < curve[0] - 0.05
    for protocol in ("full", "uni100", "pop100"):
        assert 0.0 <= summary["metrics"][protocol]["NDCG@10"] <= summary["metrics"][protocol]["HR@10"] <= 1.0
        assert protocol in summary["baseline_most_popular"]
    assert len(list((out / "telemetry").glob("rank*.h5"))) == ranks
    ckpt = checkpoint.latest(out / "checkpoints")
    manifest, full = checkpoint.load_full_state(ckpt)
    assert manifest["step"] == 12 and manifest["world_size"] == ranks
    assert full["embedding.word_embeddings.weight"].shape[0] == summary["data"]["vocab_size"]


def test_one_process_job_trains_evaluates_and_writes_results(tmp_path: Path) -> None:
    check_summary(run_job(tmp_path, []), tmp_path, 1)


@pytest.mark.slow
def test_tensor_parallel_job_on_two_ranks(tmp_path: Path) -> None:
    check_summary(run_job(tmp_path, ["parallel=tp2"], nproc=2), tmp_path, 2)
