"""From a testbed calibration record (`benchmarks/scaling_calibration.py`'s JSON, already parsed) to a
`Cluster`, and the 4-rank validation rows (measured vs predicted). Pure: dicts in, dataclasses out.

Fits, per link class of the 2 x 2 testbed (one rank per node, so intra_node = intra_rack):
- `ring` primitive: a 2-rank gloo all-reduce over the pair, t = 2 alpha + S/beta + (S/2) gamma
  (each end sends S/2 twice; one reduction of S/2);
- `exchange` primitive: a 2-rank gloo all-gather of S per rank (the compressed hop's transfer; the
  rack leader's star uses it too), t = alpha + S/beta (gloo moves it at about half the all-reduce's
  rate across the shaped uplink; a bidirectional isend + irecv, recorded as `p2p`, likewise);
gamma (fp32 `+=` per byte) and codec encode / decode seconds per element are measured rates.
"""

from __future__ import annotations

import statistics

from analysis.scaling.model import Cluster, Link, Step, fit_alpha_beta, sync

CODEC_RATIO = 0.01


def _points(samples: list[dict]) -> tuple[list[float], list[float]]:
    return [float(s["nbytes"]) for s in samples], [statistics.median(s["times_s"]) for s in samples]


def testbed_cluster(record: dict) -> Cluster:
    by_size = record["rates"]  # {numel: {"sum" | "<codec>/<part>": {"s_per_elem", "times_s"}}}
    gamma = statistics.median(r["sum"]["s_per_elem"] for r in by_size.values()) / 4
    links: dict[tuple[str, str], Link] = {}
    for cls in ("intra_rack", "cross_rack"):
        links[(cls, "ring")] = fit_alpha_beta(*_points(record["pair_allreduce"][cls]), steps=2.0,
                                              extra_s_per_byte=gamma / 2)
        links[(cls, "exchange")] = fit_alpha_beta(*_points(record["pair_allgather"][cls]), steps=1.0)
    for primitive in ("ring", "exchange"):
        links[("intra_node", primitive)] = links[("intra_rack", primitive)]
    curves: dict[str, list[tuple[int, float]]] = {}
    for numel, rates in by_size.items():
        for name, r in rates.items():
            if "/" in name:
                curves.setdefault(name, []).append((int(numel), statistics.median(r["times_s"])))
    return Cluster(gpus_per_node=1, nodes_per_rack=2, racks=2, links=links, nic_bytes_per_s=None,
                   uplink_bytes_per_s=links[("cross_rack", "ring")].beta_bytes_per_s, reduce_s_per_byte=gamma,
                   codec_curves=curves, shared_cores=record.get("cpus"), name=f"testbed 2x2 @ {record.get('rate', '?')}")


def validation_rows(cl: Cluster, record: dict) -> list[dict]:
    """One row per measured run: collectives (time of one all-reduce) and training steps."""
    rows = []
    for r in record["collectives"]:
        algorithm, _, codec = r["algo"].partition("+")
        nbytes = r["size_mib"] * 2**20
        pred = sync(cl, algorithm, nbytes, codec or "none", CODEC_RATIO)
        rows.append({"kind": "all-reduce", "what": f"{r['algo']} {r['size_mib']:g} MiB",
                     "measured_s": statistics.median(r["times_s"]), "predicted_s": pred.time_s,
                     "measured_xrack": r["xrack_bytes"], "predicted_xrack": pred.cross_rack_bytes})
    train = record["train"]
    nbytes = train["grad_numel"] * 4
    oversubscribed = train["compute_single_s"] * max(1.0, 4 / (cl.shared_cores or 4))
    for name, run in train["runs"].items():
        algorithm, _, codec = name.partition("+")
        pred = sync(cl, algorithm, nbytes, codec, CODEC_RATIO)
        rows.append({"kind": "train step", "what": f"{name} ({nbytes / 2**20:.2f} MiB grads)",
                     "measured_s": run["step_s"], "predicted_s": Step(run["compute_s"], pred.time_s).no_overlap_s,
                     "predicted_single_s": Step(oversubscribed, pred.time_s).no_overlap_s,
                     "compute_s": run["compute_s"], "measured_xrack": None,
                     "predicted_xrack": pred.cross_rack_bytes})
    for row in rows:
        row["error"] = row["predicted_s"] / row["measured_s"] - 1
    return rows
