"""UtilizationSampler: with a fake NVML library it records exactly the values the library returns; without
NVML (this machine, or a library that fails to init) it records why and samples process CPU instead."""

from __future__ import annotations

import math
import resource
import time
import types
from pathlib import Path

import pytest

from hybridrec.telemetry.nvml import UtilizationSampler, visible_gpu_ids
from hybridrec.telemetry.recorder import RunRecorder, read_rank_file


class _NVMLError(Exception):
    pass


def fake_nvml(devices: dict[str, dict], fail_init: str | None = None, no_power: bool = False):
    """A stand-in for pynvml with the calls the sampler makes; counts init/shutdown."""
    state = {"init": 0, "shutdown": 0}
    order = list(devices)

    def nvmlInit():
        if fail_init:
            raise _NVMLError(fail_init)
        state["init"] += 1

    def power(h):
        if no_power:
            raise _NVMLError("Not Supported")
        return devices[h]["power_mw"]

    mod = types.SimpleNamespace(
        NVML_CLOCK_SM=1, state=state,
        nvmlInit=nvmlInit,
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(order),
        nvmlDeviceGetHandleByIndex=lambda i: order[i],
        nvmlDeviceGetHandleByUUID=lambda u: u if u in devices else (_ for _ in ()).throw(_NVMLError(u)),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=devices[h]["util"], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=devices[h]["used"],
                                                                total=devices[h]["total"], free=0),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetClockInfo=lambda h, kind: devices[h]["sm_mhz"] if kind == 1 else -1,
    )
    return mod


DEVICES = {
    "GPU-a": {"util": 87, "used": 30 * 2**30, "total": 40 * 2**30, "power_mw": 312_500, "sm_mhz": 1410},
    "GPU-b": {"util": 55, "used": 10 * 2**30, "total": 40 * 2**30, "power_mw": 150_000, "sm_mhz": 1095},
}


def test_fake_nvml_values_are_recorded_per_gpu(tmp_path: Path) -> None:
    nvml = fake_nvml(DEVICES)
    sampler = UtilizationSampler(interval_s=0.01, nvml=nvml)
    recorder = RunRecorder(tmp_path / "rank0.h5", {"rank": 0}, flush_every=1, sampler=sampler)
    sampler.start()
    deadline = time.monotonic() + 60  # generous: the sampler thread may get little CPU on a shared machine
    while sampler.sample_count < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    recorder.log_step(0, {"wall_s": 1.0})
    recorder.close()
    assert nvml.state == {"init": 1, "shutdown": 1}
    data = read_rank_file(tmp_path / "rank0.h5")
    samples, info = data["samples"], data["samples_info"]
    assert info["nvml_present"] is True and info["nvml_absent_reason"] == ""
    assert info["gpu_ids"] == ["0", "1"]
    assert len(samples["t_s"]) >= 3
    for i, dev in enumerate(DEVICES.values()):
        assert set(samples[f"gpu{i}_util_pct"]) == {dev["util"]}
        assert set(samples[f"gpu{i}_mem_used_bytes"]) == {dev["used"]}
        assert set(samples[f"gpu{i}_mem_total_bytes"]) == {dev["total"]}
        assert set(samples[f"gpu{i}_mem_util_pct"]) == {dev["used"] / dev["total"] * 100}
        assert set(samples[f"gpu{i}_power_w"]) == {dev["power_mw"] / 1000}
        assert set(samples[f"gpu{i}_sm_clock_mhz"]) == {dev["sm_mhz"]}
    assert "cpu_util_pct" not in samples  # no made-up CPU columns when GPUs are sampled


def test_unsupported_query_is_nan_and_gpu_ids_select_devices() -> None:
    sampler = UtilizationSampler(interval_s=10, nvml=fake_nvml(DEVICES, no_power=True), gpu_ids=["GPU-b"])
    sampler.start()
    row = sampler.sample_once()
    sampler.stop()
    assert math.isnan(row["gpu0_power_w"]) and row["gpu0_util_pct"] == 55 and "gpu1_util_pct" not in row


@pytest.mark.parametrize("nvml,reason", [
    (None, "nvmlInit failed"),  # the real pynvml on this GPU-less machine (skipped where NVML works)
    (fake_nvml(DEVICES, fail_init="Driver Not Loaded"), "nvmlInit failed: _NVMLError: Driver Not Loaded"),
    (fake_nvml({}), "reports no GPU"),
])
def test_absent_nvml_records_reason_and_samples_process_cpu(nvml, reason: str) -> None:
    sampler = UtilizationSampler(interval_s=0.02, nvml=nvml)
    sampler.start()
    if nvml is None and sampler.nvml_present:
        sampler.stop()
        pytest.skip("NVML works on this machine")
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    spin = 0
    # keep this process busy so CPU utilization is visibly > 0, until the thread took a few samples
    # (on an overloaded machine the sampler thread may get little CPU: wait for it, up to 60 s)
    while time.monotonic() < wall0 + 0.4 or (sampler.sample_count < 4 and time.monotonic() < wall0 + 60):
        spin += 1
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    sampler.stop()
    rows = sampler.drain()
    info = sampler.describe()
    assert info["nvml_present"] is False and reason in info["nvml_absent_reason"]
    assert len(rows) >= 3
    assert all(not any(k.startswith("gpu") for k in row) for row in rows)
    # the samples agree with the process's own CPU time over the busy window (100 = one core; the
    # machine may be shared, so compare with what this process really got rather than a fixed number)
    cpu_s = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    expected = cpu_s / (wall1 - wall0) * 100
    busy = [r["cpu_util_pct"] for r in rows[1:]]
    assert expected > 1 and 0.5 * expected - 5 < sum(busy) / len(busy) < 1.5 * expected + 5, (busy, expected)
    assert all(r["rss_bytes"] > 1e6 for r in rows)


def test_visible_gpu_ids_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-x,5")
    assert visible_gpu_ids(1) == ["GPU-x"] and visible_gpu_ids(2) == ["5"] and visible_gpu_ids(7) == []
    assert visible_gpu_ids(None) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu_ids(2) == ["2"]
