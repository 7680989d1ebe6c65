"""Telemetry of one rank's job: the phase timers megatron reports into, the drift watch's compute
timers, the NVML/CPU sampler and the HDF5 recorder, built once (`build_telemetry`) and closed once.

Per step the loop calls `begin_step()` and `end_step(...) -> metrics`; `record_step` / `record_eval`
write rows; `close(status, balance)` finishes the HDF5 file and undoes the tensor-parallel timing.
With `telemetry.enabled=false` every call is cheap and writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass
class Telemetry:
    timers: Any = None  # telemetry.timers.PhaseTimers for the step rows (None: telemetry off)
    trainer_timers: Any = None  # what megatron reports into (`config.timers`): the same PhaseTimers, or
    # with telemetry off but the balance watch on, PhaseTimers the watch alone reads
    recorder: Any = None  # telemetry.recorder.RunRecorder
    undo_tp: Callable[[], None] | None = None

    def begin_step(self) -> None:
        if self.timers is not None:
            self.timers.begin_step()

    def end_step(self, samples: int, tokens: int, byte_counts: dict[str, int] | None,
                 comm_seconds: dict[str, float] | None = None) -> dict[str, float]:
        if self.timers is None:
            return {}
        if byte_counts is not None:
            self.timers.add_byte_counts(byte_counts)
        if comm_seconds is not None:
            self.timers.add_comm_seconds(comm_seconds["worker_s"], comm_seconds["overlapped_s"])
        return self.timers.end_step(samples=samples, tokens=tokens)

    def record_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.recorder is not None:
            self.recorder.log_step(step, metrics)

    def record_eval(self, metrics: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.log_eval(metrics)

    def open_recorder(self, job: Any) -> None:
        """The per-rank HDF5 file (after the layout, rack map and balance record are final)."""
        tel = job.cfg.telemetry
        if not tel.enabled:
            return
        from hybridrec.io import keep_previous
        from hybridrec.telemetry.nvml import UtilizationSampler, visible_gpu_ids
        from hybridrec.telemetry.recorder import RunRecorder, rank_file, run_metadata

        sampler = UtilizationSampler(tel.nvml_interval_s, visible_gpu_ids(job.env.local_rank)) \
            if tel.sampler else None
        meta = run_metadata(config=dataclasses.asdict(job.cfg), layout=job.layout.to_dict(),
                            topology=dataclasses.asdict(job.comm.rack_map), rank=job.rank,
                            world_size=job.layout.world_size, balance=job.balance)
        path = rank_file(job.out, job.rank)
        keep_previous(path)  # an earlier attempt's file is kept as rank<k>.attempt<n>.h5, never overwritten
        self.recorder = RunRecorder(path, meta, flush_every=tel.flush_every_steps,
                                    sampler=sampler)
        if sampler is not None:
            sampler.start()

    def close(self, status: str, balance: dict[str, Any] | None = None) -> None:
        from hybridrec.telemetry import timers as timers_mod

        if self.recorder is not None:
            self.recorder.close(status=status, balance=balance)
            self.recorder = None
        if self.undo_tp is not None:
            self.undo_tp()
            self.undo_tp = None
        timers_mod.install(None)


def build_telemetry(job: Any, watch: bool) -> Telemetry:
    """Timers for this job (`watch`: the adaptive balance needs megatron's compute timers even with
    telemetry off)."""
    from hybridrec.telemetry import timers as timers_mod

    tel = job.cfg.telemetry
    out = Telemetry()
    if tel.enabled:
        out.timers = timers_mod.PhaseTimers(cuda_sync=tel.cuda_sync)  # device sync on GPU only
        timers_mod.install(out.timers)  # GradSync's phase("dp_comm_intra"/"dp_comm_cross")
        out.undo_tp = timers_mod.instrument_tensor_parallel(out.timers) if tel.tp_timing else None
    out.trainer_timers = out.timers
    if watch and out.trainer_timers is None:
        out.trainer_timers = timers_mod.PhaseTimers(cuda_sync=False)
    return out
