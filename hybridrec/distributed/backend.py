"""The one place where CPU and GPU runs differ: the `Device` object, and megatron's CPU patches.

A `Device` says everything the rest of hybridrec needs to know about where tensors live:
the torch device, the collective backend for tensors on it (NCCL for CUDA, gloo for CPU; gloo is also
the host-staging backend), `synchronize()`, a step clock (CUDA events on GPU, process CPU time on
CPU), peak memory, the device RNG state (get/set, for checkpoints), and `prepare()` (bind the GPU /
patch torch for megatron on CPU). Everything else follows `tensor.device` (allocations are
`x.new_*` / `*_like`) or asks `current()`; no other module names a device or a backend.

Three devices: `CpuDevice`, `CudaDevice` (a real GPU), and `FakeCudaDevice` for tests on a CPU-only
build: its tensors are FakeTensorMode "cuda" tensors and its collective backend is torch's fake
process group (`torch.testing._internal.distributed.fake_pg`), so the GPU path is exercised without
a GPU (tests/test_gpu_path.py). `use(device)` swaps the current device for a block.

megatron-core assumes CUDA in a handful of places. On a machine without a GPU, `CpuDevice.prepare()`
patches torch once (idempotently) so the same megatron code path runs on CPU with gloo
(docs: ../shared/design/NOTES.md section 1, patches A, B, C, E; D only matters with batched p2p):

- A: `torch.cuda.get_rng_state` (both names) return the CPU RNG state (megatron's RNG tracker).
- B: `torch.cuda.current_device()` returns `torch.device("cpu")`, so megatron allocates on CPU.
- C: tensor factories called with `device="cuda"` allocate on CPU (the pipeline schedules).
- D: `torch.cuda.synchronize` is a no-op (batched p2p with sync).
- E: no-argument `Tensor.type()` on a CPU float tensor reports the CUDA type name, which is what
  megatron's optimizer, gradient clipping and distributed optimizer check for.
- F: `Tensor.cuda()` returns the tensor itself (megatron moves the tied output embedding of the last
  pipeline stage with `.cuda()` before its first all-reduce: language_module.py:244).
- G: torch's queue of deferred CUDA calls drops what is queued after setup. megatron's RNG tracker
  sets the "CUDA" RNG state through `torch.cuda._lazy_call` (random.py:111) several times per step;
  with CUDA never initialised torch keeps every call with a formatted stack trace forever (they would
  only run at CUDA initialisation, which never comes), so memory grew with every step (issue 17).

Module-level API kept for callers: `setup(requested, local_rank) -> "cpu" | "cuda"` (idempotent),
`current() -> Device`, `device() -> torch.device`, `process_group_backend(requested)`, `is_cpu()`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hybridrec.config.parallel import BACKENDS
from hybridrec.errors import ConfigError

CPU_BACKEND = "gloo"
GPU_BACKEND = "nccl"
FAKE_BACKEND = "fake"
assert BACKENDS == ("auto", CPU_BACKEND, GPU_BACKEND)
DEVICES = ("auto", "cpu", "cuda")
HOST = torch.device("cpu")  # host memory: staging copies, results handed to numpy

_FACTORIES = ("zeros", "empty", "ones", "full", "tensor", "arange", "randn", "rand", "zeros_like", "empty_like")
_state: dict[str, Any] = {"device": None, "patched": False}


# ---------------------------------------------------------------------------- step clocks
class StepClock:
    """`start()`, then `stop() -> seconds` since start. Base: wall time (perf_counter)."""

    name = "wall time"

    def __init__(self) -> None:
        self._t0 = 0.0

    def _now(self) -> float:
        return time.perf_counter()

    def start(self) -> None:
        self._t0 = self._now()

    def stop(self) -> float:
        return self._now() - self._t0


class ProcessTimeClock(StepClock):
    """Process CPU time: waits for a core on a shared machine do not count."""

    name = "process CPU time"

    def _now(self) -> float:
        return time.process_time()


class CudaEventClock(StepClock):
    """Two CUDA events on the current stream; `stop` waits for the second and returns the GPU time."""

    name = "CUDA events"

    def start(self) -> None:
        self._begin = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._begin.record()

    def stop(self) -> float:
        self._end.record()
        self._end.synchronize()
        return self._begin.elapsed_time(self._end) / 1000.0


# ---------------------------------------------------------------------------- devices
class Device:
    """Where this process's tensors live, and how to talk about them (see the module docstring)."""

    type = "cpu"
    collective_backend = CPU_BACKEND  # for tensors on this device
    staging_backend = CPU_BACKEND  # for host copies (allreduce.cpu_staging)

    def __init__(self, index: int | None = None):
        self.index = index

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.torch_device})"

    @property
    def name(self) -> str:
        return self.type

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.type) if self.index is None else torch.device(self.type, self.index)

    @property
    def is_cpu(self) -> bool:
        return self.type == "cpu"

    @property
    def use_cpu_initialization(self) -> bool:
        """megatron's `use_cpu_initialization`: parameters are created on the host first."""
        return self.is_cpu

    def group_backend(self, cpu_staging: bool = False) -> str:
        """Backend for process groups that carry this device's tensors (or their host copies)."""
        return self.staging_backend if cpu_staging else self.collective_backend

    def prepare(self) -> None:
        """Make this process ready to run megatron on the device (idempotent)."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU)."""

    def step_clock(self) -> StepClock:
        """Process CPU time for single-threaded CPU runs (robust to a loaded machine), else wall time
        (several torch threads would add up their CPU times)."""
        return ProcessTimeClock() if torch.get_num_threads() == 1 else StepClock()

    def peak_memory_bytes(self) -> tuple[int, str]:
        """(peak bytes, source). CPU: the process's max RSS (Linux reports KiB)."""
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "ru_maxrss"

    def reset_peak_memory(self) -> None:
        """Restart the peak-memory count where the device allows it (not for max RSS)."""

    def rng_state(self) -> dict[str, Any]:
        """The device's own RNG state (empty on CPU: `torch.get_rng_state` covers it)."""
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore `rng_state()`'s result; keys of another device type are ignored."""


class CpuDevice(Device):
    def prepare(self) -> None:
        _patch_torch_for_cpu()


class CudaDevice(Device):
    type = "cuda"
    collective_backend = GPU_BACKEND

    def prepare(self) -> None:
        torch.cuda.set_device(self.index or 0)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def step_clock(self) -> StepClock:
        return CudaEventClock()

    def peak_memory_bytes(self) -> tuple[int, str]:
        if torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
        return super().peak_memory_bytes()

    def reset_peak_memory(self) -> None:
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def rng_state(self) -> dict[str, Any]:
        return {"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_initialized() else {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"])


class FakeCudaDevice(Device):
    """A GPU for tests on a CPU-only build: tensors are FakeTensorMode "cuda" tensors (created inside
    `torch._subclasses.fake_tensor.FakeTensorMode`), collectives go to torch's fake process group
    (no math), synchronize is a no-op and the clock is wall time."""

    type = "cuda"
    collective_backend = FAKE_BACKEND
    staging_backend = FAKE_BACKEND

    def __init__(self, index: int | None = 0):
        super().__init__(index)

    def step_clock(self) -> StepClock:
        return StepClock()


def fake_cuda(index: int = 0) -> FakeCudaDevice:
    return FakeCudaDevice(index)


def cpu() -> CpuDevice:
    return CpuDevice()


# ---------------------------------------------------------------------------- megatron on CPU
def _cuda_to_cpu_device(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        dev = kwargs.get("device")
        if dev is not None and str(dev).startswith("cuda"):
            kwargs["device"] = "cpu"
        return fn(*args, **kwargs)

    wrapper.__hybridrec_patched__ = True  # type: ignore[attr-defined]
    return wrapper


def _cuda_type_name(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def tensor_type(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or self.is_cuda:
            return original(self, *args, **kwargs)
        return original(self).replace("torch.", "torch.cuda.", 1)

    return tensor_type


class _DiscardedCalls(list):
    """Stands in for `torch.cuda._queued_calls` on CPU: deferred CUDA calls are dropped, not kept."""

    def append(self, item: Any) -> None:  # the call would only run at CUDA initialisation
        return None


def _patch_torch_for_cpu() -> None:
    """Apply patches A-G once per process."""
    if _state["patched"]:
        return
    cpu_rng = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.get_rng_state = cpu_rng  # A
    torch.cuda.random.get_rng_state = cpu_rng  # A
    torch.cuda.current_device = lambda: torch.device("cpu")  # B
    for name in _FACTORIES:  # C
        fn = getattr(torch, name)
        if not getattr(fn, "__hybridrec_patched__", False):
            setattr(torch, name, _cuda_to_cpu_device(fn))
    torch.cuda.synchronize = lambda *args, **kwargs: None  # D
    torch.Tensor.type = _cuda_type_name(torch.Tensor.type)  # E
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # F
    if not torch.cuda.is_initialized():  # G
        torch.cuda._queued_calls = _DiscardedCalls(torch.cuda._queued_calls)
    # on CPU the RNG tracker's fork switches nothing (NOTES.md): megatron warns on every dropout call
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)
    _state["patched"] = True


# ---------------------------------------------------------------------------- choosing and current device
def gpu_available() -> bool:
    return torch.cuda.is_available()


def gpu_count() -> int:
    return torch.cuda.device_count() if gpu_available() else 0


def resolve_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. Refuses 'cuda' without a GPU."""
    if requested not in DEVICES:
        raise ConfigError("train.device", requested, "one of auto, cpu, cuda")
    if requested == "auto":
        return "cuda" if gpu_available() else "cpu"
    if requested == "cuda" and not gpu_available():
        raise ConfigError("train.device", requested, "cpu or auto (no CUDA device is visible)")
    return requested


def _make(resolved: str, local_rank: int) -> Device:
    return CudaDevice(local_rank % torch.cuda.device_count()) if resolved == "cuda" else CpuDevice()


def setup(requested: str = "auto", local_rank: int = 0) -> str:
    """Prepare this process for megatron on `requested` ('auto', 'cpu', 'cuda'); idempotent.

    Returns the resolved device name ('cpu' | 'cuda'); `current()` gives the `Device`. On CPU the
    torch patches above are applied; on GPU the process is bound to `local_rank`'s GPU.
    """
    active = _state["device"]
    resolved = active.type if active is not None and requested == "auto" else resolve_device(requested)
    if active is not None:
        if active.type != resolved:
            raise ConfigError("train.device", resolved, f"the device this process was set up for ({active.type})")
        return resolved
    dev = _make(resolved, local_rank)
    dev.prepare()
    _state["device"] = dev
    return resolved


def current() -> Device:
    """The device set up by `setup` (or swapped in by `use`); before any setup, the device `auto`
    would pick, without preparing it (no torch patches, no GPU binding)."""
    if _state["device"] is not None:
        return _state["device"]
    return _make(resolve_device("auto"), 0)


@contextlib.contextmanager
def use(dev: Device) -> Iterator[Device]:
    """Make `dev` the current device for a block (tests: `use(fake_cuda())`); not prepared."""
    previous = _state["device"]
    _state["device"] = dev
    try:
        yield dev
    finally:
        _state["device"] = previous


def device() -> torch.device:
    """The torch device tensors of this process live on (sets up 'auto' on first use)."""
    if _state["device"] is None:
        setup("auto")
    return _state["device"].torch_device


def is_cpu() -> bool:
    return device().type == "cpu"


def choose_backend(requested: str = "auto", cuda_available: bool | None = None) -> str:
    """Default process-group backend: gloo on CPU, nccl when a GPU is there; an explicit one wins."""
    if requested not in BACKENDS:
        raise ConfigError("parallel.backend", requested, f"one of {', '.join(BACKENDS)}")
    if requested != "auto":
        return requested
    if cuda_available is None:
        return current().collective_backend
    return GPU_BACKEND if cuda_available else CPU_BACKEND


def process_group_backend(requested: str = "auto") -> str:
    """torch.distributed backend: gloo on CPU, nccl on GPU, unless a config names one."""
    if requested not in BACKENDS:
        raise ConfigError("parallel.backend", requested, f"one of {', '.join(BACKENDS)}")
    if requested == GPU_BACKEND and not (gpu_available() or current().type == "cuda"):
        raise ConfigError("parallel.backend", requested, "gloo or auto (nccl needs a GPU)")
    return choose_backend(requested)


def bind(collective_backend: str, local_rank: int) -> None:
    """Bind this process to its GPU before a process group that needs one (NCCL) is created."""
    if collective_backend == GPU_BACKEND:
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
