"""Alpha-beta scaling model of data-parallel communication (pure: no processes, no I/O).

One concept: the time and cross-rack bytes of a step's communication on a cluster described by its
shape (GPUs per node, nodes per rack, racks) and one latency alpha / bandwidth beta per link class
(`intra_node`, `intra_rack`, `cross_rack`) and transfer primitive (`ring`: a ring all-reduce step;
`exchange`: point-to-point messages and all-gathers, which gloo moves at a different rate), plus
shared capacities (a node's NICs, a rack's uplink) split between the flows that cross them.

Algorithms, with the project's own message patterns and byte accounting
(`hybridrec.distributed.accounting`, codec `part_specs`, which equal each codec's `wire_bytes`):
- flat ring all-reduce over all n ranks in rank order: 2(n-1) lock-step steps of S/n;
- hierarchical `leader` (the default GradSync variant): members send S to the rack leader, leaders
  ring-all-reduce across racks, leaders send the result back; dense buckets are pipelined in chunks;
- hierarchical `reduce_scatter`: ring reduce-scatter in the rack, one cross-rack ring per shard column
  (all columns at once, sharing the uplink), ring all-gather in the rack (the variant that scales);
- a codec on the cross-rack hop (top-k, 1-bit sign, fp16): encode, all-gather of payloads among the
  racks ((R-1) P per member), decode every payload; compute costs from measured rates per element;
- the 2D embedding: all-to-all inside each group of E ranks and the replica all-reduce over M = n/E
  (bytes from `hybridrec.embedding.memory`).
Step time = compute + communication (no overlap) or forward + max(backward, communication) (perfect
overlap of communication with backward): the two bounds of the exposed-communication share.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from hybridrec.distributed.accounting import ring_allgather_bytes, ring_allreduce_bytes
from hybridrec.errors import ConfigError

LINK_CLASSES = ("intra_node", "intra_rack", "cross_rack")
PRIMITIVES = ("ring", "exchange")
CODEC_NAMES = ("none", "fp16", "bf16", "topk", "sign1bit")


@dataclass(frozen=True)
class Link:
    """Per-flow latency (s) and bandwidth (bytes/s, one direction) of one link class and primitive."""

    alpha_s: float
    beta_bytes_per_s: float

    def time(self, nbytes: float, beta: float | None = None) -> float:
        return self.alpha_s + nbytes / (beta if beta is not None else self.beta_bytes_per_s)


@dataclass(frozen=True)
class Cluster:
    """Ranks are numbered node by node, rack by rack (rank order matches racks).

    links[(class, primitive)]; nic_bytes_per_s: a node's egress capacity shared by its flows that leave
    the node (None: no sharing); uplink_bytes_per_s: a rack's uplink capacity per direction shared by
    its flows that leave the rack (None: no sharing); reduce_s_per_byte: fp32 `+=` cost;
    codec_s_per_elem["<codec>/encode" | "<codec>/decode"]: codec compute per element."""

    gpus_per_node: int
    nodes_per_rack: int
    racks: int
    links: dict[tuple[str, str], Link]
    nic_bytes_per_s: float | None = None
    uplink_bytes_per_s: float | None = None
    reduce_s_per_byte: float = 0.0
    codec_s_per_elem: dict[str, float] = field(default_factory=dict)
    name: str = ""
    # cores of the one machine that runs every rank (the testbed), None on a cluster: codec work of k
    # ranks at once then runs max(1, k / cores) times slower than the measured per-rank rate
    shared_cores: int | None = None
    # measured codec seconds at several sizes: key -> [(numel, seconds)], interpolated (overrides
    # codec_s_per_elem: per-element cost depends on size through the caches)
    codec_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in [(c, p) for c in LINK_CLASSES for p in PRIMITIVES]:
            if key not in self.links:
                raise ConfigError("links", sorted(self.links), f"an entry for {key}")
        if self.shared_cores is not None and self.shared_cores < 1:
            raise ConfigError("shared_cores", self.shared_cores, "None or >= 1")
        if min(self.gpus_per_node, self.nodes_per_rack, self.racks) < 1:
            raise ConfigError("cluster shape", (self.gpus_per_node, self.nodes_per_rack, self.racks), "all >= 1")

    @property
    def world(self) -> int:
        return self.gpus_per_node * self.nodes_per_rack * self.racks

    @property
    def ranks_per_rack(self) -> int:
        return self.gpus_per_node * self.nodes_per_rack

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def rack_of(self, rank: int) -> int:
        return rank // self.ranks_per_rack

    def link_class(self, a: int, b: int) -> str:
        if self.node_of(a) == self.node_of(b):
            return "intra_node"
        return "intra_rack" if self.rack_of(a) == self.rack_of(b) else "cross_rack"

    def link(self, cls: str, primitive: str = "ring") -> Link:
        return self.links[(cls, primitive)]


@dataclass(frozen=True)
class Comm:
    """time_s: wall time; cross_rack_bytes: bytes sent across racks, summed over ranks (ByteCounter's
    `bytes/cross_rack` summed over the group); per_rank_bytes: the most bytes one rank sends."""

    time_s: float
    cross_rack_bytes: float
    per_rank_bytes: float


# ---- codecs ----------------------------------------------------------------------------------------
def payload_bytes(codec: str, numel: int, ratio: float = 0.01, chunk_size: int = 1024) -> int:
    """Bytes a codec puts on the wire for `numel` fp32 elements (its own `part_specs`)."""
    if codec not in CODEC_NAMES:
        raise ConfigError("codec", codec, f"one of {list(CODEC_NAMES)}")
    from hybridrec.config.comm import CompressionConfig
    from hybridrec.distributed.compression import make_codec
    from hybridrec.distributed.compression.base import parts_nbytes

    return parts_nbytes(make_codec(CompressionConfig(codec=codec, ratio=ratio, chunk_size=chunk_size)).part_specs(numel))


def _codec_seconds(cl: Cluster, key: str, numel: int) -> float:
    curve = sorted(cl.codec_curves.get(key, []))
    if not curve:
        return numel * cl.codec_s_per_elem.get(key, 0.0)
    if numel <= curve[0][0]:
        return numel * curve[0][1] / curve[0][0]
    if numel >= curve[-1][0]:
        return numel * curve[-1][1] / curve[-1][0]
    for (n0, t0), (n1, t1) in itertools.pairwise(curve):
        if n0 <= numel <= n1:
            return t0 + (t1 - t0) * (numel - n0) / (n1 - n0)
    raise AssertionError("unreachable")


def codec_time(cl: Cluster, codec: str, numel: int, decodes: int, ranks_at_once: int = 1) -> float:
    """encode_with_feedback (encode + one decode + ~3 elementwise passes) plus `decodes` decodes, on
    `ranks_at_once` ranks in parallel (slowed down when they share fewer cores)."""
    if codec == "none":
        return 0.0
    enc, dec = _codec_seconds(cl, f"{codec}/encode", numel), _codec_seconds(cl, f"{codec}/decode", numel)
    one = enc + (1 + decodes) * dec + 3 * 4 * numel * cl.reduce_s_per_byte
    return one * (max(1.0, ranks_at_once / cl.shared_cores) if cl.shared_cores else 1.0)


# ---- rings -----------------------------------------------------------------------------------------
def _shared_beta(cl: Cluster, rings: Sequence[Sequence[int]], primitive: str) -> dict[tuple[int, int], float]:
    """Per-edge bandwidth: the link class's per-flow beta, capped by the NIC / uplink share when the
    edge leaves its node / rack (flows counted over every ring running at once)."""
    leaving_node: dict[int, int] = {}
    leaving_rack: dict[int, int] = {}
    edges = [(ring[i], ring[(i + 1) % len(ring)]) for ring in rings if len(ring) > 1 for i in range(len(ring))]
    for a, b in edges:
        if cl.node_of(a) != cl.node_of(b):
            leaving_node[cl.node_of(a)] = leaving_node.get(cl.node_of(a), 0) + 1
        if cl.rack_of(a) != cl.rack_of(b):
            leaving_rack[cl.rack_of(a)] = leaving_rack.get(cl.rack_of(a), 0) + 1
    out = {}
    for a, b in edges:
        beta = cl.link(cl.link_class(a, b), primitive).beta_bytes_per_s
        if cl.nic_bytes_per_s and cl.node_of(a) != cl.node_of(b):
            beta = min(beta, cl.nic_bytes_per_s / leaving_node[cl.node_of(a)])
        if cl.uplink_bytes_per_s and cl.rack_of(a) != cl.rack_of(b):
            beta = min(beta, cl.uplink_bytes_per_s / leaving_rack[cl.rack_of(a)])
        out[(a, b)] = beta
    return out


def ring_step_time(cl: Cluster, rings: Sequence[Sequence[int]], chunk_bytes: float, primitive: str = "ring") -> float:
    """One lock-step ring step: every rank sends `chunk_bytes` to its successor; the slowest edge wins."""
    betas = _shared_beta(cl, rings, primitive)
    if not betas:
        return 0.0
    return max(cl.link(cl.link_class(a, b), primitive).time(chunk_bytes, beta) for (a, b), beta in betas.items())


def ring_cross_edges(cl: Cluster, ring: Sequence[int]) -> int:
    return sum(cl.rack_of(a) != cl.rack_of(ring[(i + 1) % len(ring)]) for i, a in enumerate(ring)) if len(ring) > 1 else 0


def ring_allreduce(cl: Cluster, rings: Sequence[Sequence[int]], nbytes: float) -> Comm:
    """Ring all-reduce of `nbytes` on each ring (all at once): 2(n-1) steps of S/n, n-1 reductions."""
    n = max(len(r) for r in rings)
    if n < 2:
        return Comm(0.0, 0.0, 0.0)
    chunk = nbytes / n
    time_s = 2 * (n - 1) * ring_step_time(cl, rings, chunk) + (n - 1) * chunk * cl.reduce_s_per_byte
    per_rank = ring_allreduce_bytes(int(nbytes), n)
    return Comm(time_s, sum(ring_cross_edges(cl, r) for r in rings) * per_rank, per_rank)


def ring_allgather(cl: Cluster, rings: Sequence[Sequence[int]], payload: float) -> Comm:
    """All-gather of a `payload`-byte message per member: (n-1) steps of P ('exchange' primitive)."""
    n = max(len(r) for r in rings)
    if n < 2:
        return Comm(0.0, 0.0, 0.0)
    per_rank = ring_allgather_bytes(int(payload), n)
    time_s = (n - 1) * ring_step_time(cl, rings, payload, "exchange")
    return Comm(time_s, sum(ring_cross_edges(cl, r) for r in rings) * per_rank, per_rank)


def star_time(cl: Cluster, leader: int, members: Sequence[int], nbytes: float, reduce: bool) -> float:
    """Members send `nbytes` each to the leader (or the leader to each): the leader's link is the bottleneck."""
    others = [m for m in members if m != leader]
    if not others:
        return 0.0
    by_class: dict[str, int] = {}
    for m in others:
        by_class[cl.link_class(leader, m)] = by_class.get(cl.link_class(leader, m), 0) + 1
    t = max(cl.link(c, "exchange").time(k * nbytes) for c, k in by_class.items())
    return t + (len(others) * nbytes * cl.reduce_s_per_byte if reduce else 0.0)


# ---- algorithms ------------------------------------------------------------------------------------
def racks_of(cl: Cluster, ranks: Sequence[int]) -> list[list[int]]:
    out: dict[int, list[int]] = {}
    for r in sorted(ranks):
        out.setdefault(cl.rack_of(r), []).append(r)
    return list(out.values())


def flat(cl: Cluster, nbytes: float, codec: str = "none", ratio: float = 0.01,
         ranks: Sequence[int] | None = None) -> Comm:
    ranks = list(range(cl.world)) if ranks is None else sorted(ranks)
    if codec == "none":
        return ring_allreduce(cl, [ranks], nbytes)
    numel = int(nbytes) // 4
    gathered = ring_allgather(cl, [ranks], payload_bytes(codec, numel, ratio))
    return Comm(gathered.time_s + codec_time(cl, codec, numel, len(ranks), len(ranks)), gathered.cross_rack_bytes,
                gathered.per_rank_bytes)


def hierarchical(cl: Cluster, nbytes: float, codec: str = "none", ratio: float = 0.01, variant: str = "leader",
                 chunk_bytes: float = 4 * 2**20, ranks: Sequence[int] | None = None) -> Comm:
    """Rack reduce -> cross-rack all-reduce (codec on this hop) -> rack broadcast / all-gather."""
    ranks = list(range(cl.world)) if ranks is None else sorted(ranks)
    racks = racks_of(cl, ranks)
    leaders = [rack[0] for rack in racks]
    m, r = max(len(rack) for rack in racks), len(racks)
    if variant == "leader":
        def stages(size: float) -> tuple[float, Comm, float]:
            inside = max(star_time(cl, rack[0], rack, size, reduce=True) for rack in racks)
            if codec == "none":
                cross = ring_allreduce(cl, [leaders], size)
            else:
                numel = int(size) // 4
                g = ring_allgather(cl, [leaders], payload_bytes(codec, numel, ratio))
                cross = Comm(g.time_s + codec_time(cl, codec, numel, r, r), g.cross_rack_bytes, g.per_rank_bytes)
            back = max(star_time(cl, rack[0], rack, size, reduce=False) for rack in racks)
            return inside, cross, back

        # dense buckets go in chunks (GradSync's pipelined leader path): the first chunk pays every
        # stage, each later one only the slowest stage; compressed buckets go whole
        sizes = [chunk_bytes] * int(nbytes // chunk_bytes) if codec == "none" else []
        if nbytes - sum(sizes) > 0:
            sizes.append(nbytes - sum(sizes))
        time_s, xbytes, per_rank = 0.0, 0.0, 0.0
        for i, size in enumerate(sizes):
            inside, cross, back = stages(size)
            time_s += inside + cross.time_s + back if i == 0 else max(inside, cross.time_s, back)
            xbytes += cross.cross_rack_bytes
            per_rank += cross.per_rank_bytes + (m - 1) * size  # the leader sends the most
        return Comm(time_s, xbytes, per_rank)
    if variant != "reduce_scatter":
        raise ConfigError("variant", variant, "leader or reduce_scatter")
    shard = nbytes / m
    inside = (m - 1) * ring_step_time(cl, racks, shard) if m > 1 else 0.0
    columns = [[rack[i] for rack in racks] for i in range(m)]
    if codec == "none":
        cross = ring_allreduce(cl, columns, shard)
        cross_time = cross.time_s
    else:
        numel = int(shard) // 4
        cross = ring_allgather(cl, columns, payload_bytes(codec, numel, ratio))
        cross_time = cross.time_s + codec_time(cl, codec, numel, r, len(ranks))
    time_s = 2 * inside + (m - 1) * shard * cl.reduce_s_per_byte + cross_time
    return Comm(time_s, cross.cross_rack_bytes, cross.per_rank_bytes + 2 * (m - 1) * shard)


def sync(cl: Cluster, algorithm: str, nbytes: float, codec: str = "none", ratio: float = 0.01,
         variant: str = "leader") -> Comm:
    if algorithm == "flat":
        return flat(cl, nbytes, codec, ratio)
    if algorithm == "hierarchical":
        return hierarchical(cl, nbytes, codec, ratio, variant)
    raise ConfigError("algorithm", algorithm, "flat or hierarchical")


# ---- steps -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    compute_s: float
    comm_s: float
    backward_share: float = 2 / 3  # part of compute that is backward (overlappable)

    @property
    def no_overlap_s(self) -> float:
        return self.compute_s + self.comm_s

    @property
    def overlap_s(self) -> float:
        backward = self.backward_share * self.compute_s
        return self.compute_s - backward + max(backward, self.comm_s)

    @property
    def exposed_share_no_overlap(self) -> float:
        return self.comm_s / self.no_overlap_s if self.no_overlap_s else 0.0

    @property
    def exposed_share_overlap(self) -> float:
        return (self.overlap_s - self.compute_s) / self.overlap_s if self.overlap_s else 0.0


# ---- 2D embedding ----------------------------------------------------------------------------------
def alltoall_time(cl: Cluster, group: Sequence[int], bytes_per_rank: float, groups_at_once: int = 1) -> float:
    """Pairwise all-to-all: each member sends bytes_per_rank/(E-1) to every other member; latency
    (E-1) alphas, bandwidth bound per link class (NIC / uplink shared by every member sending at once)."""
    e = len(group)
    if e < 2:
        return 0.0
    per_peer = bytes_per_rank / (e - 1)
    src = group[0]
    by_class: dict[str, int] = {}
    for peer in group[1:]:
        by_class[cl.link_class(src, peer)] = by_class.get(cl.link_class(src, peer), 0) + 1
    times = []
    senders_in_node = min(e, cl.gpus_per_node) * groups_at_once
    senders_in_rack = min(e, cl.ranks_per_rack) * groups_at_once
    for cls, k in by_class.items():
        link = cl.link(cls, "exchange")
        beta = link.beta_bytes_per_s
        if cls != "intra_node" and cl.nic_bytes_per_s:
            beta = min(beta, cl.nic_bytes_per_s / min(senders_in_node, cl.gpus_per_node))
        if cls == "cross_rack" and cl.uplink_bytes_per_s:
            beta = min(beta, cl.uplink_bytes_per_s / min(senders_in_rack, cl.ranks_per_rack))
        times.append(k * per_peer / beta)
    return (e - 1) * max(cl.link(c, "exchange").alpha_s for c in by_class) + max(times)


def embedding_step(cl: Cluster, group_size: int, rows: int, dim: int, batch_per_rank: int,
                   ids_per_example: int) -> dict[str, float]:
    """All-to-all bytes/time inside the E-rank groups and the replica all-reduce over M = n/E."""
    from hybridrec.embedding.memory import embedding_memory

    world = cl.world
    mem = embedding_memory(rows, dim, group_size, world, batch_per_rank, ids_per_example)
    e, m = mem.group_size, mem.num_replicas
    a2a = alltoall_time(cl, list(range(e)), mem.alltoall_bytes_per_step, groups_at_once=max(1, cl.ranks_per_rack // e))
    replica_rings = [list(range(i, world, e)) for i in range(e)]
    rep = ring_allreduce(cl, replica_rings, mem.replica_allreduce_bytes_per_step) if m > 1 else Comm(0, 0, 0)
    return {"E": e, "M": m, "alltoall_bytes": mem.alltoall_bytes_per_step, "alltoall_s": a2a,
            "replica_bytes": mem.replica_allreduce_bytes_per_step, "replica_s": rep.time_s,
            "replica_cross_rack_bytes": rep.cross_rack_bytes, "total_s": a2a + rep.time_s}


# ---- calibration -------------------------------------------------------------------------------------
def fit_alpha_beta(sizes: Sequence[float], times: Sequence[float], steps: float = 1.0,
                   bytes_scale: float = 1.0, extra_s_per_byte: float = 0.0) -> Link:
    """Ordinary least squares of t = steps * alpha + bytes_scale * S * (1/beta + extra) over the points
    (e.g. a 2-rank ring all-reduce: 2 steps moving S per direction plus S/2 of reduction). Absolute
    residuals, so the large sizes set beta (a token bucket lets small messages through above the
    rate); a negative intercept is clamped to alpha = 0."""
    if len(sizes) != len(times) or len(sizes) < 2:
        raise ConfigError("calibration points", len(sizes), "at least two (size, time) pairs")
    xs = [s * bytes_scale for s in sizes]
    n, mx, mt = len(xs), sum(xs) / len(xs), sum(times) / len(times)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ConfigError("calibration points", list(sizes), "at least two different sizes")
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, times)) / sxx
    intercept = mt - slope * mx
    per_byte = slope - extra_s_per_byte
    if per_byte <= 0 or n < 2:
        raise ConfigError("calibration points", list(zip(sizes, times)), "times that grow with size")
    return Link(alpha_s=max(0.0, intercept / steps), beta_bytes_per_s=1.0 / per_byte)
