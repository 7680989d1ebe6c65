"""`python -m analysis.collect <sweep dir>`: table (markdown + CSV) and plots for every run under a sweep.

Writes into `<sweep dir>/analysis/` (or `--out`): table.md, table.csv, throughput.png, time_breakdown.png,
utilization.png, hr_vs_ratio.png, bytes_vs_k.png (a plot without data is skipped and said so in table.md).
Failed and partial runs are listed with their reason; exit status 0 unless no run dir was found (1) or the
arguments are wrong (2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis import plots, table
from analysis.runs import load_sweep
from hybridrec.io import atomic_write_bytes


def collect(sweep_dir: str | Path, out_dir: str | Path | None = None, protocol: str | None = None,
            skip_steps: int = 1, make_plots: bool = True) -> dict[str, object]:
    sweep = Path(sweep_dir)
    out = Path(out_dir) if out_dir else sweep / "analysis"
    runs = [r for r in load_sweep(sweep, skip_steps) if out not in (r.path, *r.path.parents)]
    proto = table.pick_protocol(runs, protocol)
    md = table.markdown(runs, proto, skip_steps)
    made: dict[str, Path | str] = plots.all_plots(runs, out, proto) if make_plots and runs else {}
    if made:
        md += "\n## Plots\n\n" + "\n".join(
            f"- {name}: " + (f"![{name}]({name})" if isinstance(res, Path) else f"skipped ({res})")
            for name, res in made.items()) + "\n"
    atomic_write_bytes(out / "table.md", md.encode())
    atomic_write_bytes(out / "table.csv", table.csv_text(runs, proto).encode())
    return {"runs": runs, "protocol": proto, "out": out, "plots": made, "markdown": md}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.collect", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun dir (or any dir holding run dirs)")
    parser.add_argument("--out", default=None, help="output dir (default: <sweep_dir>/analysis)")
    parser.add_argument("--protocol", default=None, help="eval protocol for HR/NDCG (default: uni100 if present)")
    parser.add_argument("--skip-steps", type=int, default=1, help="warm-up steps left out of timer means")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        print(f"error: sweep dir '{args.sweep_dir}' does not exist or is not a directory", file=sys.stderr)
        return 2
    result = collect(args.sweep_dir, args.out, args.protocol, args.skip_steps, not args.no_plots)
    runs = result["runs"]
    if not runs:
        print(f"error: no run dirs (summary.json, telemetry/ or .hydra/) under {args.sweep_dir}", file=sys.stderr)
        return 1
    print(result["markdown"])
    print(f"wrote {result['out']}/table.md, table.csv and plots", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
