"""Per-rank phase timers for one training step (owns the split of a step's wall time into phases).

`PhaseTimers` is callable like megatron-core's `Timers` (`timers(name, log_level=..)` returns an object
with `start(barrier=False)` / `stop(barrier=False)` / `elapsed()` / `reset()` / `active_time()`), so it can be
assigned to `TransformerConfig.timers` (and `OptimizerConfig.timers`): megatron's schedules then report
their compute, pipeline p2p, gradient-sync and optimizer sections to it. Our own code adds phases with
`with timers.phase("optimizer"): ...` or the module-level `phase(...)` (a no-op when no timers are
installed), so e.g. the gradient sync can time its intra-rack and cross-rack hops without a handle.

Time is attributed *exclusively* to the innermost running timer (megatron's 'forward-backward' wraps
everything else; the tensor-parallel collectives run inside 'forward-compute'), so the phases never
double count and `sum(phases) == step wall time` exactly; time inside no mapped timer goes to 'other'.
How much of the step the named phases explain is `1 - other / wall` (the coverage).

Data-parallel communication that overlaps backward runs on GradSync's worker thread, outside these
phases: the dp phases are the *exposed* part (what the step waited for; `dp_comm_exposed_s`), and
`add_comm_seconds` adds the worker's busy and *overlapped* seconds (`dp_comm_overlapped_s`, busy time
outside the waits; `dp_overlap_share` = overlapped / (overlapped + exposed)).

Pipeline receives ('forward-recv', 'backward-send-forward-recv', ...) block until the neighbouring stage
has produced its tensor, so their time is waiting (bubble) plus transfer. Per step we estimate the
transfer part as (number of receives) x (fastest receive of the step) and call the rest the bubble:
`pp_p2p` = sends + that transfer estimate, `pp_bubble` = receive time above it.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# phases of a step, in the order tables and stacked bars show them
PHASES: tuple[str, ...] = (
    "forward", "backward", "optimizer",
    "dp_comm_intra", "dp_comm_cross", "dp_comm",
    "tp_comm", "pp_p2p", "pp_bubble", "other",
)
COMM_PHASES: tuple[str, ...] = ("dp_comm_intra", "dp_comm_cross", "dp_comm", "tp_comm", "pp_p2p")
DP_PHASES: tuple[str, ...] = ("dp_comm_intra", "dp_comm_cross", "dp_comm")
_PP_RECV = "pp_recv"  # internal: split into pp_p2p + pp_bubble at the end of the step

# megatron-core 0.16.1 timer names (pipeline_parallel/schedules.py, p2p_communication.py,
# distributed/finalize_model_grads.py, optimizer/*.py) -> our phase
MEGATRON_TIMER_PHASES: dict[str, str] = {
    "forward-compute": "forward",
    "backward-compute": "backward",
    "forward-send": "pp_p2p",
    "backward-send": "pp_p2p",
    "forward-recv": _PP_RECV,
    "backward-recv": _PP_RECV,
    "forward-send-backward-recv": _PP_RECV,
    "backward-send-forward-recv": _PP_RECV,
    "forward-send-forward-recv": _PP_RECV,
    "backward-send-backward-recv": _PP_RECV,
    "forward-backward-send-forward-backward-recv": _PP_RECV,
    "all-grads-sync": "dp_comm",
    "params-all-gather": "dp_comm",
    "non-tensor-parallel-grads-all-reduce": "tp_comm",
    "embedding-grads-all-reduce": "pp_p2p",
    "conditional-embedder-grads-all-reduce": "pp_p2p",
    "forward-backward": "other",  # the schedule's envelope: its own (exclusive) time is overhead
}


def phase_of(name: str) -> str:
    """Map a timer name (ours or megatron's) to a phase; unknown names count as 'other'."""
    if name in PHASES or name == _PP_RECV:
        return name
    if name in MEGATRON_TIMER_PHASES:
        return MEGATRON_TIMER_PHASES[name]
    if name.startswith("optimizer"):
        return "optimizer"
    return "other"


def _device() -> Any:
    """The process's `backend.Device` when torch is loaded (this module never imports torch itself)."""
    if "torch" not in sys.modules:
        return None
    from hybridrec.distributed import backend

    return backend.current()


def peak_memory_bytes() -> tuple[int, str]:
    """(peak bytes, source), asked of the device: the GPU allocator's peak on GPU, else the process's max RSS."""
    device = _device()
    if device is not None:
        return device.peak_memory_bytes()
    # Linux reports ru_maxrss in KiB
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "ru_maxrss"


class _Timer:
    """One named timer handed out by PhaseTimers; megatron's Timer interface."""

    def __init__(self, owner: PhaseTimers, name: str):
        self.name, self._owner = name, owner
        self._started = False
        self._elapsed = 0.0
        self._active = 0.0
        self._t0 = 0.0
        self._cpu0 = 0.0
        self.cpu_elapsed = 0.0  # process CPU seconds inside this timer since the last snapshot

    def start(self, barrier: bool = False) -> None:
        if self._started:
            raise RuntimeError(f"timer '{self.name}' has already been started")
        self._owner._sync(barrier)
        self._t0 = self._owner._push(self)
        self._cpu0 = self._owner._cpu_clock()
        self._started = True

    def stop(self, barrier: bool = False) -> None:
        if not self._started:
            raise RuntimeError(f"timer '{self.name}' is not started")
        self._owner._sync(barrier)
        now = self._owner._pop(self)
        self._elapsed += now - self._t0
        self._active += now - self._t0
        self.cpu_elapsed += self._owner._cpu_clock() - self._cpu0
        self._started = False

    def reset(self) -> None:
        self._elapsed = 0.0
        self._started = False

    def elapsed(self, reset: bool = True, barrier: bool = False) -> float:
        running = self._started
        if running:
            self.stop(barrier=barrier)
        value = self._elapsed
        if reset:
            self._elapsed = 0.0
        if running:
            self.start(barrier=barrier)
        return value

    def active_time(self) -> float:
        return self._active


class PhaseTimers:
    """Exclusive per-phase step timing; see the module docstring.

    clock: seconds, monotonic (injectable for tests); cpu_clock: this process's CPU seconds (the work
    itself, without the waits for a core on a shared machine). cuda_sync: synchronize the device at
    every start/stop (like megatron's Timer) so host time matches device work; None = when the current
    device is a GPU (the device's `synchronize()`; a no-op on CPU).

    Two views of the same timers: the exclusive phase split of a step (`begin_step` / `end_step`, for
    telemetry), and inclusive per-name wall and CPU seconds since the last `snapshot()` (megatron's
    own meaning of a timer: 'forward-compute' includes the tensor-parallel collectives inside it), which
    the adaptive balance watch and the pipeline benchmark read.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter, cuda_sync: bool | None = None,
                 barrier_group: Any = None, cpu_clock: Callable[[], float] = time.process_time):
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._cuda_sync = cuda_sync
        self._barrier_group = barrier_group
        self._timers: dict[str, _Timer] = {}
        self._stack: list[_Timer] = []
        self._last = clock()
        self._in_step = False
        self._step_t0 = 0.0
        self._reset_step_totals()
        self.last_summary: dict[str, float] = {}

    # ---- megatron's Timers interface ----
    def __call__(self, name: str, log_level: int | None = None) -> _Timer:
        timer = self._timers.get(name)
        if timer is None:
            timer = self._timers[name] = _Timer(self, name)
        return timer

    def log(self, names: list[str], *args: Any, **kwargs: Any) -> None:
        """megatron's Timers.log; we report through step summaries instead, so nothing to print."""

    # ---- our interface ----
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block as `name` (a phase or a megatron timer name)."""
        timer = self(name)
        timer.start()
        try:
            yield
        finally:
            timer.stop()

    def begin_step(self) -> None:
        """Start a step: phase totals restart from zero now (running timers keep running)."""
        now = self._clock()
        self._last = now
        self._step_t0 = now
        self._reset_step_totals()
        self._in_step = True

    def add_bytes(self, intra_rack: int = 0, cross_rack: int = 0) -> None:
        """Add data-parallel bytes sent by this rank in this step (from the ByteCounter)."""
        self._bytes_intra += int(intra_rack)
        self._bytes_cross += int(cross_rack)

    def add_comm_seconds(self, worker_s: float = 0.0, overlapped_s: float = 0.0) -> None:
        """Add the gradient-sync worker's seconds of this step (GradSync's CommClock.step()):
        busy time, and the part of it the step did not wait for (overlapped with compute)."""
        self._comm_worker += float(worker_s)
        self._comm_overlapped += float(overlapped_s)

    def add_byte_counts(self, counts: dict[str, int]) -> None:
        """Add a ByteCounter.step_end() dict ('bytes/intra_rack', 'bytes/cross_rack')."""
        self.add_bytes(counts.get("bytes/intra_rack", 0), counts.get("bytes/cross_rack", 0))

    def end_step(self, samples: int = 0, tokens: int = 0) -> dict[str, float]:
        """Close the step; return seconds per phase ('t_<phase>_s'), 'wall_s', rates, bytes, peak memory."""
        if not self._in_step:
            raise RuntimeError("end_step() without begin_step()")
        now = self._clock()
        self._account(now)
        wall = now - self._step_t0
        totals = dict(self._totals)
        recv_total = totals.pop(_PP_RECV, 0.0)
        transfer = len(self._recv_durations) * min(self._recv_durations) if self._recv_durations else 0.0
        totals["pp_p2p"] = totals.get("pp_p2p", 0.0) + transfer
        totals["pp_bubble"] = totals.get("pp_bubble", 0.0) + (recv_total - transfer)
        summary = {f"t_{p}_s": totals.get(p, 0.0) for p in PHASES}
        summary["wall_s"] = wall
        summary["samples"] = float(samples)
        summary["tokens"] = float(tokens)
        summary["samples_per_s"] = samples / wall if wall > 0 else 0.0
        summary["tokens_per_s"] = tokens / wall if wall > 0 else 0.0
        summary["dp_bytes_intra"] = float(self._bytes_intra)
        summary["dp_bytes_cross"] = float(self._bytes_cross)
        summary["comm_share_dp"] = sum(totals.get(p, 0.0) for p in DP_PHASES) / wall if wall > 0 else 0.0
        summary["comm_share_all"] = sum(totals.get(p, 0.0) for p in COMM_PHASES) / wall if wall > 0 else 0.0
        summary["coverage"] = 1.0 - totals.get("other", 0.0) / wall if wall > 0 else 0.0
        # exposed dp communication = what the step waited for (the dp phases, inside wall_s);
        # overlapped = the sync worker's busy time outside those waits (hidden behind compute, not a phase)
        exposed = sum(totals.get(p, 0.0) for p in DP_PHASES)
        summary["dp_comm_exposed_s"] = exposed
        summary["dp_comm_overlapped_s"] = self._comm_overlapped
        summary["dp_comm_worker_s"] = self._comm_worker
        hidden_total = exposed + self._comm_overlapped
        summary["dp_overlap_share"] = self._comm_overlapped / hidden_total if hidden_total > 0 else 0.0
        summary["peak_mem_bytes"] = float(peak_memory_bytes()[0])
        self._in_step = False
        self.last_summary = summary
        return summary

    def snapshot(self, reset: bool = True) -> dict[str, float]:
        """Inclusive wall seconds per megatron timer name since the last snapshot, plus `compute_s`
        (forward + backward compute of this stage), `compute_cpu_s` (the same in process CPU time) and
        `p2p_s` (pipeline sends/receives, bubble waits included)."""
        out = {name: timer._elapsed for name, timer in self._timers.items() if timer._elapsed}
        cpu = {name: timer.cpu_elapsed for name, timer in self._timers.items()}
        compute = ("forward-compute", "backward-compute")
        out["compute_s"] = sum(out.get(name, 0.0) for name in compute)
        out["compute_cpu_s"] = sum(cpu.get(name, 0.0) for name in compute)
        out["p2p_s"] = sum(v for k, v in out.items() if "send" in k or "recv" in k)
        if reset:
            for timer in self._timers.values():
                timer._elapsed, timer.cpu_elapsed = 0.0, 0.0
        return out

    def step_summary(self) -> dict[str, float]:
        """The ARCHITECTURE contract's name: end the running step (no sample counts) and return it."""
        return self.end_step() if self._in_step else dict(self.last_summary)

    # ---- internals ----
    def _reset_step_totals(self) -> None:
        self._totals: dict[str, float] = {}
        self._recv_durations: list[float] = []
        self._recv_open: dict[int, float] = {}
        self._bytes_intra = 0
        self._bytes_cross = 0
        self._comm_worker = 0.0
        self._comm_overlapped = 0.0

    def _sync(self, barrier: bool) -> None:
        torch = sys.modules.get("torch")
        if barrier and torch is not None and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            torch.distributed.barrier(group=self._barrier_group)
        if self._cuda_sync is False:
            return
        device = _device()
        if device is not None and (self._cuda_sync or not device.is_cpu):
            device.synchronize()

    def _account(self, now: float) -> None:
        """Give the time since the last event to the innermost running timer (or 'other')."""
        if self._in_step:
            phase = phase_of(self._stack[-1].name) if self._stack else "other"
            self._totals[phase] = self._totals.get(phase, 0.0) + (now - self._last)
        self._last = now

    def _push(self, timer: _Timer) -> float:
        now = self._clock()
        self._account(now)
        self._stack.append(timer)
        if phase_of(timer.name) == _PP_RECV:
            self._recv_open[id(timer)] = now
        return now

    def _pop(self, timer: _Timer) -> float:
        now = self._clock()
        self._account(now)
        # megatron's timers nest; tolerate an out-of-order stop by removing it wherever it is
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i] is timer:
                del self._stack[i]
                break
        opened = self._recv_open.pop(id(timer), None)
        if opened is not None and self._in_step:
            self._recv_durations.append(now - max(opened, self._step_t0))
        return now


_ACTIVE: PhaseTimers | None = None


def install(timers: PhaseTimers | None) -> None:
    """Make `timers` the process's active timers for `phase(...)` (None uninstalls)."""
    global _ACTIVE
    _ACTIVE = timers


def active() -> PhaseTimers | None:
    return _ACTIVE


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a block on the installed PhaseTimers; a no-op when none is installed."""
    if _ACTIVE is None:
        yield
        return
    with _ACTIVE.phase(name):
        yield


_TP_COLLECTIVES = ("_reduce", "_gather_along_last_dim", "_reduce_scatter_along_last_dim",
                   "_gather_along_first_dim", "_reduce_scatter_along_first_dim")


def instrument_tensor_parallel(timers: PhaseTimers) -> Callable[[], None]:
    """Time megatron's tensor-parallel collectives (tensor_parallel/mappings.py) as 'tp_comm'.

    megatron does not time them itself; its autograd functions look these helpers up as module
    globals, so wrapping the module attributes catches every call. Returns a function that undoes it.
    Not covered: the vocab-parallel cross-entropy's own all-reduces (they stay in forward/backward).
    """
    from megatron.core.tensor_parallel import mappings

    originals = {name: getattr(mappings, name) for name in _TP_COLLECTIVES}

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with timers.phase("tp_comm"):
                return fn(*args, **kwargs)
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    for name, fn in originals.items():
        setattr(mappings, name, wrap(fn))

    def undo() -> None:
        for name, fn in originals.items():
            setattr(mappings, name, fn)

    return undo
