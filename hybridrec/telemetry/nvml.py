"""Background utilization sampler (owns how GPU or, without NVML, process CPU usage is sampled).

With NVML (nvidia-ml-py, `import pynvml`) every `interval_s` it records, per local GPU i:
`gpu{i}_util_pct` (nvmlDeviceGetUtilizationRates.gpu), `gpu{i}_mem_used_bytes`, `gpu{i}_mem_total_bytes`,
`gpu{i}_mem_util_pct` (= used / total * 100), `gpu{i}_power_w` (nvmlDeviceGetPowerUsage mW / 1000),
`gpu{i}_sm_clock_mhz` (nvmlDeviceGetClockInfo NVML_CLOCK_SM). A query a device does not support
records NaN for that field. Without NVML (no library, no driver, no device) it never fails and never
invents GPU numbers: `absent_reason` says why, and it samples the process instead:
`cpu_util_pct` (user+system CPU seconds of the whole process per wall second * 100; 100 = one core busy)
and `rss_bytes`. Every sample also has `t_s` (seconds since start(), monotonic).

The NVML module is injectable (`nvml=`), so tests can hand in a fake library.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import threading
import time
from types import ModuleType
from typing import Any, Self


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


def visible_gpu_ids(local_rank: int | None) -> list[str] | None:
    """NVML ids (index or UUID strings) of this rank's GPU from CUDA_VISIBLE_DEVICES, or None = all.

    NVML ignores CUDA_VISIBLE_DEVICES; CUDA device `local_rank` is entry `local_rank` of that list.
    """
    if local_rank is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or visible.strip() == "":
        return [str(local_rank)]
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if local_rank >= len(entries):
        return []
    return [entries[local_rank]]


class ProcessCpuProbe:
    """CPU utilization of this process between calls, from getrusage (user + system, all threads)."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.monotonic(), usage.ru_utime + usage.ru_stime

    def sample(self) -> dict[str, float]:
        now, cpu = self._read()
        wall = now - self._last[0]
        util = (cpu - self._last[1]) / wall * 100.0 if wall > 0 else math.nan
        self._last = (now, cpu)
        return {"cpu_util_pct": util, "rss_bytes": float(_current_rss_bytes())}


def _current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class UtilizationSampler:
    """start() / stop() a daemon thread that appends one sample dict per interval; drain() takes them."""

    def __init__(self, interval_s: float = 0.5, gpu_ids: list[str] | None = None,
                 nvml: ModuleType | None = None, max_buffered: int = 100_000):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self._gpu_ids = gpu_ids
        self._nvml_injected = nvml
        self._nvml: Any = None
        self._handles: list[Any] = []
        self.gpu_labels: list[str] = []
        self.absent_reason: str | None = None
        self._cpu: ProcessCpuProbe | None = None
        self._lock = threading.Lock()
        self._buffer: list[dict[str, float]] = []
        self._max_buffered = max_buffered
        self.dropped = 0
        self.sample_count = 0
        self.sample_time_s = 0.0  # total time spent taking samples (the sampler's overhead)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def nvml_present(self) -> bool:
        return self.absent_reason is None and bool(self.gpu_labels)

    def _open_nvml(self) -> None:
        try:
            nvml = self._nvml_injected if self._nvml_injected is not None else _import_pynvml()
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install: record, never fail
            self.absent_reason = f"pynvml not importable: {type(exc).__name__}: {exc}"
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded / ...
            self.absent_reason = f"nvmlInit failed: {type(exc).__name__}: {exc}"
            return
        try:
            ids = self._gpu_ids
            if ids is None:
                ids = [str(i) for i in range(nvml.nvmlDeviceGetCount())]
            handles = []
            for gid in ids:
                if gid.isdigit():
                    handles.append(nvml.nvmlDeviceGetHandleByIndex(int(gid)))
                else:
                    handles.append(nvml.nvmlDeviceGetHandleByUUID(gid))
        except Exception as exc:  # noqa: BLE001 - any NVML error means no GPU numbers, with the reason
            self.absent_reason = f"NVML device lookup failed: {type(exc).__name__}: {exc}"
            self._shutdown_nvml(nvml)
            return
        if not handles:
            self.absent_reason = "NVML initialised but reports no GPU for this rank"
            self._shutdown_nvml(nvml)
            return
        self._nvml, self._handles = nvml, handles
        self.gpu_labels = list(ids)

    @staticmethod
    def _shutdown_nvml(nvml: Any) -> None:
        with contextlib.suppress(Exception):  # shutting down a half-initialised NVML may fail; nothing to do
            nvml.nvmlShutdown()

    def _query(self, fn: Any) -> float:
        try:
            return float(fn())
        except Exception:  # noqa: BLE001 - NVMLError_NotSupported on some boards (e.g. power on MIG)
            return math.nan

    def sample_once(self) -> dict[str, float]:
        """Take one sample now (also used by the thread)."""
        t_begin = time.monotonic()
        row: dict[str, float] = {"t_s": t_begin - self._t0}
        if self._nvml is not None:
            nvml = self._nvml
            for i, handle in enumerate(self._handles):
                util = self._query(lambda h=handle: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = None
                with contextlib.suppress(Exception):  # unsupported: the memory fields read NaN
                    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                used = float(mem.used) if mem is not None else math.nan
                total = float(mem.total) if mem is not None else math.nan
                row[f"gpu{i}_util_pct"] = util
                row[f"gpu{i}_mem_used_bytes"] = used
                row[f"gpu{i}_mem_total_bytes"] = total
                row[f"gpu{i}_mem_util_pct"] = used / total * 100.0 if total and total > 0 else math.nan
                row[f"gpu{i}_power_w"] = self._query(lambda h=handle: nvml.nvmlDeviceGetPowerUsage(h)) / 1000.0
                row[f"gpu{i}_sm_clock_mhz"] = self._query(
                    lambda h=handle: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        else:
            assert self._cpu is not None
            row.update(self._cpu.sample())
        self.sample_time_s += time.monotonic() - t_begin
        self.sample_count += 1
        return row

    def start(self) -> UtilizationSampler:
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._t0 = time.monotonic()
        self._open_nvml()
        if self._nvml is None:
            self._cpu = ProcessCpuProbe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hybridrec-utilization", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            row = self.sample_once()
            with self._lock:
                if len(self._buffer) >= self._max_buffered:
                    self._buffer.pop(0)
                    self.dropped += 1
                self._buffer.append(row)

    def stop(self) -> None:
        """Stop the thread (takes at most one interval), keep buffered samples, release NVML."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._nvml is not None:
            self._shutdown_nvml(self._nvml)
            self._nvml, self._handles = None, []

    def drain(self) -> list[dict[str, float]]:
        """Take the samples collected since the last drain."""
        with self._lock:
            rows, self._buffer = self._buffer, []
        return rows

    def describe(self) -> dict[str, Any]:
        """Metadata for the recorder: what was sampled and why not GPUs."""
        return {
            "nvml_present": self.absent_reason is None and bool(self.gpu_labels),
            "nvml_absent_reason": self.absent_reason or "",
            "gpu_ids": self.gpu_labels,
            "interval_s": self.interval_s,
            "samples": self.sample_count,
            "sample_time_s": self.sample_time_s,
            "dropped": self.dropped,
        }

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
