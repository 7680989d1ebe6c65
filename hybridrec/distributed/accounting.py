"""Byte accounting for gradient communication: bytes this rank sends, per hop and per step, split
intra-rack / cross-rack. Counts come from the actual payload sizes and the algorithm's message
pattern (not from socket counters):

- backend ring all-reduce of S bytes over n ranks: 2(n-1)/n * S sent per rank, to its ring successor
  (group order = sorted global ranks, as torch orders a process group);
- ring all-gather of a P-byte payload: (n-1) * P per rank, to its successor;
- our point-to-point hops (rack ring reduce-scatter / all-gather, rack leader reduce / broadcast):
  exactly the bytes handed to each send.

A message is cross-rack when sender and receiver sit in different racks.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence

from hybridrec.topology import RackMap


def ring_allreduce_bytes(nbytes: int, n: int) -> int:
    """Bytes one rank sends in a ring all-reduce of `nbytes` over n ranks: 2(n-1)/n * S."""
    return round(2 * (n - 1) * nbytes / n) if n > 1 else 0


def ring_allgather_bytes(payload_bytes: int, n: int) -> int:
    """Bytes one rank sends in a ring all-gather of equal `payload_bytes` per rank: (n-1) * P."""
    return (n - 1) * payload_bytes if n > 1 else 0


def ring_successor(members: Sequence[int], rank: int) -> int:
    ordered = sorted(members)
    return ordered[(ordered.index(rank) + 1) % len(ordered)]


def ring_cross_edges(members: Sequence[int], rack_map: RackMap) -> int:
    """How many edges of the ring over `members` (sorted order) join two different racks."""
    ordered = sorted(members)
    if len(ordered) < 2:
        return 0
    return sum(not rack_map.same_rack(a, ordered[(i + 1) % len(ordered)]) for i, a in enumerate(ordered))


class ByteCounter:
    """Per-rank counter. `add` is called by the all-reduce code (possibly from the async worker
    thread); `step_end()` returns the step's dict for telemetry and starts a new step."""

    def __init__(self, rack_map: RackMap, rank: int):
        self.rack_map, self.rank = rack_map, rank
        self._lock = threading.Lock()
        self._step: dict[str, int] = defaultdict(int)
        self._total: dict[str, int] = defaultdict(int)

    def add(self, hop: str, nbytes: int, dst: int) -> None:
        """Record `nbytes` sent by this rank to global rank `dst` on `hop`."""
        kind = "intra_rack" if self.rack_map.same_rack(self.rank, dst) else "cross_rack"
        with self._lock:
            for key in (f"bytes/{kind}", f"bytes/hop/{hop}", "bytes/total"):
                self._step[key] += nbytes
                self._total[key] += nbytes

    def add_ring(self, hop: str, nbytes: int, members: Sequence[int]) -> None:
        """Record a ring collective's per-rank send volume (to the ring successor)."""
        if len(members) > 1 and nbytes:
            self.add(hop, nbytes, ring_successor(members, self.rank))

    def current(self) -> dict[str, int]:
        with self._lock:
            return dict(self._step)

    def step_end(self) -> dict[str, int]:
        with self._lock:
            step = {"bytes/intra_rack": 0, "bytes/cross_rack": 0, "bytes/total": 0, **self._step}
            self._step = defaultdict(int)
        return step

    def totals(self) -> dict[str, int]:
        with self._lock:
            return {"bytes/intra_rack": 0, "bytes/cross_rack": 0, "bytes/total": 0, **self._total}
