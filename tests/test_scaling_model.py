"""analysis.scaling.model: exact byte arithmetic, codec bytes = the codec's own wire_bytes, time
monotonicity, and the calibration fit recovering known alpha/beta (pure, no processes)."""

from __future__ import annotations

import math

import pytest
import torch

from analysis.scaling.model import (
    Cluster,
    Link,
    Step,
    embedding_step,
    fit_alpha_beta,
    flat,
    hierarchical,
    payload_bytes,
    ring_allreduce,
)
from hybridrec.config.comm import CompressionConfig
from hybridrec.distributed.compression import make_codec
from hybridrec.errors import ConfigError

MIB = 2**20


def cluster(gpus: int = 1, nodes: int = 2, racks: int = 2, cross_beta: float = 1e7, uplink: float | None = None,
            **kw) -> Cluster:
    links = {}
    for cls, alpha, beta in (("intra_node", 1e-5, 1e10), ("intra_rack", 5e-5, 1e9), ("cross_rack", 2e-4, cross_beta)):
        links[(cls, "ring")] = Link(alpha, beta)
        links[(cls, "exchange")] = Link(alpha, beta / 2)
    return Cluster(gpus, nodes, racks, links, uplink_bytes_per_s=uplink, **kw)


@pytest.mark.parametrize("n", [2, 4, 8, 64])
def test_ring_bytes_per_rank_is_2_n_minus_1_over_n_s(n):
    s = 64 * MIB
    cl = cluster(gpus=1, nodes=n, racks=1)
    comm = ring_allreduce(cl, [list(range(n))], s)
    assert comm.per_rank_bytes == round(2 * (n - 1) * s / n)
    assert comm.cross_rack_bytes == 0


def test_flat_cross_rack_bytes_rack_order_and_hierarchical_s_per_leader():
    s = 64 * MIB
    cl = cluster()  # 2 racks x 2 ranks (the testbed)
    fl = flat(cl, s)
    assert fl.cross_rack_bytes == 2 * 1.5 * s  # 2 crossing edges x 2(n-1)/n S: 3S, NOTES section 5
    h = hierarchical(cl, s)
    assert h.cross_rack_bytes == 2 * s  # S per leader, 2 leaders: 2(R-1) S
    assert fl.cross_rack_bytes / h.cross_rack_bytes == 1.5
    big = cluster(gpus=8, nodes=4, racks=4)  # R racks: 2(R-1) S in total, either variant
    for variant in ("leader", "reduce_scatter"):
        assert hierarchical(big, s, variant=variant).cross_rack_bytes == pytest.approx(2 * 3 * s)
    assert flat(big, s).cross_rack_bytes == 4 * round(2 * 127 * s / 128)


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "topk", "sign1bit"])
@pytest.mark.parametrize("numel", [1, 1000, 1024 * 33 + 7])
def test_payload_bytes_equal_codec_wire_bytes(codec, numel):
    cfg = CompressionConfig(codec=codec, ratio=0.01)
    real = make_codec(cfg)
    x = torch.randn(numel, generator=torch.Generator().manual_seed(numel))
    assert payload_bytes(codec, numel, 0.01) == real.wire_bytes(real.encode(x, {}))


def test_compressed_cross_rack_bytes_are_allgathered_payloads():
    s = 16 * MIB
    numel = s // 4
    for racks in (2, 4):
        cl = cluster(racks=racks)
        p = payload_bytes("topk", numel, 0.01)
        assert p == 8 * math.ceil(0.01 * numel)
        h = hierarchical(cl, s, codec="topk", ratio=0.01)
        assert h.cross_rack_bytes == racks * (racks - 1) * p  # every leader sends P across


def test_times_grow_with_size_and_fall_with_bandwidth():
    sizes = [MIB, 4 * MIB, 16 * MIB, 64 * MIB]
    for algo in (lambda cl, s: flat(cl, s), lambda cl, s: hierarchical(cl, s),
                 lambda cl, s: hierarchical(cl, s, codec="topk"), lambda cl, s: hierarchical(cl, s, variant="reduce_scatter")):
        times = [algo(cluster(), s).time_s for s in sizes]
        assert times == sorted(times) and len(set(times)) == len(times)
        slow, fast = algo(cluster(cross_beta=1e7), 16 * MIB), algo(cluster(cross_beta=1e8), 16 * MIB)
        assert fast.time_s < slow.time_s


def test_hierarchical_beats_flat_on_a_slow_uplink_not_on_a_fast_one():
    s = 64 * MIB
    assert hierarchical(cluster(cross_beta=1e7), s).time_s < flat(cluster(cross_beta=1e7), s).time_s
    fast = cluster(cross_beta=1e9)  # uplink as fast as the rack: the star to the leader costs more
    assert hierarchical(fast, s).time_s > flat(fast, s).time_s


def test_flat_ring_on_testbed_is_six_steps():
    s = 4 * MIB
    cl = cluster()
    cross = cl.link("cross_rack")
    assert flat(cl, s).time_s == pytest.approx(6 * cross.time(s / 4))  # reduce cost 0 here


def test_uplink_shared_by_concurrent_columns():
    s = 64 * MIB
    shared = cluster(gpus=1, nodes=4, racks=2, cross_beta=1e8, uplink=1e8)
    private = cluster(gpus=1, nodes=4, racks=2, cross_beta=1e8, uplink=None)
    a = hierarchical(shared, s, variant="reduce_scatter").time_s
    b = hierarchical(private, s, variant="reduce_scatter").time_s
    assert a > b  # 4 column rings cross one uplink at once


def test_step_overlap_bounds():
    st = Step(compute_s=0.3, comm_s=0.1)
    assert st.no_overlap_s == pytest.approx(0.4)
    assert st.overlap_s == pytest.approx(0.3)  # hidden behind 0.2 s of backward
    assert st.exposed_share_overlap == 0.0
    assert st.exposed_share_no_overlap == pytest.approx(0.25)
    big = Step(compute_s=0.3, comm_s=0.5)
    assert big.overlap_s == pytest.approx(0.1 + 0.5)
    assert 0 < big.exposed_share_overlap < big.exposed_share_no_overlap


def test_embedding_bytes_come_from_embedding_memory():
    from hybridrec.embedding.memory import embedding_memory

    cl = cluster(gpus=1, nodes=2, racks=2)
    for e in (4, 2, 1):
        got = embedding_step(cl, e, rows=100_000, dim=16, batch_per_rank=32, ids_per_example=10)
        mem = embedding_memory(100_000, 16, e, 4, 32, 10)
        assert got["alltoall_bytes"] == mem.alltoall_bytes_per_step
        assert got["replica_bytes"] == mem.replica_allreduce_bytes_per_step
        assert (got["alltoall_s"] == 0) == (e == 1) and (got["replica_s"] == 0) == (e == 4)


@pytest.mark.parametrize("alpha,beta,steps", [(1e-3, 1.2e7, 1.0), (2e-4, 1e9, 2.0), (0.0, 5e6, 2.0)])
def test_fit_recovers_known_alpha_beta(alpha, beta, steps):
    sizes = [4096, 65536, 2**20, 4 * 2**20, 16 * 2**20]
    gamma = 1e-10
    times = [steps * alpha + s / beta + s * gamma / 2 for s in sizes]
    link = fit_alpha_beta(sizes, times, steps=steps, extra_s_per_byte=gamma / 2)
    assert link.alpha_s == pytest.approx(alpha, abs=1e-9)
    assert link.beta_bytes_per_s == pytest.approx(beta, rel=1e-9)


def test_fit_and_cluster_refuse_bad_input():
    with pytest.raises(ConfigError):
        fit_alpha_beta([1.0], [1.0])
    with pytest.raises(ConfigError):
        fit_alpha_beta([1.0, 2.0], [2.0, 1.0])  # time falls with size
    with pytest.raises(ConfigError):
        Cluster(1, 2, 2, {("intra_node", "ring"): Link(0, 1)})
    with pytest.raises(ConfigError):
        payload_bytes("gzip", 10)


def _synthetic_record(cl: Cluster) -> dict:
    """A calibration record whose every time is what `cl` predicts (what the testbed would measure if
    the model were exact)."""
    from analysis.scaling.model import ring_allgather, sync

    sizes = [4096, 65536, 2**20, 4 * 2**20]
    pairs = {"intra_rack": [0, 1], "cross_rack": [1, 2]}
    rec = {"rate": "synthetic", "cpus": 2, "load_before": "-", "load_after": "-", "p2p": {}, "pair_allreduce": {},
           "pair_allgather": {}}
    for link, pair in pairs.items():
        rec["pair_allreduce"][link] = [{"nbytes": s, "times_s": [ring_allreduce(cl, [pair], s).time_s]} for s in sizes]
        rec["pair_allgather"][link] = [{"nbytes": s, "times_s": [ring_allgather(cl, [pair], s).time_s]} for s in sizes]
    rec["rates"] = {str(n): {"sum": {"s_per_elem": cl.reduce_s_per_byte * 4, "times_s": [cl.reduce_s_per_byte * 4 * n]},
                             "topk/encode": {"s_per_elem": 1e-8, "times_s": [1e-8 * n]},
                             "topk/decode": {"s_per_elem": 1e-9, "times_s": [1e-9 * n]}} for n in (2**18, 2**20)}
    rec["collectives"] = [{"algo": algo, "size_mib": mib, "times_s": [sync(cl, algo.split("+")[0], mib * MIB,
                                                                            (algo.split("+") + ["none"])[1]).time_s],
                           "xrack_bytes": sync(cl, algo.split("+")[0], mib * MIB).cross_rack_bytes}
                          for algo in ("flat", "hierarchical") for mib in (1, 16)]
    rec["train"] = {"grad_numel": 2**19, "compute_single_s": 0.01, "runs": {
        "flat+none": {"step_s": 0.02 + sync(cl, "flat", 2**21).time_s, "compute_s": 0.02}}}
    return rec


def test_calibration_record_round_trip_recovers_links_and_predicts_exactly():
    from analysis.scaling.calibrate import testbed_cluster, validation_rows

    truth = cluster(reduce_s_per_byte=2e-10)
    rec = _synthetic_record(truth)
    fitted = testbed_cluster(rec)
    for key in (("cross_rack", "ring"), ("cross_rack", "exchange"), ("intra_rack", "ring")):
        assert fitted.link(*key).beta_bytes_per_s == pytest.approx(truth.link(*key).beta_bytes_per_s, rel=1e-6)
        assert fitted.link(*key).alpha_s == pytest.approx(truth.link(*key).alpha_s, rel=1e-6)
    rows = validation_rows(fitted, rec)
    assert len(rows) == 5
    assert all(abs(r["error"]) < 1e-6 for r in rows)


def test_cli_names_a_missing_calibration(tmp_path):
    from analysis.scaling.__main__ import main
    from hybridrec.errors import DataError

    with pytest.raises(DataError, match="scaling_calibration"):
        main(["--calibration", str(tmp_path / "none.json"), "--out", str(tmp_path)])
