"""Real jobs on the private Slurm cluster (marker `slurm`): multi-node gloo all-reduce, rack map from
SLURM_TOPOLOGY_ADDR, a detached sweep outliving its submitter, a crashing rank, a refused sweep,
preemption -> checkpoint -> requeue -> resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridrec.errors import ConfigError
from jobs import submit as submit_mod
from jobs import sweep as sweep_mod

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
PROBE = "jobs.probe:probe"


@pytest.fixture
def probe_conf(tmp_path: Path) -> Path:
    """A minimal primary config for the probe job (the repo's conf/hydra/launcher is on the search path)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "train:\n  steps: 0\n  global_batch_size: 128\nparallel:\n  tp: 1\n  micro_batch_size: 16\n"
        "probe:\n  step_seconds: 0.0\n  crash_rank: -1\n  crash_step: 0\n  timeout_s: 60\n"
    )
    return conf


def _sweep_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def release_requeued(job_id: str, env: dict, timeout_s: float = 60.0) -> None:
    """Start a requeued job now instead of after Slurm's ~2 min BeginTime hold, but only once the first
    attempt has left every node: released while a node still finishes the old step, the new attempt
    failed at once under load (sacct FAILED, exit 1:0, elapsed 0; 1 run in 3 with the CPUs busy)."""
    deadline, state = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True,
                               text=True, check=False).stdout.strip()
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True,
                               check=False).stdout.split()
        busy = [n for n in nodes if n.startswith(("alloc", "mix", "comp")) or "+comp" in n]
        if state == "PENDING" and nodes and not busy:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True,
                           timeout=30)
            return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} was not requeued onto free nodes (last state {state!r})")


def test_two_nodes_two_tasks_allreduce_across_nodes_and_racks_from_topology(slurm_env, probe_conf, tmp_path):
    start = time.monotonic()
    sweep_dir = _sweep_dir(tmp_path, "ar")
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2"],
        task=PROBE, config_dir=probe_conf, env=slurm_env,
    )
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=60)
    round_trip = time.monotonic() - start
    assert [row["state"] for row in rows] == ["done"], rows
    summary = json.loads((Path(manifest["points"][0]["dir"]) / "summary.json").read_text())
    assert summary["world_size"] == 4
    assert summary["allreduce_value"] == 1 + 2 + 3 + 4
    assert len(set(summary["hosts"])) == 2 and summary["hosts"][0] == summary["hosts"][1]
    # rack map built from each rank's SLURM_TOPOLOGY_ADDR (spine.rackX.nY, tree topology)
    assert all(addr.startswith("spine.rack") for addr in summary["topology_addrs"])
    expected_racks = ["rack1" if host in ("n1", "n2") else "rack2" for host in summary["hosts"]]
    assert summary["racks"] == expected_racks
    (tmp_path.parent / "slurm_round_trip_s.txt").write_text(f"{round_trip:.2f}\n")
    print(f"job round trip (submit -> summary.json seen by status): {round_trip:.2f} s")


def test_detached_sweep_survives_submitter_exit_and_reports_done_and_a_crashed_rank(slurm_env, probe_conf,
                                                                                   tmp_path):
    """Two 2-node points queued by a process that exits at once; point 1's rank 1 crashes at step 3 while
    rank 0 would wait 600 s in its next collective: the job must end quickly with the cause named."""
    sweep_dir = _sweep_dir(tmp_path, "detached")
    argv = [sys.executable, "-m", "jobs.submit", "--sweep-dir", str(sweep_dir), "--task", PROBE,
            "--config-dir", str(probe_conf), "hydra/launcher=slurm", "hydra.launcher.nodes=2",
            "train.steps=8", "probe.step_seconds=0.25", "probe.crash_step=3", "probe.timeout_s=600",
            "probe.crash_rank=-1,1"]
    start = time.monotonic()
    submitted = subprocess.run(argv, env=slurm_env, cwd=REPO, capture_output=True, text=True, timeout=120,
                               check=False)
    assert submitted.returncode == 0, submitted.stderr
    # the submitting process is gone; the jobs live on in Slurm
    first = {row["index"]: row["state"] for row in sweep_mod.status(sweep_dir, slurm_env)}
    assert set(first.values()) <= {"queued", "running", "done"}, first
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=120)
    elapsed = time.monotonic() - start
    assert [row["state"] for row in rows] == ["done", "failed"], rows
    # the rank that crashed first is named, not the survivor that saw its connection close
    reason = rows[1]["reason"]
    assert reason.startswith("rank 1") and "RuntimeError: probe: rank 1 crashes on purpose" in reason, reason
    assert elapsed < 100, elapsed  # nobody waited for the 600 s collective timeout
    cli = subprocess.run([sys.executable, "-m", "jobs.sweep", "status", str(sweep_dir)], env=slurm_env, cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 1 and "\tdone" in cli.stdout and "\tfailed  (rank 1" in cli.stdout, cli.stdout
    collected = sweep_mod.collect(sweep_dir, slurm_env)
    assert [row["index"] for row in collected] == [0] and collected[0]["steps"] == 8


def test_impossible_request_is_refused_before_anything_is_queued(slurm_env, probe_conf, tmp_path):
    sweep_dir = _sweep_dir(tmp_path, "refused")
    before = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm_env, capture_output=True, text=True,
                            check=True).stdout
    with pytest.raises(ConfigError) as refused:
        submit_mod.submit(
            sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=8", "hydra.launcher.partition=debug",
                        "parallel.tp=1,3"],
            task=PROBE, config_dir=probe_conf, env=slurm_env,
        )
    message = str(refused.value)
    assert "nodes=8 but partition 'debug' has 4 nodes" in message
    assert "point 1 ['parallel.tp=3']" in message  # the config of one point is refused too
    assert not (sweep_dir / "sweep.json").exists()
    after = subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm_env, capture_output=True, text=True,
                           check=True).stdout
    # a job left by an earlier test may finish meanwhile; what matters is that none was added
    assert set(after.split()) <= set(before.split())
    with pytest.raises(ConfigError, match="partition 'nope' does not exist"):
        submit_mod.submit(sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.partition=nope"],
                          task=PROBE, config_dir=probe_conf, env=slurm_env)


def _steps(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_preemption_signal_checkpoints_requeues_and_resumes_with_one_result(slurm_env, probe_conf, tmp_path):
    sweep_dir = _sweep_dir(tmp_path, "preempt")
    steps = 30
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=2", f"train.steps={steps}",
                    "probe.step_seconds=0.2"],
        task=PROBE, config_dir=probe_conf, env=slurm_env,
    )
    job_id, out = manifest["points"][0]["job_id"], Path(manifest["points"][0]["dir"])
    first = out / "steps.attempt0.txt"
    deadline = time.monotonic() + 60
    while len(_steps(first)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(_steps(first)) >= 3, "job did not start stepping"
    subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True, timeout=30)
    release_requeued(job_id, slurm_env)
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=90)
    assert rows[0]["state"] == "done", f"{rows[0]['state']}: {rows[0].get('reason')} ({rows[0]})"
    before, after = _steps(first), _steps(out / "steps.attempt1.txt")
    checkpoint = json.loads((out / "probe_checkpoint.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    # the checkpoint was taken when the signal arrived (not a periodic one), the rerun started right after it
    assert checkpoint["next_step"] == before[-1] + 1 == after[0] == summary["resumed_from"]
    assert summary["attempt"] == 1
    # every step ran exactly once across both attempts: none redone, none lost
    assert before + after == list(range(steps))
    # exactly one result: one summary, and one successful submitit result per rank
    assert len(list(out.glob("summary*.json"))) == 1
    results = sorted(p.name for p in Path(manifest["submitit_folder"]).glob(f"{job_id}_*_result.pkl"))
    assert results == [f"{job_id}_0_result.pkl", f"{job_id}_1_result.pkl"]


@pytest.mark.slow
def test_real_training_job_two_nodes_two_tasks_writes_one_summary(slurm_env, tmp_path):
    """The trainer (`hybridrec.main.run` via jobs.submit's default task), dp=4 over 2 nodes x 2 tasks."""
    sweep_dir = _sweep_dir(tmp_path, "train")
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=2",
                    "parallel=auto_dp", "train=quick", "model=sasrec_tiny", "train.steps=4",
                    "train.global_batch_size=32", "parallel.micro_batch_size=4"],
        env=slurm_env,
    )
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=600)
    assert [row["state"] for row in rows] == ["done"], rows
    summary = json.loads((Path(manifest["points"][0]["dir"]) / "summary.json").read_text())
    assert summary["status"] == "done" and summary["layout"]["dp"] == 4 and summary["steps"] == 4
    assert summary["threads_per_rank"] == 1  # the task's one CPU (cpus_per_task=1), not torch's default of 2


@pytest.mark.slow
def test_real_trainer_preempted_resumes_from_the_signal_checkpoint(slurm_env, tmp_path):
    """USR2 to the real training job: checkpoint at the step in flight, requeue, resume, one summary."""
    import re

    sweep_dir = _sweep_dir(tmp_path, "train-preempt")
    steps = 12
    manifest = submit_mod.submit(
        sweep_dir, ["hydra/launcher=slurm", "hydra.launcher.nodes=2", "parallel=auto_dp", "train=quick",
                    "model=sasrec_tiny", f"train.steps={steps}", "train.log_every=1", "train.global_batch_size=16",
                    "parallel.micro_batch_size=8", "telemetry.enabled=false"],
        env=slurm_env,
    )
    job_id, out = manifest["points"][0]["job_id"], Path(manifest["points"][0]["dir"])
    log = Path(manifest["submitit_folder"]) / f"{job_id}_0_log.out"

    def logged_steps() -> list[int]:
        text = log.read_text() if log.exists() else ""
        return [int(m) for m in re.findall(r"^step\s+(\d+)\s+loss", text, flags=re.MULTILINE)]

    deadline = time.monotonic() + 400
    while len(logged_steps()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(logged_steps()) >= 2, log.read_text() if log.exists() else "no log"
    subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True, timeout=30)
    release_requeued(job_id, slurm_env, timeout_s=120)
    rows = sweep_mod.wait(sweep_dir, slurm_env, timeout_s=600)
    assert rows[0]["state"] == "done", rows
    text = log.read_text()
    resumed = re.search(r"resumed from \S+ at step (\d+)", text)
    assert resumed, text[-3000:]
    at = int(resumed.group(1))
    first, second = text[: resumed.start()], text[resumed.end():]
    first_steps = [int(m) for m in re.findall(r"^step\s+(\d+)\s+loss", first, flags=re.MULTILINE)]
    second_steps = [int(m) for m in re.findall(r"^step\s+(\d+)\s+loss", second, flags=re.MULTILINE)]
    assert first_steps[-1] == at and second_steps == list(range(at + 1, steps + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == steps
