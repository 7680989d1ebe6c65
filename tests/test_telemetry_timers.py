"""PhaseTimers: exclusive attribution with megatron's timer names (fake clock, exact numbers), the pipeline
bubble estimate, and the megatron Timers interface used by the real schedules."""

from __future__ import annotations

import pytest

from hybridrec.telemetry import timers as timers_mod
from hybridrec.telemetry.timers import MEGATRON_TIMER_PHASES, PHASES, PhaseTimers, phase_of


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def _t(summary: dict, phase: str) -> float:
    return summary[f"t_{phase}_s"]


def test_nested_megatron_timers_are_counted_exclusively() -> None:
    clock = Clock()
    timers = PhaseTimers(clock=clock, cuda_sync=False)
    timers.begin_step()
    clock.tick(0.5)                                    # before the schedule: other
    timers("forward-backward", log_level=1).start(barrier=False)
    clock.tick(0.25)                                   # schedule overhead: other
    timers("forward-compute", log_level=2).start()
    clock.tick(2.0)
    timers("tp_comm").start()                          # tp collective inside forward
    clock.tick(0.75)
    timers("tp_comm").stop()
    clock.tick(1.0)
    timers("forward-compute").stop()
    timers("backward-compute", log_level=2).start()
    clock.tick(3.0)
    timers("backward-compute").stop()
    timers("all-grads-sync", log_level=1).start()
    clock.tick(1.5)
    timers("all-grads-sync").stop()
    timers("forward-backward").stop()
    with timers.phase("optimizer"):
        clock.tick(0.5)
    timers.add_byte_counts({"bytes/intra_rack": 100, "bytes/cross_rack": 40, "bytes/total": 140})
    summary = timers.end_step(samples=32, tokens=320)
    assert _t(summary, "forward") == 3.0 and _t(summary, "tp_comm") == 0.75
    assert _t(summary, "backward") == 3.0 and _t(summary, "dp_comm") == 1.5
    assert _t(summary, "optimizer") == 0.5 and _t(summary, "other") == 0.75
    assert summary["wall_s"] == 9.5 == sum(_t(summary, p) for p in PHASES)
    assert summary["samples_per_s"] == 32 / 9.5 and summary["tokens_per_s"] == 320 / 9.5
    assert summary["dp_bytes_intra"] == 100 and summary["dp_bytes_cross"] == 40
    assert summary["comm_share_dp"] == 1.5 / 9.5
    assert summary["comm_share_all"] == (1.5 + 0.75) / 9.5
    assert summary["coverage"] == 1 - 0.75 / 9.5
    # the megatron interface keeps per-timer elapsed (inclusive) times too
    assert timers("forward-compute").elapsed() == 3.75 and timers("forward-backward").active_time() == 8.5


def test_pipeline_receive_time_splits_into_transfer_and_bubble() -> None:
    clock = Clock()
    timers = PhaseTimers(clock=clock, cuda_sync=False)
    timers.begin_step()
    for name, wait in [("forward-recv", 2.0), ("forward-send-backward-recv", 0.25),
                       ("backward-send-forward-recv", 0.5), ("backward-recv", 1.0)]:
        timers(name, log_level=2).start()
        clock.tick(wait)
        timers(name).stop()
    timers("forward-send", log_level=2).start()
    clock.tick(0.125)
    timers("forward-send").stop()
    summary = timers.end_step()
    # transfer estimate = 4 receives x fastest receive (0.25); the rest of the receive time is waiting
    assert _t(summary, "pp_p2p") == 0.125 + 4 * 0.25
    assert _t(summary, "pp_bubble") == 3.75 - 1.0
    assert summary["wall_s"] == sum(_t(summary, p) for p in PHASES) == 3.875


def test_steps_reset_totals_and_running_timers_carry_over() -> None:
    clock = Clock()
    timers = PhaseTimers(clock=clock, cuda_sync=False)
    timers("optimizer").start()
    clock.tick(5.0)                                    # before any step: not counted
    timers.begin_step()
    clock.tick(1.0)
    first = timers.end_step()
    timers.begin_step()
    clock.tick(2.0)
    timers("optimizer").stop()
    second = timers.end_step()
    assert _t(first, "optimizer") == 1.0 and _t(second, "optimizer") == 2.0 and second["wall_s"] == 2.0
    with pytest.raises(RuntimeError, match="without begin_step"):
        timers.end_step()
    with pytest.raises(RuntimeError, match="not started"):
        timers("forward").stop()


def test_every_megatron_timer_name_has_a_phase() -> None:
    import importlib.util
    import re
    from pathlib import Path

    spec = importlib.util.find_spec("megatron.core")  # the installed sources, without importing them
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    names = set()
    for path in root.rglob("*.py"):
        names |= set(re.findall(r"timers\('([a-z0-9-]+)'", path.read_text()))
    assert names, "no megatron timer calls found: has the timers API changed?"
    unmapped = {n for n in names if n not in MEGATRON_TIMER_PHASES and not n.startswith("optimizer-")}
    assert unmapped == set(), f"megatron timer names without a phase mapping: {sorted(unmapped)}"
    assert phase_of("optimizer-inner-step") == "optimizer" and phase_of("mystery") == "other"


def test_module_level_phase_is_noop_without_installed_timers() -> None:
    clock = Clock()
    with timers_mod.phase("dp_comm_cross"):
        clock.tick(1.0)  # nothing installed: nothing recorded, no error
    timers = PhaseTimers(clock=clock, cuda_sync=False)
    timers_mod.install(timers)
    try:
        timers.begin_step()
        with timers_mod.phase("dp_comm_cross"):
            clock.tick(1.0)
        assert _t(timers.end_step(), "dp_comm_cross") == 1.0
    finally:
        timers_mod.install(None)


def test_overlapped_comm_seconds_stay_outside_the_phase_sum() -> None:
    """Exposed dp communication is the dp phases; the worker's overlapped seconds are reported beside
    them and do not enter the wall-time sum."""
    ticks = iter([0.0, 0.0, 0.0, 1.0, 1.0, 1.5, 2.0])
    timers = PhaseTimers(clock=lambda: next(ticks), cuda_sync=False)
    timers.begin_step()
    timers("backward-compute").start()
    timers("backward-compute").stop()
    timers("all-grads-sync").start()
    timers("all-grads-sync").stop()
    timers.add_comm_seconds(worker_s=1.25, overlapped_s=0.75)
    summary = timers.end_step()
    assert summary["wall_s"] == 2.0 == sum(summary[f"t_{p}_s"] for p in PHASES)
    assert summary["dp_comm_exposed_s"] == 0.5 == summary["t_dp_comm_s"]
    assert summary["dp_comm_overlapped_s"] == 0.75 and summary["dp_comm_worker_s"] == 1.25
    assert summary["dp_overlap_share"] == 0.75 / 1.25
