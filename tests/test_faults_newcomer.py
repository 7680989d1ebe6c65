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


@pytest.mark.parametrize("environ, expected", [
    ({}, (None, "torch default")),
    ({"OMP_NUM_THREADS": "3"}, (3, "OMP_NUM_THREADS")),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "OMP_NUM_THREADS": "8"}, (1, "Slurm task without SLURM_CPUS_PER_TASK")),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "2"}, (2, "SLURM_CPUS_PER_TASK")),
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "2", "HYBRIDREC_THREADS": "4"},
     (4, "HYBRIDREC_THREADS")),
])
def test_ranks_take_their_thread_count_from_slurm(environ: dict, expected: tuple) -> None:
    from hybridrec.distributed.env import thread_count

    assert thread_count(environ) == expected


def test_configure_threads_sets_torch_and_refuses_nonsense() -> None:
    from hybridrec.distributed.env import configure_threads
    from hybridrec.errors import ConfigError

    before = torch.get_num_threads()
    try:
        assert configure_threads({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "2"}) == \
            (2, "SLURM_CPUS_PER_TASK")
        assert torch.get_num_threads() == 2
        with pytest.raises(ConfigError, match="SLURM_CPUS_PER_TASK"):
            configure_threads({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "0"})
    finally:
        torch.set_num_threads(before)


def run_train_job(*args: str, env: dict | None = None, timeout: int = 120):
    import os
    import subprocess
    import sys

    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "jobs.train_job", *args], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_a_refused_job_prints_every_problem_in_one_line_each_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_train_job("compression=topk", "compression.ratio=1.5", f"hydra.run.dir={out}")
    assert proc.returncode == 2 and not out.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("refused: config field") for line in lines)
    assert "compression.ratio" in lines[0] and "compression.codec" in lines[1]
    assert "Traceback" not in proc.stderr + proc.stdout and "Error executing job" not in proc.stderr


def test_one_process_with_a_tp2_layout_is_told_how_to_start_more_ranks(tmp_path: Path) -> None:
    proc = run_train_job("parallel=tp2", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert "world size 1" in proc.stderr
    assert "torch.distributed.run --standalone --nproc-per-node 2 -m jobs.train_job parallel=tp2" in proc.stderr


def test_a_bad_override_is_one_line_before_any_output_directory(tmp_path: Path) -> None:
    proc = run_train_job("train.stepz=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [(
        "refused: config does not compose: Could not override 'train.stepz'.: Key 'stepz' not in 'TrainConfig' "
        "(train.stepz)")]


def test_a_failed_run_prints_one_short_line_and_logs_the_traceback(tmp_path: Path) -> None:
    ckpt = save_fake(tmp_path / "ckpt", 6, ranks=1)
    torn = checkpoint.rank_file(ckpt, 0)
    torn.write_bytes(torn.read_bytes()[:1000])
    out = tmp_path / "run"
    proc = run_train_job("model=sasrec_tiny", "train=quick", "train.steps=6", "eval.protocols=[uni100]",
                         f"data.cache_dir={tmp_path / 'cache'}", f"train.resume={ckpt}", f"hydra.run.dir={out}",
                         timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"failed: {torn}: unreadable checkpoint file"), lines
    assert lines[-1] == f"  full traceback: {out / 'train_job.log'} (HYDRA_FULL_ERROR=1 prints it here)"
    assert len(lines) == 3 and "Traceback" not in proc.stderr and "UserWarning" not in proc.stderr
    log = (out / "train_job.log").read_text()
    assert "Traceback (most recent call last)" in log and "hybridrec.errors.DataError" in log
    assert "Params for bucket" in log and "UserWarning" in log  # the library noise went to the log file


def test_failure_lines_name_the_failing_rank_once() -> None:
    from hybridrec.console import failure_lines
    from hybridrec.errors import ConfigError, DataError

    peer = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
    own = DataError("/d/x.csv", "line 3: 2 fields, expected 4")
    config = ConfigError("allreduce.racks.r2", [], "a non-empty list")
    assert failure_lines(own, 2, 4, None) == ["failed: rank 2: /d/x.csv: line 3: 2 fields, expected 4"]
    assert failure_lines(peer, 1, 4, None) == []  # the rank that died prints its own cause
    assert failure_lines(peer, 0, 4, None)[0].startswith("failed: rank 0: another rank failed: RuntimeError")
    assert failure_lines(config, 3, 4, None) == [] and len(failure_lines(config, 0, 4, None)) == 1
    assert failure_lines(own, 0, 1, None) == ["failed: /d/x.csv: line 3: 2 fields, expected 4"]


def test_only_a_rank_that_lost_a_peer_lingers_before_exiting(monkeypatch) -> None:
    from hybridrec import console

    slept: list[float] = []
    monkeypatch.setattr(console.time, "sleep", slept.append)
    console.linger_if_peer_loss(RuntimeError("[pair.cc:534] Connection closed by peer [127.0.0.1]:4242"))
    console.linger_if_peer_loss(RuntimeError("injected fault: rank 1 on host vm"))
    assert slept == [console.PEER_LOSS_GRACE_S]  # the bystander waits; the rank that failed first does not


def test_skipped_lines_are_counted_per_reason_for_the_summary_and_the_console(tmp_path: Path) -> None:
    from hybridrec.config.data import DataConfig
    from hybridrec.data.processed import process, read_raw
    from hybridrec.data.skips import skip_message, skipped_counts

    rows = [f"u{u},i{(u * 7 + k) % 30},5.0,{1000 + k}" for u in range(40) for k in range(6)]
    rows[3:3] = ["u1,i2,5.0", "u1,i2,5.0,notatime", "garbage", "u2,i3,5.0,-"]
    path = tmp_path / "ratings_Electronics.csv"
    path.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(source="amazon2014", path=str(path), on_bad_line="skip", kcore=3, num_negatives=5)
    data = process(read_raw(cfg, path), cfg)
    counts = skipped_counts(data.stats)
    assert sum(counts.values()) == 4 and data.stats["skipped_total"] == 4
    assert counts == {k: v for k, v in data.stats["skipped"].items()}
    message = skip_message(data.stats)
    assert message.startswith(f"data: skipped 4 of {len(rows)} lines of {path} (") and f"e.g. {path}:4: " in message
    clean = DataConfig(source="amazon2014", path=str(path), on_bad_line="skip", kcore=3, num_negatives=5)
    path.write_text("\n".join(r for r in rows if r.count(",") == 3 and r.split(",")[3].isdigit()) + "\n")
    assert skipped_counts(process(read_raw(clean, path), clean).stats) == {}
    assert skip_message({"skipped": {}}) is None


def fake_sweep(root: Path) -> Path:
    """A sweep directory as jobs.submit leaves it: point 0 done, point 1 failed (its rank's submitit
    error pickle), point 2 without any result yet."""
    import pickle

    from jobs.submit import MANIFEST

    folder = root / ".submitit"
    folder.mkdir(parents=True)
    points = []
    for index in range(3):
        point_dir = root / str(index)
        point_dir.mkdir()
        points.append({"index": index, "job_id": f"41_{index}", "overrides": [f"compression.ratio=0.{index + 1}"],
                       "dir": str(point_dir)})
    atomic_write_json(root / "0" / "summary.json", {"status": "done", "metrics": {"uni100": {"HR@10": 0.5}}})
    with open(folder / "41_1_0_result.pkl", "wb") as handle:
        pickle.dump(("error", "Traceback ...\nhybridrec.errors.DataError: /d/x.csv: bad"), handle)
    (folder / "41_1_0_log.out").write_text("hostname=n3\n")
    atomic_write_json(root / MANIFEST, {"submitit_folder": str(folder), "points": points})
    return root


def test_sweep_status_and_collect_work_from_the_files_when_slurm_is_gone(tmp_path: Path, capsys) -> None:
    import os

    from jobs import sweep

    root = fake_sweep(tmp_path / "sweep")
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "no-such-slurm.conf")}
    notes: list[str] = []
    rows = sweep.status(root, env, notes)
    assert [(r["state"], r["reason"]) for r in rows] == [
        ("done", ""), ("failed", "rank 0 on n3: hybridrec.errors.DataError: /d/x.csv: bad"),
        ("unknown", "Slurm unreachable and no result in the sweep's files yet")]
    assert len(notes) == 1 and notes[0].startswith("Slurm is unreachable (no Slurm configuration at") and "sweep's files" in notes[0]
    assert [r["index"] for r in sweep.collect(root, env)] == [0]
    os.environ["SLURM_CONF"], saved = env["SLURM_CONF"], os.environ.get("SLURM_CONF")
    try:
        assert sweep.main(["status", str(root)]) == 1  # a failed point; no traceback
        err = capsys.readouterr().err
        assert "Slurm is unreachable" in err and "Traceback" not in err
        assert sweep.main(["collect", str(root)]) == 0
        assert json.loads(capsys.readouterr().out)[0]["metrics"] == {"uni100": {"HR@10": 0.5}}
        assert sweep.main(["wait", str(root), "--timeout", "5"]) == 3  # returns at once, says why
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF")
        else:
            os.environ["SLURM_CONF"] = saved


def test_sacct_lines_give_state_exit_code_elapsed_and_the_largest_steps_maxrss() -> None:
    from jobs.sweep import parse_sacct

    text = ("12_0|COMPLETED|0:0|00:00:41|\n12_0.batch|COMPLETED|0:0|00:00:41|10480K\n"
            "12_0.0|COMPLETED|0:0|00:00:39|1.50G\n12_1|FAILED|1:0|00:00:07|\n12_1.0|FAILED|1:0|00:00:06|300M\n"
            "13|CANCELLED by 0|0:15|00:00:02|\n")
    assert parse_sacct(text) == {
        "12_0": {"state": "COMPLETED", "exit_code": "0:0", "elapsed": "00:00:41", "max_rss": "1.50G"},
        "12_1": {"state": "FAILED", "exit_code": "1:0", "elapsed": "00:00:07", "max_rss": "300M"},
        "13": {"state": "CANCELLED", "exit_code": "0:15", "elapsed": "00:00:02", "max_rss": ""}}


def test_the_local_cluster_with_accounting_points_slurm_at_its_own_slurmdbd() -> None:
    from dataclasses import replace

    from hybridrec.testbed.slurmconf import build_spec, slurm_conf, slurmdbd_conf

    spec = build_spec("/tmp/x", "host", [20001, 20002, 20003, 20004, 20005])
    assert "AccountingStorageType=accounting_storage/none" in slurm_conf(spec)
    acct = replace(spec, dbd_port=20010, db_port=20011)
    conf = slurm_conf(acct)
    assert "AccountingStorageType=accounting_storage/slurmdbd" in conf and "AccountingStoragePort=20010" in conf
    assert f"AccountingStoragePass={spec.munge_socket}" in conf and "JobAcctGatherType=jobacct_gather/linux" in conf
    dbd = slurmdbd_conf(acct, "pw")
    assert "DbdPort=20010" in dbd and "StoragePort=20011" in dbd and "StoragePass=pw" in dbd
    assert f"AuthInfo=socket={spec.munge_socket}" in dbd
