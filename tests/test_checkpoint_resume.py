"""Checkpoints: stopping after N steps and resuming gives exactly the N+M-step loss curve (model,
optimizer, data position and RNG restored), and a checkpoint of a tp2 x pp2 run reassembles into a
one-process model that ranks the eval set exactly as the sharded run did."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_harness import run_layout

from hybridrec.train import checkpoint

N, TOTAL = 3, 6


def resume_matches_straight(tmp_path: Path, **layout) -> None:
    straight = run_layout(steps=TOTAL, **layout)
    first = run_layout(steps=TOTAL, save_at=N, stop_after_save=True, ckpt_root=str(tmp_path), **layout)
    ckpt = checkpoint.latest(tmp_path)
    assert ckpt is not None and ckpt.name == f"step_{N:08d}"
    manifest = checkpoint.read_manifest(ckpt)
    assert manifest["step"] == N and len(manifest["files"]) == manifest["world_size"]
    second = run_layout(steps=TOTAL, resume_from=str(ckpt), **layout)
    assert len(first["losses"]) == N and len(second["losses"]) == TOTAL - N
    assert first["losses"] + second["losses"] == straight["losses"]  # bit-exact
    assert second["ranks"] == straight["ranks"]


def test_resume_one_process_continues_the_exact_loss_curve(tmp_path: Path) -> None:
    resume_matches_straight(tmp_path)


@pytest.mark.slow
def test_resume_hybrid_layout_continues_the_exact_loss_curve(tmp_path: Path) -> None:
    resume_matches_straight(tmp_path, tp=2, pp=2, dp=1, distopt=False)


@pytest.mark.slow
def test_resume_with_distributed_optimizer(tmp_path: Path) -> None:
    resume_matches_straight(tmp_path, dp=2, distopt=True)


@pytest.mark.slow
def test_tp2_pp2_checkpoint_evaluates_identically_on_one_process(tmp_path: Path) -> None:
    sharded = run_layout(2, 2, 1, steps=TOTAL, save_at=N, stop_after_save=True, ckpt_root=str(tmp_path))
    ckpt = checkpoint.latest(tmp_path)
    _, full = checkpoint.load_full_state(ckpt)
    assert full["embedding.word_embeddings.weight"].shape == (128, 32)
    assert full["decoder.layers.3.self_attention.linear_qkv.weight"].shape == (96, 32)
    single = run_layout(steps=0, load_full=str(ckpt))
    assert single["ranks"] == sharded["ranks"]
    assert single["metrics"] == sharded["metrics"]


def test_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "step_00000001").mkdir()
    (tmp_path / "latest").write_text("step_00000001\n")
    assert checkpoint.latest(tmp_path) is None
    from hybridrec.errors import DataError

    with pytest.raises(DataError, match="manifest missing"):
        checkpoint.read_manifest(tmp_path / "step_00000001")
