"""Adaptive pipeline balancing inside the real job (jobs.train_job on 2 gloo ranks, pp=2): the profiled
split is what the job trains with (same loss curve as a run configured with that split by hand), and a
drifting stage makes the job re-partition live and train on to the end (slow: several megatron jobs).
With pp = 1 adaptive is a no-op that says why."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridrec.distributed.spawn import run_bounded, torchrun_command
from hybridrec.telemetry.recorder import read_run

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model=sasrec_tiny", "train=quick", "eval.protocols=[uni100]", "eval.baseline=false"]


def run_job(out: Path, overrides: list[str], env: dict[str, str] | None = None, nproc: int = 2) -> dict:
    args = [*BASE, *overrides, f"hydra.run.dir={out}"]
    cmd = torchrun_command(nproc, "jobs.train_job", args) if nproc > 1 else [sys.executable, "-m", "jobs.train_job", *args]
    proc = run_bounded(cmd, 700, cwd=ROOT, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done", summary.get("error")
    return summary


@pytest.mark.slow
def test_adaptive_job_trains_with_the_profiled_split_like_a_hand_configured_run(tmp_path: Path) -> None:
    # a padded vocabulary of 8192 makes output + loss heavy, so the profile usually moves layers off
    # the last stage; whatever it chose, the hand-configured run must match it step for step
    common = ["model.vocab_pad_multiple=8192", "train.steps=4", "train.global_batch_size=8"]
    adaptive = run_job(tmp_path / "adaptive", ["parallel=pp2_adaptive", "parallel.micro_batch_size=4", *common])
    bal = adaptive["balance"]
    split, micro = bal["layers_per_stage"], bal["micro"]
    assert bal["mode"] == "adaptive" and bal["applied"] and sum(split) == 4 and min(split) >= 1
    assert bal["uniform"]["layers_per_stage"] == [2, 2]
    # the chosen split is no worse than the even one by the profile's own prediction
    assert bal["predicted_max_over_mean"] <= bal["uniform"]["predicted_max_over_mean"] + 1e-12
    assert "chose layers/stage" in bal["reason"]
    # dynamic micro-batching: the layout runs the chosen size and count, the global batch is unchanged
    assert adaptive["layout"]["micro_batch_size"] == micro["micro_batch_size"]
    assert adaptive["layout"]["num_micro_batches"] == micro["num_micro_batches"]
    assert adaptive["layout"]["global_batch_size"] == 8
    direct = run_job(tmp_path / "direct", [
        "parallel=pp2", *common, f"model.num_layers_in_first_pipeline_stage={split[0]}",
        f"model.num_layers_in_last_pipeline_stage={split[1]}",
        f"parallel.micro_batch_size={micro['micro_batch_size']}"])
    np.testing.assert_allclose([loss for _, loss in adaptive["loss_curve"]],
                               [loss for _, loss in direct["loss_curve"]], rtol=1e-6)
    # the plan reaches telemetry too
    meta = read_run(tmp_path / "adaptive")[0]["metadata"]
    assert meta["balance"]["layers_per_stage"] == split


@pytest.mark.slow
def test_a_slow_stage_triggers_a_live_repartition_and_training_continues(tmp_path: Path) -> None:
    # the stage the start-up plan loaded most runs 20x slower (HYBRIDREC_SLOW_STAGE): after the
    # monitor's window (5) and cooldown (10 steps) the job re-partitions at step 10 and goes on, with
    # the loss curve of a run that kept the first split (nothing about the math changed)
    common = ["parallel.micro_batch_size=8", "train.global_batch_size=16", "train.steps=14"]
    summary = run_job(tmp_path, ["parallel=pp2_adaptive", "parallel.dynamic_micro_batch=false", *common],
                      env={"HYBRIDREC_SLOW_STAGE": "stage=max,factor=20"})
    bal = summary["balance"]
    assert len(bal["rebalances"]) == 1, bal["rebalances"]
    event = bal["rebalances"][0]
    old, new = event["old"], event["new"]
    slow = max(i for i, n in enumerate(old) if n == max(old))
    assert event["step"] == 10 and event["applied"] and event["optimizer_state"] == "kept"
    assert new[slow] < old[slow] and sum(new) == sum(old) == 4
    assert "drift" in event["reason"]
    curve = summary["loss_curve"]
    assert [step for step, _ in curve] == list(range(1, 15)) and summary["steps"] == 14
    assert all(math.isfinite(loss) for _, loss in curve)
    # every rank trained its new share of layers after the re-partition (recorded per step)
    runs = read_run(tmp_path)
    for rank, data in runs.items():
        layers = data["steps"]["stage_layers"]
        assert list(layers[:10]) == [old[rank]] * 10 and list(layers[10:]) == [new[rank]] * 4
    assert runs[0]["metadata"]["balance"]["rebalances"][0]["new"] == new  # close() stored the events
    # weights, Adam state and step carried exactly: the curve is the one of a run that never moved a layer
    (tmp_path / "direct").mkdir()
    direct = run_job(tmp_path / "direct", ["parallel=pp2", *common, f"model.num_layers_in_first_pipeline_stage={old[0]}",
                                           f"model.num_layers_in_last_pipeline_stage={old[1]}"])
    np.testing.assert_allclose([loss for _, loss in curve], [loss for _, loss in direct["loss_curve"]], rtol=1e-5)


def test_adaptive_with_one_stage_is_a_noop_with_a_reason(tmp_path: Path) -> None:
    summary = run_job(tmp_path, ["parallel.balance=adaptive", "train.steps=2"], nproc=1)
    assert summary["balance"]["mode"] == "adaptive" and summary["balance"]["applied"] is False
    assert "pp=1" in summary["balance"]["reason"]
