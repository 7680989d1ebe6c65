"""A Hydra sweep over `model.item_repr` is an ordinary sweep: the sweep values expand to the three
points, every point composes and passes preflight (and the item-text check), data without text is
refused by name, and (slow) a real multirun of the train job with two points writes a done summary each.

Run: .venv/bin/python -m pytest -q tests/test_item_text_sweep.py (add -m slow for the multirun)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from hybridrec import preflight
from hybridrec.errors import ConfigError
from hybridrec.model import item_text
from jobs.preflight import compose

SWEEP = "model.item_repr=id,text,text+id"
BASE = ["data=ml100k_text", "model=sasrec_text"]


def sweep_points(sweep: str) -> list[str]:
    """The per-point overrides Hydra's basic sweeper makes from one sweep override."""
    (override,) = OverridesParser.create().parse_overrides([sweep])
    return [f"{override.key_or_group}={value}" for value in override.sweep_string_iterator()]


def test_sweep_expands_to_three_points_that_pass_preflight() -> None:
    points = sweep_points(SWEEP)
    assert points == ["model.item_repr=id", "model.item_repr=text", "model.item_repr=text+id"]
    for point, expected in zip(points, ["id", "text", "text+id"], strict=True):
        cfg = compose([*BASE, point])
        assert cfg.model.item_repr == expected and cfg.data.item_text
        assert preflight.validate(cfg, 1).name() == "tp1-pp1-dp1"
        item_text.check_item_text_config(cfg.model, cfg.data.item_text)
    # the text point under a hybrid layout composes too
    cfg = compose([*BASE, "model.item_repr=text", "parallel.tp=2", "parallel.pp=2"])
    assert preflight.validate(cfg, 4).name() == "tp2-pp2-dp1"


def test_text_point_on_data_without_text_is_refused_by_name() -> None:
    cfg = compose(["data=ml100k", "model=sasrec_text", "model.item_repr=text"])
    with pytest.raises(ConfigError, match="data.item_text"):
        item_text.check_item_text_config(cfg.model, cfg.data.item_text)


@pytest.mark.slow
def test_multirun_over_item_repr_writes_a_summary_per_point(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "jobs.train_job", "-m", "data=ml100k_text", "model=sasrec_tiny_text",
           "model.item_repr=text,text+id", "train=quick", "train.steps=2", "train.save_final=false",
           "eval.protocols=[uni100]", "eval.baseline=false", "eval.batch_size=512", "telemetry.enabled=false",
           f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / str(i) / "summary.json").read_text()) for i in range(2)]
    assert [s["config"]["model"]["item_repr"] for s in summaries] == ["text", "text+id"]
    for summary in summaries:
        assert summary["status"] == "done" and summary["steps"] == 2
        assert 0.0 <= summary["metrics"]["uni100"]["HR@10"] <= 1.0
