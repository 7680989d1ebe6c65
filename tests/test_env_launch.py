"""Local ranks under torchrun (`hybridrec.distributed.spawn`) with real gloo ranks: success with one
thread per rank, a dying rank ends the others and torchrun names it, and our wall-clock deadline ends
torchrun and every rank it started."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from hybridrec.distributed.spawn import live_processes_with_env, root_cause, run_torchrun

ALLREDUCE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from hybridrec.distributed.env import DistEnv, init_process_group
    env = DistEnv.from_environ()
    assert init_process_group(env, "auto", timeout_s=60) == "gloo"
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    assert t.item() == env.world_size * (env.world_size + 1) / 2, t
    threads = torch.tensor([float(torch.get_num_threads())])
    dist.all_reduce(threads, op=dist.ReduceOp.MAX)
    if env.rank == 0:
        open(sys.argv[1], "w").write(f"{t.item()} {threads.item()}")
    dist.destroy_process_group()
""")

# rank 1 dies; rank 0 would wait forever in a collective
DIES = textwrap.dedent("""
    import os, sys, time, torch, torch.distributed as dist
    from hybridrec.distributed.env import DistEnv, init_process_group
    env = DistEnv.from_environ()
    init_process_group(env, "gloo", timeout_s=600)
    if env.rank == 1:
        sys.exit(3)
    dist.barrier()
""")


def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def test_two_gloo_ranks_all_reduce_with_one_thread_each(tmp_path):
    out = tmp_path / "sum.txt"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun must set it
    proc = run_torchrun(2, _script(tmp_path, "ar.py", ALLREDUCE), [str(out)], timeout_s=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert root_cause(proc.stderr) is None
    assert out.read_text() == "3.0 1.0"  # the sum, and the most threads any rank ran


def test_dying_rank_ends_the_others_and_is_reported(tmp_path):
    start = time.monotonic()
    proc = run_torchrun(3, _script(tmp_path, "dies.py", DIES), timeout_s=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    failure = root_cause(proc.stderr)
    assert failure is not None and (failure.rank, failure.local_rank, failure.exitcode) == (1, 1, 3), proc.stderr[-3000:]
    assert "rank      : 1 (local_rank: 1)\n  exitcode  : 3" in proc.stderr
    assert time.monotonic() - start < 60


def test_failed_rank_named_and_deadline_ends_torchrun_and_its_ranks(tmp_path):
    script = _script(tmp_path, "fail.py", "import os, sys, time\n"
                     "sys.exit(5) if os.environ['RANK'] == '0' else time.sleep(300)\n")
    proc = run_torchrun(2, script, timeout_s=60)
    failure = root_cause(proc.stderr)
    assert proc.returncode == 1 and failure is not None and (failure.rank, failure.exitcode) == (0, 5)
    token = uuid.uuid4().hex
    sleeper = _script(tmp_path, "sleep.py", "import os, sys, time\n"
                      "open(os.path.join(sys.argv[1], 'started.' + os.environ['RANK']), 'w').close()\n"
                      "time.sleep(300)\n")
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_torchrun(2, sleeper, [str(tmp_path)], timeout_s=20, env={**os.environ, "SPAWN_TOKEN": token}, grace_s=2)
    assert time.monotonic() - start < 40
    assert sorted(p.name for p in tmp_path.glob("started.*")) == ["started.0", "started.1"]  # ranks were running
    assert live_processes_with_env("SPAWN_TOKEN", token) == []  # torchrun and both ranks are gone
