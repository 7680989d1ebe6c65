"""Item-text models (text, text+id with sum and concat fusion; mean and transformer pooling) train identically under tp=2, pp=2 and
tp2 x pp2 as on one process: same losses and grad norms (float-order tolerance, as
tests/test_equivalence_layouts.py) and the same eval ranks (full and uni100).

A missing tp gradient sum of the replicated encoder, or a missing pp sum of its replicas, shows up at
1e-3 and above. Run: .venv/bin/python -m pytest -q -m slow tests/test_item_text_layouts.py
"""

from __future__ import annotations

import functools

import pytest
from test_item_text_harness import run_text_layout

LOSS_RTOL = 1e-5
NORM_RTOL = 1e-4
STEPS = 4


@functools.cache
def reference(item_repr: str, fusion: str, pool: str = "mean") -> dict:
    return run_text_layout(item_repr=item_repr, fusion=fusion, pool=pool, steps=STEPS)


def assert_same_run(got: dict, ref: dict) -> None:
    assert len(got["losses"]) == len(ref["losses"]) == STEPS
    assert got["losses"] == pytest.approx(ref["losses"], rel=LOSS_RTOL)
    assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=NORM_RTOL)
    assert got["ranks"] == ref["ranks"]


@pytest.mark.slow
@pytest.mark.parametrize(("item_repr", "fusion", "tp", "pp"), [
    ("text", "sum", 2, 1), ("text", "sum", 1, 2),
    ("text+id", "sum", 2, 1), ("text+id", "sum", 1, 2),
    ("text+id", "concat", 2, 1), ("text+id", "concat", 2, 2),
])
def test_item_text_layout_matches_one_process(item_repr: str, fusion: str, tp: int, pp: int) -> None:
    got = run_text_layout(tp, pp, item_repr=item_repr, fusion=fusion, steps=STEPS)
    assert_same_run(got, reference(item_repr, fusion))


@pytest.mark.slow
def test_transformer_pooling_under_tp_matches_one_process() -> None:
    """The small text transformer runs replicated on every tp rank over tp-summed token embeddings."""
    got = run_text_layout(2, 1, item_repr="text", pool="transformer", steps=STEPS)
    assert_same_run(got, reference("text", "sum", "transformer"))
