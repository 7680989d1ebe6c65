"""CLI: `python -m analysis.scaling [--calibration FILE] [--out DIR]`.

Reads the testbed calibration (`benchmarks/scaling_calibration.py`), fits the link classes, writes
into `--out` (default analysis/results/scaling/): `validation.md` (the 4-rank testbed runs, measured
vs predicted), `scaling.md` + `scaling.csv` (flat / hierarchical / compressed sync and the 2D
embedding's E from 4 ranks to 8 x 8 GPUs and 4,096 GPUs), `links.json` (the fitted model) and
`scaling.png`. Prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import asdict, replace
from pathlib import Path

from analysis.scaling.calibrate import testbed_cluster, validation_rows
from analysis.scaling.model import Cluster, Link, Step, embedding_step, sync
from hybridrec.errors import DataError
from hybridrec.io import atomic_path, atomic_write_bytes, atomic_write_json

RESULTS = Path(__file__).resolve().parents[1] / "results" / "scaling"
SHAPES = {4: (1, 2, 2), 16: (8, 1, 2), 64: (8, 4, 2), 256: (8, 16, 2), 1024: (8, 16, 8), 4096: (8, 16, 32)}
SCHEMES = [("flat", "flat", "none", "leader"), ("hierarchical (leader)", "hierarchical", "none", "leader"),
           ("hierarchical (reduce-scatter)", "hierarchical", "none", "reduce_scatter"),
           ("hier. + top-k 1%", "hierarchical", "topk", "reduce_scatter"),
           ("hier. + 1-bit sign", "hierarchical", "sign1bit", "reduce_scatter"),
           ("hier. + fp16", "hierarchical", "fp16", "reduce_scatter")]
GBPS = 1e9 / 8


def a100_cluster(gpus_per_node: int, nodes_per_rack: int, racks: int, oversubscription: float = 4.0) -> Cluster:
    """Assumed (datasheet-level, not measured here): NVLink3 ~150 GB/s per GPU per direction in a ring,
    one HDR 200 Gbit/s NIC per GPU (~23 GB/s achieved), a spine oversubscribed `oversubscription`:1;
    codec costs from A100-class memory bandwidth (~1.5 TB/s: a few passes over the data)."""
    links = {}
    for cls, alpha, beta in (("intra_node", 5e-6, 150e9), ("intra_rack", 10e-6, 23e9), ("cross_rack", 15e-6, 23e9)):
        for primitive in ("ring", "exchange"):
            links[(cls, primitive)] = Link(alpha, beta)
    nic = gpus_per_node * 200 * GBPS
    return Cluster(gpus_per_node, nodes_per_rack, racks, links, nic_bytes_per_s=nic,
                   uplink_bytes_per_s=nodes_per_rack * nic / oversubscription, reduce_s_per_byte=3 / 1.5e12,
                   codec_s_per_elem={"topk/encode": 4 * 8 / 1.5e12 * 4, "topk/decode": 3 * 4 / 1.5e12,
                                     "sign1bit/encode": 4 * 4 / 1.5e12, "sign1bit/decode": 3 * 4 / 1.5e12,
                                     "fp16/encode": 6 / 1.5e12, "fp16/decode": 6 / 1.5e12},
                   name=f"A100 cluster {gpus_per_node}x{nodes_per_rack}x{racks} (assumed links)")


def testbed_shaped(base: Cluster, gpus_per_node: int, nodes_per_rack: int, racks: int) -> Cluster:
    """The calibrated testbed links on a bigger shape: each rack behind one uplink of the testbed's rate."""
    return replace(base, gpus_per_node=gpus_per_node, nodes_per_rack=nodes_per_rack, racks=racks, shared_cores=None,
                   name=f"testbed links {gpus_per_node}x{nodes_per_rack}x{racks}")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def validation_md(rows: list[dict], record: dict) -> str:
    body = []
    for r in rows:
        xr = "" if r["measured_xrack"] is None else f"{r['measured_xrack']:,} / {r['predicted_xrack']:,.0f}"
        single = f" ({r['predicted_single_s']:.3f})" if "predicted_single_s" in r else ""
        body.append([r["kind"], r["what"], f"{r['measured_s']:.3f}", f"{r['predicted_s']:.3f}{single}",
                     f"{r['error']:+.1%}", xr])
    within = [r for r in rows if abs(r["error"]) <= 0.15]
    return (f"Testbed: 2 racks x 2 ranks, uplinks {record['rate']}, {record['cpus']} CPUs; load before: "
            f"`{record['load_before']}`, after: `{record['load_after']}`.\n\n"
            + _md_table(["kind", "run", "measured s", "predicted s", "error", "cross-rack B measured / model"], body)
            + f"\n\n{len(within)} of {len(rows)} runs within 15 %.")


def projection(cl_for, grad_bytes: float, compute_s: float, worlds: list[int]) -> list[dict]:
    out = []
    for world in worlds:
        cl = cl_for(*SHAPES[world])
        for label, algorithm, codec, variant in SCHEMES:
            if world == 4 and variant == "reduce_scatter" and codec == "none":
                continue
            comm = sync(cl, algorithm, grad_bytes, codec, 0.01, variant)
            step = Step(compute_s, comm.time_s)
            out.append({"profile": cl.name.split(" ")[0] + " " + cl.name.split(" ")[1], "gpus": world,
                        "shape": "x".join(map(str, SHAPES[world])), "scheme": label, "comm_s": comm.time_s,
                        "step_no_overlap_s": step.no_overlap_s, "step_overlap_s": step.overlap_s,
                        "exposed_overlap": step.exposed_share_overlap, "exposed_no_overlap": step.exposed_share_no_overlap,
                        "cross_rack_bytes": comm.cross_rack_bytes})
    return out


def embedding_rows(cl_for, worlds_rows: dict[int, int], dim: int, batch: int, ids: int) -> list[dict]:
    out = []
    for world, rows in worlds_rows.items():
        cl = cl_for(*SHAPES[world])
        for e in sorted({2, 8, 64, 512, world} | ({4} if world == 4 else set())):
            if e > world or world % e:
                continue
            r = embedding_step(cl, e, rows, dim, batch, ids)
            out.append({"gpus": world, "rows": rows, **r})
    return out


def plot(path: Path, val: list[dict], proj: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for kind, marker in (("all-reduce", "o"), ("train step", "s")):
        pts = [(r["measured_s"], r["predicted_s"]) for r in val if r["kind"] == kind]
        ax.scatter(*zip(*pts), marker=marker, label=kind)
    lo, hi = min(min(p) for p in [(r["measured_s"], r["predicted_s"]) for r in val]), max(r["measured_s"] for r in val) * 1.3
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="grey", alpha=0.2, label="+-15%")
    ax.set(xscale="log", yscale="log", xlabel="measured s", ylabel="predicted s", title="4-rank testbed: model vs measured")
    ax.legend()
    for ax, profile in zip(axes[1:], sorted({p["profile"] for p in proj})):
        for label, *_ in SCHEMES:
            pts = [(p["gpus"], p["step_no_overlap_s"], p["step_overlap_s"]) for p in proj
                   if p["profile"] == profile and p["scheme"] == label]
            if not pts:
                continue
            g, no, ov = zip(*pts)
            line = ax.plot(g, no, marker="o", label=label)[0]
            ax.plot(g, ov, ls="--", color=line.get_color())
        ax.set(xscale="log", yscale="log", xlabel="GPUs (ranks)", ylabel="step s (solid: no overlap, dashed: overlap)",
               title=profile)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


CALIBRATION_KEYS = ("rate", "cpus", "pair_allreduce", "pair_allgather", "rates", "train", "collectives")


def load_calibration(path: Path) -> dict:
    """The calibration JSON, or DataError naming the file and what is missing."""
    if not path.exists():
        raise DataError(path, "no calibration: run `benchmarks/scaling_calibration.py --out <this file>` (root)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not JSON ({exc.msg})", exc.lineno) from exc
    missing = [k for k in CALIBRATION_KEYS if k not in record]
    if missing:
        raise DataError(path, f"calibration without {missing}: rerun benchmarks/scaling_calibration.py")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default=str(RESULTS / "calibration.json"))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--grad-mib", type=float, default=420.0, help="cluster workload: fp32 gradient per rank")
    parser.add_argument("--paper-share", type=float, default=0.35,
                        help="cluster workload: compute chosen so flat DP at 8x8 spends this share communicating")
    args = parser.parse_args(argv)
    out = Path(args.out)
    record = load_calibration(Path(args.calibration))
    testbed = testbed_cluster(record)
    val = validation_rows(testbed, record)
    # workloads: the testbed's own (measured compute and gradient), and a paper-scale one
    tb_grad = record["train"]["grad_numel"] * 4
    tb_compute = record["train"]["runs"]["flat+none"]["compute_s"]
    grad = args.grad_mib * 2**20
    flat64 = sync(a100_cluster(*SHAPES[64]), "flat", grad).time_s
    compute = flat64 * (1 - args.paper_share) / args.paper_share
    worlds = sorted(SHAPES)
    proj = (projection(lambda *s: testbed_shaped(testbed, *s), tb_grad, tb_compute, worlds)
            + projection(lambda *s: a100_cluster(*s), grad, compute, worlds))
    emb = embedding_rows(lambda *s: a100_cluster(*s), {4: 5_000_000, 64: 100_000_000, 4096: 1_000_000_000},
                         dim=64, batch=128, ids=50)
    head = ["profile", "GPUs", "shape gpn x npr x racks", "scheme", "comm s", "step s no overlap", "step s overlap",
            "exposed comm share (overlap .. none)", "cross-rack MiB/step"]
    rows = [[p["profile"], str(p["gpus"]), p["shape"], p["scheme"], f"{p['comm_s']:.4g}", f"{p['step_no_overlap_s']:.4g}",
             f"{p['step_overlap_s']:.4g}", f"{p['exposed_overlap']:.0%} .. {p['exposed_no_overlap']:.0%}",
             f"{p['cross_rack_bytes'] / 2**20:,.1f}"] for p in proj if p["gpus"] in (4, 64, 4096)]
    emb_rows = [[str(e["gpus"]), f"{e['rows']:,}", str(e["E"]), str(e["M"]), f"{e['alltoall_bytes'] / 2**20:.2f}",
                 f"{e['alltoall_s'] * 1e3:.3f}", f"{e['replica_bytes'] / 2**20:.2f}", f"{e['replica_s'] * 1e3:.3f}",
                 f"{e['total_s'] * 1e3:.3f}"] for e in emb]
    scaling_md = (
        f"Workloads: testbed = the validation model ({tb_grad / 2**20:.2f} MiB fp32 gradient, measured compute "
        f"{tb_compute * 1e3:.1f} ms/step per rank); A100 = {args.grad_mib:g} MiB gradient, compute "
        f"{compute * 1e3:.0f} ms/step (chosen so flat DP at 8x8 GPUs spends {args.paper_share:.0%} of a "
        "non-overlapped step communicating, the paper's single-mode figure). Overlap bound: communication "
        "hidden behind backward (2/3 of compute).\n\n" + _md_table(head, rows)
        + "\n\n2D embedding (A100 profile), per rank per step, dim 64, batch 128 x 50 ids per rank:\n\n"
        + _md_table(["GPUs", "rows", "E", "M", "all-to-all MiB", "all-to-all ms", "replica all-reduce MiB",
                     "replica ms", "total ms"], emb_rows))
    out.mkdir(parents=True, exist_ok=True)
    vmd = validation_md(val, record)
    atomic_write_bytes(out / "validation.md", (vmd + "\n").encode())
    atomic_write_bytes(out / "scaling.md", (scaling_md + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(proj[0]))
    writer.writeheader()
    writer.writerows(proj)
    atomic_write_bytes(out / "scaling.csv", buf.getvalue().encode())
    atomic_write_json(out / "links.json", {"testbed": {**asdict(testbed), "links": {
        f"{c}/{p}": asdict(link) for (c, p), link in testbed.links.items()}}, "validation": val,
        "embedding": emb, "cluster_compute_s": compute})
    plot(out / "scaling.png", val, proj)
    print(vmd + "\n\n" + scaling_md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
