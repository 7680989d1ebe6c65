"""GradSync: bucketed data-parallel gradient averaging over one dp group, with a rack-aware
algorithm (flat / hierarchical), a codec with error feedback, and a mode:

- sync: every call reduces and returns averaged gradients.
- async (bounded staleness s): the call snapshots the gradients, queues their reduction on a
  background worker (one FIFO thread, so every rank issues collectives in the same order) and
  writes back the average that was queued s calls earlier; the first s calls write zeros (no
  update yet, replicas stay identical). s=0 waits for its own result: exactly the sync result.
  In-flight results (at most s steps) are not part of `state_dict()`.
- local_sgd: gradients stay local; `after_optimizer_step_(params)` averages parameters every
  `local_sgd_period` steps.

Buckets: the tensors are viewed as one stream of elements cut into buckets of `bucket_bytes`
(a bucket inside one contiguous tensor is reduced in place; one spanning tensors goes through a
staging copy). A straggler knob sleeps on one rank before its communication, for experiments.

Device: buckets, snapshots, codec payloads and error-feedback residuals live on the gradients'
device, and the groups carry that device's backend (NCCL on GPU). Only when the groups were built
with `cpu_staging` (config `allreduce.cpu_staging`) each bucket is copied to host memory for the
collectives (gloo) and copied back; residuals then live on the host.

Split calls (the overlapped megatron path, `hybridrec.distributed.overlap`): `begin_call()` once
per synced set and step, then `start_(tensors, average, name, background)` when the tensors are
final (background: the reduction runs on the FIFO worker while the caller goes on) and
`finish_(handle)` when the result is needed. `reduce_` is exactly begin_call + start_ + finish_, so
the split path gives bit-identical results. `clock` records the worker's busy intervals and the
caller's waits, for exposed vs overlapped communication time.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from hybridrec.config.comm import AllreduceConfig, CompressionConfig, validate_comm
from hybridrec.distributed.accounting import ByteCounter
from hybridrec.distributed.allreduce import CommGroups, ReduceContext, get_algorithm
from hybridrec.distributed.compression import Codec, make_codec
from hybridrec.distributed.compression.none import NoneCodec
from hybridrec.distributed.overlap import CommClock
from hybridrec.errors import ConfigError

Segment = tuple[int, int, int]  # (tensor index, start element, end element)


@dataclass
class PendingReduce:
    """What `GradSync.start_` began: the tensors, their bucket plan, the set's name, and the
    background reduction (sync mode with background=True)."""

    tensors: list[torch.Tensor]
    plan: list[list[Segment]]
    name: str
    future: Future | None = None


@dataclass(frozen=True)
class Straggler:
    rank: int = -1
    delay_s: float = 0.0
    every: int = 1


def plan_buckets(numels: list[int], bucket_elems: int) -> list[list[Segment]]:
    """Cut the concatenation of tensors with `numels` elements into buckets of <= bucket_elems."""
    buckets: list[list[Segment]] = [[]]
    room = bucket_elems
    for index, numel in enumerate(numels):
        start = 0
        while start < numel:
            if room == 0:
                buckets.append([])
                room = bucket_elems
            take = min(room, numel - start)
            buckets[-1].append((index, start, start + take))
            start += take
            room -= take
    return [b for b in buckets if b]


class GradSync:
    def __init__(
        self,
        groups: CommGroups,
        *,
        algorithm: str = "flat",
        variant: str = "leader",
        codec: Codec | None = None,
        error_feedback: bool = True,
        compress_hops: str = "cross_rack",
        mode: str = "sync",
        staleness: int = 0,
        bucket_bytes: int = 25 * 2**20,
        counter: ByteCounter | None = None,
        local_sgd_period: int = 8,
        straggler: Straggler = Straggler(),
    ):
        if mode not in ("sync", "async", "local_sgd"):
            raise ConfigError("allreduce.mode", mode, "one of ['sync', 'async', 'local_sgd']")
        if bucket_bytes < 4:
            raise ConfigError("allreduce.bucket_mb", bucket_bytes / 2**20, "a bucket of at least one fp32 element")
        self.groups, self.mode, self.staleness = groups, mode, staleness
        self.counter = counter if counter is not None else ByteCounter(groups.rack_map, groups.rank)
        self.algorithm_name = algorithm if algorithm != "hierarchical" else f"hierarchical/{variant}"
        self._sum = get_algorithm(algorithm, variant)
        self.ctx = ReduceContext(
            groups=groups, counter=self.counter, codec=codec or NoneCodec(), error_feedback=error_feedback,
            compress_all_hops=compress_hops == "all",
        )
        self._dense_ctx = ReduceContext(groups=groups, counter=self.counter)
        self.cpu_staging = groups.cpu_staging
        self.bucket_elems = bucket_bytes // 4
        self.local_sgd_period, self.straggler = local_sgd_period, straggler
        self.calls = 0
        self.local_steps = 0
        self._plans: dict[tuple[str, tuple[int, ...]], list[list[Segment]]] = {}
        self._pending: dict[str, collections.deque[Future]] = collections.defaultdict(collections.deque)
        self._worker: ThreadPoolExecutor | None = None  # the FIFO worker, started on first use
        self.clock = CommClock()

    @classmethod
    def from_config(
        cls, groups: CommGroups, allreduce: AllreduceConfig, compression: CompressionConfig,
        counter: ByteCounter | None = None,
    ) -> GradSync:
        validate_comm(allreduce, compression, groups.rack_map.world_size)
        if allreduce.cpu_staging != groups.cpu_staging:
            raise ConfigError("allreduce.cpu_staging", allreduce.cpu_staging,
                              f"{groups.cpu_staging}, as the groups were built "
                              "(pass cpu_staging=cfg.allreduce.cpu_staging to build_comm_groups)")
        if allreduce.algorithm == "megatron":
            raise ConfigError("allreduce.algorithm", "megatron", "flat or hierarchical to build a GradSync")
        return cls(
            groups, algorithm=allreduce.algorithm, variant=allreduce.variant, codec=make_codec(compression),
            error_feedback=compression.error_feedback, compress_hops=compression.hops, mode=allreduce.mode,
            staleness=allreduce.staleness, bucket_bytes=int(allreduce.bucket_mb * 2**20), counter=counter,
            local_sgd_period=allreduce.local_sgd_period,
            straggler=Straggler(allreduce.straggler_rank, allreduce.straggler_delay_s, allreduce.straggler_every),
        )

    @property
    def size(self) -> int:
        return len(self.groups.group_ranks)

    # ---- gradients ------------------------------------------------------------------------------
    def sync_(self, tensors: list[torch.Tensor], name: str = "") -> None:
        """Average `tensors` in place across the group (sum / group size)."""
        self.reduce_(tensors, average=True, name=name)

    def reduce_(self, tensors: list[torch.Tensor], average: bool, name: str = "") -> None:
        """Sum (or average) `tensors` in place across the group per the mode; `name` keeps separate
        buckets / residuals / queues for separately synced sets (e.g. megatron model chunks)."""
        self.begin_call()
        self.finish_(self.start_(tensors, average, name))

    def begin_call(self) -> None:
        """Once per synced set and step, before its first `start_`: counts the call, straggles."""
        self.calls += 1
        if self.mode != "local_sgd":
            self._maybe_straggle()

    def start_(self, tensors: list[torch.Tensor], average: bool, name: str = "",
               background: bool = False) -> PendingReduce:
        """Begin reducing `tensors` (final from here on): sync runs now, or on the FIFO worker with
        `background`; async snapshots them and queues the reduction; local_sgd does nothing."""
        plan = self._plan(tensors, name)
        handle = PendingReduce(tensors, plan, name)
        if self.mode == "local_sgd":
            return handle
        if self.mode == "sync":
            if background:
                handle.future = self.submit(self._reduce_in_place, tensors, plan, average, name)
            else:
                self._reduce_in_place(tensors, plan, average, name)
            return handle
        snapshot = [self._stage(_gather(tensors, segments)) for segments in plan]
        self._pending[name].append(self.submit(self._reduce_snapshot, snapshot, average, name))
        return handle

    def finish_(self, handle: PendingReduce) -> None:
        """Complete a `start_`: wait for a background sync; async writes back the result queued
        `staleness` calls earlier (zeros while there is none)."""
        if self.mode == "local_sgd":
            return
        if self.mode == "sync":
            if handle.future is not None:
                self.clock.wait(handle.future)
            return
        queue = self._pending[handle.name]
        if len(queue) > self.staleness:
            reduced = self.clock.wait(queue.popleft())
            for segments, flat in zip(handle.plan, reduced):
                _scatter(handle.tensors, segments, flat)
        else:
            for tensor in handle.tensors:
                tensor.zero_()

    def submit(self, fn: Any, *args: Any) -> Future:
        """Run `fn(*args)` on the single FIFO worker thread (every rank issues collectives in the
        order of its submissions); its busy time goes to `clock`."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradsync")
        return self._worker.submit(self.clock.timed, fn, *args)

    def _reduce_in_place(self, tensors: list[torch.Tensor], plan: list[list[Segment]], average: bool,
                         name: str) -> None:
        for index, segments in enumerate(plan):
            self._reduce_bucket(tensors, segments, average, f"{name}b{index}", self.ctx)

    def _reduce_snapshot(self, snapshot: list[torch.Tensor], average: bool, name: str) -> list[torch.Tensor]:
        for index, flat in enumerate(snapshot):
            self._sum(flat, self.ctx, f"{name}b{index}")
            if average:
                flat.div_(self.size)
        return snapshot

    def _reduce_bucket(self, tensors: list[torch.Tensor], segments: list[Segment], average: bool, key: str,
                       ctx: ReduceContext) -> None:
        flat = _gather(tensors, segments)
        work = self._stage(flat) if self.cpu_staging else flat
        self._sum(work, ctx, key)
        if average:
            work.div_(self.size)
        if work is not flat:
            flat.copy_(work)
        if not _is_view(tensors, segments):
            _scatter(tensors, segments, flat)

    def _stage(self, flat: torch.Tensor) -> torch.Tensor:
        """A private copy of a bucket for the collectives: host memory under cpu_staging, else on its
        device. (Only here does a bucket leave its device, and only when asked.)"""
        from hybridrec.distributed.backend import HOST

        return flat.to(HOST, copy=True) if self.cpu_staging else flat.clone()

    def _plan(self, tensors: list[torch.Tensor], name: str) -> list[list[Segment]]:
        signature = (name, tuple(t.numel() for t in tensors))
        if signature not in self._plans:
            for i, t in enumerate(tensors):
                if not t.is_contiguous():
                    raise ValueError(f"GradSync: tensor {i} of '{name}' is not contiguous")
            self._plans[signature] = plan_buckets(list(signature[1]), self.bucket_elems)
        return self._plans[signature]

    def _maybe_straggle(self) -> None:
        s = self.straggler
        if s.rank == self.groups.rank and s.delay_s > 0 and self.calls % s.every == 0:
            time.sleep(s.delay_s)

    def drain(self) -> None:
        """Wait for every queued async reduction (their results are dropped)."""
        for queue in self._pending.values():
            while queue:
                queue.popleft().result()

    def close(self) -> None:
        self.drain()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    # ---- local SGD --------------------------------------------------------------------------------
    def after_optimizer_step_(self, params: list[torch.Tensor], name: str = "params") -> bool:
        """local_sgd mode: average `params` (dense) every `local_sgd_period` calls; True if averaged."""
        if self.mode != "local_sgd":
            return False
        self.local_steps += 1
        if self.local_steps % self.local_sgd_period:
            return False
        for index, segments in enumerate(self._plan(params, name)):
            self._reduce_bucket(params, segments, True, f"{name}b{index}", self._dense_ctx)
        return True

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        for queue in self._pending.values():  # let the worker finish touching the residuals
            for future in queue:
                future.result()
        memory = {key: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                  for key, state in self.ctx.memory.items()}
        return {"memory": memory, "calls": self.calls, "local_steps": self.local_steps,
                "algorithm": self.algorithm_name, "codec": self.ctx.codec.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ctx.memory.clear()
        self.ctx.memory.update({key: dict(value) for key, value in state["memory"].items()})
        self.calls, self.local_steps = state["calls"], state["local_steps"]


def _view(tensors: list[torch.Tensor], segment: Segment) -> torch.Tensor:
    index, start, end = segment
    return tensors[index].view(-1)[start:end]


def _is_view(tensors: list[torch.Tensor], segments: list[Segment]) -> bool:
    """Whether `_gather` returns a view of the tensors (one fp32 segment) rather than a copy."""
    return len(segments) == 1 and tensors[segments[0][0]].dtype == torch.float32


def _gather(tensors: list[torch.Tensor], segments: list[Segment]) -> torch.Tensor:
    """A 1-D fp32 tensor of the bucket: a view when possible, else a staging copy."""
    if len(segments) == 1:
        view = _view(tensors, segments[0])
        return view if view.dtype == torch.float32 else view.float()
    return torch.cat([_view(tensors, s).float() for s in segments])


def _scatter(tensors: list[torch.Tensor], segments: list[Segment], flat: torch.Tensor) -> None:
    offset = 0
    for segment in segments:
        view = _view(tensors, segment)
        view.copy_(flat[offset:offset + view.numel()])
        offset += view.numel()
