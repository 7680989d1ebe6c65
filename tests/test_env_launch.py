"""The local launcher with real gloo ranks: success, a dying rank ends the others, timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hybridrec.distributed.launch import launch, rank_command

ALLREDUCE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from hybridrec.distributed.env import DistEnv, init_process_group
    env = DistEnv.from_environ()
    assert init_process_group(env, "auto", timeout_s=60) == "gloo"
    t = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(t)
    assert t.item() == env.world_size * (env.world_size + 1) / 2, t
    if env.rank == 0:
        open(sys.argv[1], "w").write(str(t.item()))
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


def test_two_gloo_ranks_all_reduce(tmp_path):
    out = tmp_path / "sum.txt"
    result = launch(rank_command(_script(tmp_path, "ar.py", ALLREDUCE), [str(out)]), 2, timeout_s=120)
    assert result.returncode == 0 and result.failed_rank is None
    assert out.read_text() == "3.0"


def test_dying_rank_ends_the_others_and_is_reported(tmp_path):
    start = time.monotonic()
    result = launch(rank_command(_script(tmp_path, "dies.py", DIES), []), 3, timeout_s=120, grace_s=2)
    assert result.failed_rank == 1 and result.returncode == 3
    assert result.rank_codes[1] == 3
    assert set(result.terminated) <= {0, 2} and not result.timed_out
    assert time.monotonic() - start < 60


def test_cli_reports_failed_rank_and_timeout(tmp_path):
    script = _script(tmp_path, "fail.py", "import os, sys, time\n"
                     "sys.exit(5) if os.environ['RANK'] == '0' else time.sleep(300)\n")
    proc = subprocess.run([sys.executable, "-m", "hybridrec.distributed.launch", "--nproc-per-node", "2",
                           "--grace", "1", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 5
    assert "rank 0 on host " in proc.stderr and "failed (exit code 5)" in proc.stderr
    sleeper = _script(tmp_path, "sleep.py", "import time\ntime.sleep(300)\n")
    proc = subprocess.run([sys.executable, "-m", "hybridrec.distributed.launch", "--nproc-per-node", "2",
                           "--timeout", "1", "--grace", "1", sleeper], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 124 and "timeout" in proc.stderr
