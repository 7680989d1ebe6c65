"""Bad input not covered elsewhere (marker `faults`): corrupted checkpoints (torn rank file, truncated
manifest, a rank file missing) give one DataError naming the file; config overrides with the wrong
type, an unknown key or an unknown group are refused by `jobs.preflight` naming the key, and the train
job refuses them before it writes anything. (The other bad-input cases are listed with their tests in
docs/RELIABILITY.md.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridrec.errors import DataError
from hybridrec.train import checkpoint

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parent.parent


def fake_checkpoint(root: Path) -> Path:
    """A structurally valid one-rank checkpoint directory (a real torch.save payload + manifest)."""
    ckpt = checkpoint.step_dir(root, 4)
    ckpt.mkdir(parents=True)
    torch.save({"format": 1, "rank": 0, "param_infos": [[]], "trainer": {"model": [{}]},
                "weights": torch.arange(4096.0)}, checkpoint.rank_file(ckpt, 0))
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps({
        "format": 1, "step": 4, "world_size": 1, "layout": {"tp": 1, "pp": 1, "vpp": 1, "dp": 1},
        "files": [{"rank": 0, "file": "rank00000.pt", "tp": 0, "pp": 0, "dp": 0}]}))
    (root / checkpoint.LATEST).write_text(ckpt.name + "\n")
    return ckpt


def test_intact_fake_checkpoint_loads(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path)
    manifest, full = checkpoint.load_full_state(checkpoint.latest(tmp_path))
    assert manifest["step"] == 4 and full == {}
    assert ckpt == checkpoint.latest(tmp_path)


def test_torn_rank_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path)
    path = checkpoint.rank_file(ckpt, 0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable checkpoint file") as info:
        checkpoint.load_full_state(ckpt)
    assert info.value.path == str(path)


def test_missing_rank_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    ckpt = fake_checkpoint(tmp_path)
    checkpoint.rank_file(ckpt, 0).unlink()
    with pytest.raises(DataError, match="rank00000.pt: unreadable checkpoint file"):
        checkpoint.load_full_state(ckpt)


@pytest.mark.parametrize("text, message", [('{"format": 1, "step": ', "unreadable checkpoint manifest"),
                                           ('{"format": 7}', "checkpoint format 7, expected 1")])
def test_corrupt_manifest_is_a_data_error_naming_it(tmp_path: Path, text: str, message: str) -> None:
    ckpt = fake_checkpoint(tmp_path)
    (ckpt / checkpoint.MANIFEST).write_text(text)
    with pytest.raises(DataError, match=message) as info:
        checkpoint.read_manifest(ckpt)
    assert info.value.path == str(ckpt / checkpoint.MANIFEST)


@pytest.mark.parametrize("override, expected", [
    ("train.steps=abc", "Value 'abc' of type 'str' could not be converted to Integer (train.steps)"),
    ("train.stepz=3", "Could not override 'train.stepz'"),
    ("parallel=nope", "Could not find 'parallel/nope'"),
    ("parallel.tp=3", "config field 'parallel.tp*parallel.pp' = 3"),
])
def test_preflight_refuses_bad_overrides_naming_the_key(override: str, expected: str, capsys) -> None:
    from jobs.preflight import main

    assert main(["--world-size", "2", override]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow  # ~60 s on a loaded 2-core machine (the job imports megatron before Hydra composes)
def test_train_job_with_a_bad_override_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jobs.train_job", "train.steps=abc", f"hydra.run.dir={out}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "train.steps" in proc.stderr and "abc" in proc.stderr
    assert not out.exists() or not any(out.rglob("summary.json"))
