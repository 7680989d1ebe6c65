"""`hybridrec.distributed.spawn.run_ranks` on real gloo ranks: results in rank order with one thread per
rank; a raising rank is named with its traceback, a killed rank with its signal, and a rank that hangs
outside any collective is ended at the deadline; no rank outlives the call."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from hybridrec.distributed.spawn import RankFailed, live_processes_with_env, run_ranks


def _sum_and_threads(rank: int, world: int, base: float) -> tuple[float, int, str]:
    t = torch.tensor([base + rank])
    dist.all_reduce(t)
    return t.item(), torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]


def _fails(rank: int, world: int, how: str) -> None:
    if rank == 1:
        if how == "raise":
            raise ValueError("rank one broke on purpose")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(300)  # "hang": outside any collective, no timeout would end it
    time.sleep(300 if how == "hang" else 0)
    dist.barrier()


def test_results_come_back_in_rank_order_with_one_thread_per_rank() -> None:
    assert run_ranks(_sum_and_threads, 3, 10.0) == [(33.0, 1, "1")] * 3


@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_failed_rank_is_named_and_no_rank_is_left(how: str) -> None:
    token = f"spawn-test-{os.getpid()}-{how}"
    start = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        run_ranks(_fails, 3, how, env={"SPAWN_TEST": token}, timeout_s=30, deadline_s=10)
    message = str(failed.value)
    if how == "raise":
        assert failed.value.rank == 1 and failed.value.exitcode is None
        assert "rank 1 of 3 raised (the first to fail)" in message and "ValueError: rank one broke on purpose" in message
        assert "Traceback" in message and "_fails" in message
    elif how == "kill":
        assert failed.value.rank == 1 and failed.value.exitcode == -signal.SIGKILL
        assert "rank 1 of 3 was killed by SIGKILL" in message
    else:
        assert "ranks [0, 1, 2] of 3 still running after the 10 s deadline" in message
        assert time.monotonic() - start >= 10
    assert time.monotonic() - start < 60
    time.sleep(0.5)
    assert live_processes_with_env("SPAWN_TEST", token) == []
