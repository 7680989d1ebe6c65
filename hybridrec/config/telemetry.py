"""Schema of the `telemetry/` group: what is sampled and recorded to HDF5."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TelemetryConfig:
    enabled: bool = True
    nvml_interval_s: float = 0.5
    flush_every_steps: int = 10
