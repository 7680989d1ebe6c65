"""Schema of the `telemetry/` group: what is sampled, timed and recorded to HDF5 (`validate_telemetry`
refuses bad values with a ConfigError naming the field)."""

from __future__ import annotations

from dataclasses import dataclass

from hybridrec.errors import ConfigError


@dataclass
class TelemetryConfig:
    # master switch: phase timers + HDF5 file per rank (telemetry/rank<k>.h5)
    enabled: bool = True
    # background NVML sampler (process CPU when NVML is absent); seconds between samples
    sampler: bool = True
    nvml_interval_s: float = 0.5
    # HDF5 rows reach the disk every this many steps (a killed job keeps every flushed step)
    flush_every_steps: int = 10
    # synchronize CUDA at every timer start/stop so host timings match device work (like megatron's
    # Timer); costs some throughput on GPU, no effect on CPU
    cuda_sync: bool = True
    # time megatron's tensor-parallel collectives as the tp_comm phase
    tp_timing: bool = True


def validate_telemetry(cfg: TelemetryConfig) -> None:
    if not cfg.nvml_interval_s > 0:
        raise ConfigError("telemetry.nvml_interval_s", cfg.nvml_interval_s, "seconds > 0 between samples")
    if cfg.flush_every_steps < 1:
        raise ConfigError("telemetry.flush_every_steps", cfg.flush_every_steps, "an integer >= 1")
