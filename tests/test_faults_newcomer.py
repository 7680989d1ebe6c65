"""The newcomer cases of issue 16 (marker `faults`), one test each: a torn newest checkpoint falls back to
the newest complete one naming the torn one; an earlier attempt's result files are kept, never
overwritten; rack maps with an empty rack, a rack listed twice or a node in two racks are refused by
preflight and the plain `allreduce.racks={...}` override composes; ranks take their thread count from
SLURM_CPUS_PER_TASK; a refused job prints one short line per problem and writes no output directory;
`jobs.sweep status|collect` read the sweep's files when Slurm is unreachable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridrec.io import atomic_write_json, keep_previous
from hybridrec.train import checkpoint

pytestmark = pytest.mark.faults
REPO = Path(__file__).resolve().parent.parent


def save_fake(root: Path, step: int, ranks: int = 2) -> Path:
    """A structurally valid checkpoint (real torch.save rank files + manifest), pointer moved to it."""
    ckpt = checkpoint.step_dir(root, step)
    ckpt.mkdir(parents=True)
    for rank in range(ranks):
        torch.save({"format": 1, "rank": rank, "weights": torch.arange(4096.0) + step},
                   checkpoint.rank_file(ckpt, rank))
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps({
        "format": 1, "step": step, "world_size": ranks, "layout": {"tp": 1, "pp": 1, "vpp": 1, "dp": ranks},
        "files": [{"rank": r, "file": checkpoint.rank_file(ckpt, r).name, "tp": 0, "pp": 0, "dp": r}
                  for r in range(ranks)]}))
    (root / checkpoint.LATEST).write_text(ckpt.name + "\n")
    return ckpt


def test_torn_newest_checkpoint_falls_back_to_the_newest_complete_one_naming_it(tmp_path: Path) -> None:
    save_fake(tmp_path, 3)
    newest = save_fake(tmp_path, 6)
    assert checkpoint.latest(tmp_path) == newest
    torn_file = checkpoint.rank_file(newest, 0)
    data = torn_file.read_bytes()
    torn_file.write_bytes(data[: len(data) // 2])  # the case: halve step_00000006/rank00000.pt
    seen: list[tuple[Path, str]] = []
    assert checkpoint.latest(tmp_path, on_torn=lambda c, r: seen.append((c, r))) == tmp_path / "step_00000003"
    assert [c for c, _ in seen] == [newest] and str(torn_file) in seen[0][1] and "truncated" in seen[0][1]
    # a flipped byte inside a member (same length): the CRC catches it
    other = checkpoint.rank_file(tmp_path / "step_00000003", 1)
    raw = bytearray(other.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    other.write_bytes(bytes(raw))
    found = checkpoint.find_resumable(tmp_path)
    assert found.checkpoint is None and [c.name for c, _ in found.torn] == ["step_00000006", "step_00000003"]
    assert "CRC" in found.torn[1][1] or "corrupt" in found.torn[1][1]


def test_a_save_newer_than_the_pointer_is_not_used_and_a_missing_manifest_is_skipped(tmp_path: Path) -> None:
    save_fake(tmp_path, 2)
    (tmp_path / "step_00000003").mkdir()  # killed before its manifest, below the pointer: skipped silently
    save_fake(tmp_path, 4)
    save_fake(tmp_path, 5)
    (tmp_path / checkpoint.LATEST).write_text("step_00000004\n")  # killed between step-5 manifest and pointer
    assert checkpoint.find_resumable(tmp_path).checkpoint == tmp_path / "step_00000004"
    checkpoint.rank_file(tmp_path / "step_00000004", 1).unlink()
    found = checkpoint.find_resumable(tmp_path)
    assert found.checkpoint == tmp_path / "step_00000002"
    assert [(c.name, "missing" in r) for c, r in found.torn] == [("step_00000004", True)]


def test_a_new_attempt_keeps_the_earlier_attempts_files(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    assert keep_previous(summary) is None
    atomic_write_json(summary, {"status": "done", "steps": 6})
    kept = keep_previous(summary)
    atomic_write_json(summary, {"status": "failed"})
    assert kept == tmp_path / "summary.attempt1.json" and not (tmp_path / "summary.attempt2.json").exists()
    assert json.loads(kept.read_text()) == {"status": "done", "steps": 6}
    assert keep_previous(summary) == tmp_path / "summary.attempt2.json"
    assert json.loads((tmp_path / "summary.attempt2.json").read_text()) == {"status": "failed"}
    assert json.loads(kept.read_text())["status"] == "done"  # never touched again


RACK_ARGS = ["parallel.dp=0", "allreduce=hierarchical", "allreduce.topology=config"]


@pytest.mark.parametrize("allreduce", ["megatron", "hierarchical"])
def test_plain_racks_override_composes(allreduce: str) -> None:
    from jobs.preflight import compose

    cfg = compose([f"allreduce={allreduce}", "allreduce.racks={rack1:[n1,n2],rack2:[n3,n4]}"])
    assert cfg.allreduce.racks == {"rack1": ["n1", "n2"], "rack2": ["n3", "n4"]}
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="allreduce.rackz"):  # the rest of the group stays strict
        compose([f"allreduce={allreduce}", "allreduce.rackz={a:[b]}"])


@pytest.mark.parametrize("racks, field, expected", [
    ("{rack1:[n1,n2],rack2:[]}", "allreduce.racks.rack2", "non-empty list of hostnames"),
    ("{rack1:[n1,n2],rack1:[n3,n4]}", "allreduce.racks.rack1", "rack 'rack1' is listed twice"),
    ("{rack1:[n1,n2],rack2:[n2,n3]}", "allreduce.racks.rack2", "each host in one rack (also in 'rack1')"),
    ("{rack1:[n1,n1],rack2:[n3,n4]}", "allreduce.racks.rack1", "each host once in its rack"),
])
def test_bad_rack_maps_are_refused_by_preflight(racks: str, field: str, expected: str, capsys) -> None:
    from jobs.preflight import main

    assert main(["--world-size", "4", *RACK_ARGS, f"allreduce.racks={racks}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and expected in err[0]
    assert main(["--world-size", "4", *RACK_ARGS, "allreduce.racks={rack1:[n1,n2],rack2:[n3,n4]}"]) == 0


def test_all_rack_problems_are_listed_together() -> None:
    from hybridrec import preflight
    from jobs.preflight import compose

    overrides = [*RACK_ARGS, "allreduce.racks={a:[n2],b:[],c:[n3,n3],d:[n1],a:[n1]}"]
    cfg = compose(overrides)
    assert cfg.allreduce.racks["a"] == ["n1"]  # Hydra keeps the last 'a': only the override's text shows it
    found = preflight.problems(cfg, 4, overrides)
    assert [e.field for e in found] == [f"allreduce.racks.{r}" for r in "abcd"]
    assert "also in 'a'" in str(found[3])
