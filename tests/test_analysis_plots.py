"""analysis.plots on hand-built Run records: a plot without its kind of data is skipped with a reason (never
an empty or misleading figure), and with data it writes a valid PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image

from analysis import plots
from analysis.runs import Run


def _run(name: str, codec: str, ratio: float, intra: float | None, hr: float = 0.3) -> Run:
    return Run(path=Path(name), status="done", scheme=name, codec=codec, ratio=ratio, dp_bytes_intra=intra,
               dp_bytes_cross=0.0, metrics={"uni100": {"HR@10": hr}}, samples_per_s=10.0)


def test_plots_without_their_data_are_skipped_with_a_reason(tmp_path: Path) -> None:
    dense_only = [_run("dense", "none", 1.0, 4e6)]
    assert plots.hr_vs_ratio(dense_only, tmp_path / "a.png", "uni100") == "no finished top-k run with HR@10"
    assert plots.bytes_vs_k(dense_only, tmp_path / "b.png") == "no finished top-k run with byte counts"
    zero = [_run("dense", "none", 1.0, 0.0), _run("k", "topk", 0.1, 0.0)]
    assert "0 dp bytes" in plots.bytes_vs_k(zero, tmp_path / "c.png")
    assert plots.utilization(dense_only, tmp_path / "d.png") == "no utilization samples"
    assert plots.time_breakdown(dense_only, tmp_path / "e.png") == "no finished run with phase timers"
    assert not list(tmp_path.iterdir())


def test_bytes_and_quality_plots_with_data_are_pngs(tmp_path: Path) -> None:
    runs = [_run("dense", "none", 1.0, 4e6, 0.31), _run("k1", "topk", 0.01, 4.8e4, 0.30),
            _run("k10", "topk", 0.1, 4.8e5, 0.31)]
    for made in (plots.bytes_vs_k(runs, tmp_path / "b.png"), plots.hr_vs_ratio(runs, tmp_path / "h.png", "uni100"),
                 plots.throughput(runs, tmp_path / "t.png")):
        assert isinstance(made, Path) and made.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(made).shape[0] > 100
