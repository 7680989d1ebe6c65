"""Pure and single-machine parts of the Slurm suite: sweep expansion, resource checks against sinfo,
sweep point states, the preemption guard (signal -> flag -> all ranks stop after the same step)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hybridrec.distributed.spawn import run_torchrun
from hybridrec.errors import ConfigError
from jobs.cluster_check import parse_sinfo, request_problems
from jobs.requeue import PreemptionGuard
from jobs.sbatch import Resources
from jobs.submit import expand
from jobs.sweep import point_state, progress_line

SINFO = "debug*|4|4|(null)|(null)|up\ngpu|2|64|gpu:a100:8|a100,ib|up\ngpu|1|32|gpu:4|v100|up\ndown|1|2|(null)||down\n"


def test_sweep_expansion_is_the_cartesian_product_and_keeps_launcher_overrides_fixed():
    fixed, points = expand(["hydra/launcher=slurm", "hydra.launcher.nodes=2", "a=1,2", "b=x,y", "c=3"])
    assert fixed == ["hydra/launcher=slurm", "hydra.launcher.nodes=2"]
    assert points == [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=3"], ["a=2", "b=x", "c=3"], ["a=2", "b=y", "c=3"]]
    assert expand(["hydra/launcher=slurm"])[1] == [[]]
    with pytest.raises(ConfigError, match="no sweeps over launcher settings"):
        expand(["hydra.launcher.nodes=1,2"])


def test_sinfo_parsing_merges_node_shapes_of_a_partition():
    parts = parse_sinfo(SINFO)
    assert parts["debug"].default and parts["debug"].nodes == 4 and parts["debug"].cpus_per_node == 4
    assert parts["gpu"].nodes == 3 and parts["gpu"].gpus_per_node == 8 and parts["gpu"].features == {
        "a100", "ib", "v100"}
    assert not parts["down"].up


def test_impossible_requests_are_named_and_possible_ones_pass():
    parts = parse_sinfo(SINFO)
    assert request_problems(Resources(nodes=4, tasks_per_node=2, cpus_per_task=2), parts) == []
    assert request_problems(Resources(nodes=2, gpus_per_node=8, partition="gpu", constraint="a100"), parts) == []
    problems = request_problems(Resources(nodes=5, tasks_per_node=8, gpus_per_node=1, constraint="h100"), parts)
    assert problems == [
        "nodes=5 but partition 'debug' has 4 nodes",
        "tasks_per_node*cpus_per_task=8 but nodes of 'debug' have 4 CPUs",
        "gpus_per_node=1 but nodes of 'debug' have 0 GPUs",
        "constraint 'h100': no node of 'debug' has feature(s) ['h100']",
    ]
    assert request_problems(Resources(partition="nope"), parts)[0].startswith("partition 'nope' does not exist")
    assert request_problems(Resources(partition="down"), parts) == ["partition 'down' is not up"]


def test_resources_map_launcher_keys_to_submitit_and_refuse_nonsense():
    res = Resources.from_launcher({"nodes": 2, "tasks_per_node": 4, "gpus_per_node": None, "partition": None,
                                   "timeout_min": 30, "additional_parameters": {"switches": "1@00:05:00"}})
    params = res.executor_parameters()
    assert params["nodes"] == 2 and params["ntasks_per_node"] == 4 and params["time"] == 30
    assert "partition" not in params and "gpus_per_node" not in params
    assert params["additional_parameters"] == {"switches": "1@00:05:00"}
    assert res.world_size == 8
    with pytest.raises(ConfigError, match="hydra.launcher.nodes"):
        Resources(nodes=0)


@pytest.mark.parametrize(("observed", "expected"), [
    (("RUNNING", None, [], None, ""), ("running", "")),
    (("PENDING", None, [], None, ""), ("queued", "pending")),
    ((None, {"status": "done"}, [], None, ""), ("done", "")),
    (("COMPLETING", {"status": "done"}, [], None, ""), ("done", "")),
    ((None, {"status": "failed", "error": "NaN loss"}, [], None, ""), ("failed", "NaN loss")),
    ((None, None, ["rank 1: RuntimeError: boom", "rank 0: peer closed"], None, ""),
     ("failed", "rank 1: RuntimeError: boom (then 1 other rank(s) failed)")),
    ((None, None, [], "TIMEOUT", ""), ("failed", "slurm: TIMEOUT")),
    ((None, None, [], None, "oom-kill"), ("failed", "left the queue without a result; log: oom-kill")),
])
def test_point_state_from_what_can_be_observed(observed, expected):
    assert point_state(*observed) == expected


def test_guard_turns_the_signal_into_a_flag_without_interrupting():
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        guard = PreemptionGuard.install()
        assert not guard.requested and not guard.should_stop()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.requested and guard.should_stop() and guard.signum == signal.SIGUSR2
        assert PreemptionGuard.current() is guard
    finally:
        signal.signal(signal.SIGUSR2, previous)
        PreemptionGuard._current = None


RANK_LOOP = """
import os, signal, sys, torch.distributed as dist
from hybridrec.distributed.env import DistEnv, init_process_group
from jobs.requeue import PreemptionGuard
init_process_group(DistEnv.from_environ(), "gloo", timeout_s=30)
guard = PreemptionGuard.install()
rank = dist.get_rank()
for step in range(100):
    if rank == 1 and step == 5:
        os.kill(os.getpid(), signal.SIGUSR2)   # only rank 1 is signalled
    if guard.should_stop():
        break
with open(os.path.join(sys.argv[1], f"rank{rank}"), "w") as handle:
    handle.write(f"{step} {guard.requested}")
dist.destroy_process_group()
"""


def test_all_ranks_stop_after_the_same_step_when_one_rank_is_signalled(tmp_path: Path):
    script = tmp_path / "loop.py"
    script.write_text(RANK_LOOP)
    proc = run_torchrun(3, str(script), [str(tmp_path)], timeout_s=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stops = {p.name: p.read_text() for p in sorted(tmp_path.glob("rank*"))}
    assert stops == {"rank0": "5 False", "rank1": "5 True", "rank2": "5 False"}


def test_sweep_params_of_an_experiment_file_become_points_and_the_command_line_wins(tmp_path):
    from jobs.submit import plan

    the_plan = plan(tmp_path, ["+experiment=topk_sweep", "train.steps=2"], check_cluster=False)
    codecs = [point[-1] for point in the_plan["points"]]
    assert codecs == [f"+experiment/codec={c}" for c in ("dense", "topk1pct", "topk10pct", "topk50pct")]
    assert the_plan["resources"].nodes == 2 and the_plan["resources"].tasks_per_node == 2
    assert [cfg["output_dir"] for cfg in the_plan["configs"]] == [str(tmp_path.resolve() / str(i)) for i in range(4)]
    narrowed = plan(tmp_path, ["+experiment=topk_sweep", "+experiment/codec=dense,topk10pct"], check_cluster=False)
    assert [p[-1] for p in narrowed["points"]] == ["+experiment/codec=dense", "+experiment/codec=topk10pct"]
    assert [cfg["compression"]["codec"] for cfg in narrowed["configs"]] == ["none", "topk"]


def test_progress_line_counts_points_per_state_in_a_fixed_order():
    rows = [{"state": s} for s in ("running", "done", "failed", "done", "queued", "requeued")]
    assert progress_line(rows) == "2 done, 1 failed, 1 running, 1 queued, 1 requeued"
    assert progress_line([]) == ""


def test_sweep_wait_shows_a_running_point_step_loss_and_eta_from_its_log():
    from jobs.sweep import point_progress

    log = ("step      4  loss 6.14741  grad_norm 0.4250  lr 1.00e-03  samples/s    1474.0  step_s 0.083\n"
           "step     25  loss 5.50000  grad_norm 0.4000  lr 1.00e-03  samples/s      10.0  step_s 1.500\n")
    assert point_progress(log, 100) == "step 25/100 loss 5.50000 eta 112 s"  # 75 steps x 1.5 s
    assert point_progress(log, None) == "step 25 loss 5.50000"
    assert point_progress("no progress yet\n", 100) is None


def test_wait_reads_a_failure_known_only_from_absence_again() -> None:
    from jobs.sweep import _only_absent, point_state

    state, reason = point_state(None, None, [], "FAILED", "")  # gone from squeue, no result: mid-requeue?
    assert state == "failed" and _only_absent({"reason": reason})
    state, reason = point_state(None, None, [], None, "")
    assert state == "failed" and _only_absent({"reason": reason})
    state, reason = point_state(None, None, ["rank 1 on n2: RuntimeError: boom"], "FAILED", "")
    assert state == "failed" and not _only_absent({"reason": reason})  # a rank said why: final at once
    state, reason = point_state(None, {"status": "failed", "error": "DataError: x"}, [], "COMPLETED", "")
    assert not _only_absent({"reason": reason})
