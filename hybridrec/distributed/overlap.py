"""Overlap the gradient sync with backward: GradSync driven per megatron gradient bucket.

`BucketedGradSync(grad_sync, overlap)` takes over megatron-core 0.16.1's per-bucket-group
`start_grad_sync()` (called by megatron's backward hooks when every gradient of the group is ready,
with `DistributedDataParallelConfig(overlap_grad_reduce=True)`) and the chunk's `finish_grad_sync()`
(called by `finalize_model_grads` after backward):

- overlap=True: a ready bucket group is scaled by its `gradient_scaling_factor` and handed to
  `GradSync.start_(..., background=True)`; the FIFO worker reduces it (any algorithm, codec, error
  feedback per bucket) while backward goes on. Groups are released in bucket order (a group that is
  ready early waits for its predecessors), so every rank issues the same collectives in the same
  order. `finish_grad_sync` submits what is left, then waits only for what is still in flight.
- overlap=False: nothing happens during backward; `finish_grad_sync` reduces the same groups, in
  the same order, with the same keys, on the calling thread (async mode: on the worker, as always).

Both paths run the same per-bucket operations on the same megatron buckets, so their results are
bit-identical. Mode async / local_sgd work per bucket as in `GradSync.reduce_` (the staleness queue
is per bucket group; local_sgd leaves gradients alone). megatron's first step after a buffer is
built launches nothing from its hooks (it learns the hook counts), so that step's sync is exposed.

Time: `CommClock` records the worker's busy intervals and the caller's waits; per step,
exposed = the time the step waited (megatron's 'all-grads-sync' timer, phase dp_comm) and
overlapped = worker busy time outside those waits (`overlapped_seconds`, pure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future

    from hybridrec.distributed.grad_sync import GradSync, PendingReduce

Interval = tuple[float, float]


def _merge(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(i for i in intervals if i[1] > i[0]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def covered_seconds(intervals: list[Interval]) -> float:
    return sum(hi - lo for lo, hi in _merge(intervals))


def overlapped_seconds(busy: list[Interval], waits: list[Interval]) -> float:
    """Seconds of `busy` (worker communicating) not inside any of `waits` (caller blocked on it)."""
    busy_m, waits_m = _merge(busy), _merge(waits)
    hidden = 0.0
    for lo, hi in busy_m:
        inside = sum(max(0.0, min(hi, w_hi) - max(lo, w_lo)) for w_lo, w_hi in waits_m)
        hidden += (hi - lo) - inside
    return hidden


class CommClock:
    """Thread-safe record of communication intervals: `timed(fn, *args)` runs on the worker and
    records its busy interval; `wait(future)` records how long the caller blocked. `step()` returns
    and clears the step's seconds."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: list[Interval] = []
        self._waits: list[Interval] = []

    def timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = self._clock()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy.append((t0, self._clock()))

    def wait(self, future: Future) -> Any:
        t0 = self._clock()
        try:
            return future.result()
        finally:
            with self._lock:
                self._waits.append((t0, self._clock()))

    def add_wait(self, interval: Interval) -> None:
        with self._lock:
            self._waits.append(interval)

    def step(self) -> dict[str, float]:
        """{'worker_s': worker busy seconds, 'overlapped_s': busy seconds outside the caller's waits}
        since the last call. A task still running is counted when it ends."""
        with self._lock:
            busy, waits = self._busy, self._waits
            self._busy, self._waits = [], []
        return {"worker_s": covered_seconds(busy), "overlapped_s": overlapped_seconds(busy, waits)}


@dataclass
class _ChunkState:
    chunk: Any  # megatron DistributedDataParallel
    name: str  # "chunk<i>/"
    ready: list[bool] = field(default_factory=list)
    handles: list[PendingReduce | None] = field(default_factory=list)
    next_group: int = 0  # first bucket group not yet started this step
    called: bool = False  # grad_sync.begin_call() done this step


class BucketedGradSync:
    """GradSync per megatron bucket group of each DDP chunk; see the module docstring."""

    def __init__(self, grad_sync: GradSync, overlap: bool):
        self.grad_sync, self.overlap = grad_sync, overlap
        self._states: dict[int, _ChunkState] = {}

    # -- wiring -----------------------------------------------------------------------------------
    def attach(self, chunk: Any, index: int) -> _ChunkState:
        """Take over `chunk`'s bucket groups' start_grad_sync (idempotent per chunk object)."""
        state = self._states.get(id(chunk))
        if state is not None and state.chunk is chunk:
            return state
        state = _ChunkState(chunk, f"chunk{index}/", [False] * len(chunk.bucket_groups),
                            [None] * len(chunk.bucket_groups))
        for position, bucket_group in enumerate(chunk.bucket_groups):
            # instance attribute shadows _ParamAndGradBucketGroup.start_grad_sync (megatron's hook calls it)
            bucket_group.start_grad_sync = _ready_callback(self, state, position)
        self._states[id(chunk)] = state
        return state

    def detach_all(self) -> None:
        for state in self._states.values():
            for bucket_group in state.chunk.bucket_groups:
                bucket_group.__dict__.pop("start_grad_sync", None)
        self._states.clear()

    # -- during backward --------------------------------------------------------------------------
    def ready(self, state: _ChunkState, position: int) -> None:
        """megatron: every gradient of bucket group `position` is final for this step."""
        state.ready[position] = True
        if self.overlap:
            while state.next_group < len(state.ready) and state.ready[state.next_group]:
                self._start(state, state.next_group)
                state.next_group += 1

    def _start(self, state: _ChunkState, position: int) -> None:
        if not state.called:
            self.grad_sync.begin_call()
            state.called = True
        bucket_group = state.chunk.bucket_groups[position]
        for bucket in bucket_group.buckets:
            if bucket.gradient_scaling_factor != 1.0:
                bucket.grad_data *= bucket.gradient_scaling_factor
        average = bool(state.chunk.ddp_config.average_in_collective)
        state.handles[position] = self.grad_sync.start_(
            [bucket.grad_data for bucket in bucket_group.buckets], average, f"{state.name}g{position}/",
            background=self.overlap)

    # -- after backward ---------------------------------------------------------------------------
    def finish(self, state: _ChunkState) -> None:
        """Start the groups not started yet (in order), then complete every group's reduction."""
        t0 = time.perf_counter()
        while state.next_group < len(state.ready):
            self._start(state, state.next_group)
            state.next_group += 1
        if not state.called:  # no groups (local_sgd still counts its call)
            self.grad_sync.begin_call()
        for position, handle in enumerate(state.handles):
            if handle is not None:
                self.grad_sync.finish_(handle)
            state.handles[position] = None
        for bucket_group in state.chunk.bucket_groups:  # what megatron's finish_grad_sync resets
            bucket_group.param_gather_dispatched = False
        state.ready = [False] * len(state.ready)
        state.next_group, state.called = 0, False
        if not self.overlap:  # the inline reductions were waited for too
            self.grad_sync.clock.add_wait((t0, time.perf_counter()))


def _ready_callback(owner: BucketedGradSync, state: _ChunkState, position: int) -> Callable[..., None]:
    def start_grad_sync(force_all_reduce: bool | None = False) -> None:
        owner.ready(state, position)

    return start_grad_sync
