"""Item-text model: configuration errors, item_repr=id is exactly today's model, and the fused table is
computed once per evaluation.

Run: .venv/bin/python -m pytest -q tests/test_item_text_model.py (add -m slow for the training runs)
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
from test_item_text_harness import run_text_layout, tiny_item_tokens
from test_train_harness import run_layout

from hybridrec.config.model import ModelConfig
from hybridrec.errors import ConfigError
from hybridrec.model import item_text


def test_text_repr_needs_item_text_data() -> None:
    with pytest.raises(ConfigError, match="data.item_text"):
        item_text.make_spec(ModelConfig(item_repr="text"), 128, None, tp=1)


@pytest.mark.parametrize(("field", "value"), [("item_fusion", "product"), ("item_text_pool", "max"),
                                              ("item_text_layers", 0), ("item_repr", "title")])
def test_bad_item_text_fields_are_named(field: str, value: object) -> None:
    cfg = ModelConfig(item_repr="text+id")
    setattr(cfg, field, value)
    with pytest.raises(ConfigError, match=f"model.{field}"):
        item_text.check_item_text_config(cfg, item_text_enabled=True)


def test_spec_pads_tokens_to_item_vocab_and_text_vocab_to_tp_multiple() -> None:
    tokens = tiny_item_tokens()
    spec = item_text.make_spec(ModelConfig(item_repr="text", vocab_pad_multiple=64), 128, tokens, tp=2)
    assert spec.token_ids.shape == (128, tokens.token_ids.shape[1])
    assert (spec.token_ids[: tokens.token_ids.shape[0]] == tokens.token_ids).all()
    assert not spec.token_ids[tokens.token_ids.shape[0]:].any()
    assert spec.text_vocab_size == 128  # 90 -> multiple of 64 * 2


def test_token_ids_beyond_text_vocab_are_refused() -> None:
    tokens = tiny_item_tokens()
    bad = SimpleNamespace(token_ids=tokens.token_ids.copy(), vocab_size=20)
    with pytest.raises(ConfigError, match="data.item_tokens"):
        item_text.make_spec(ModelConfig(item_repr="text", vocab_pad_multiple=4), 128, bad, tp=1)


@functools.lru_cache(maxsize=1)
def id_reference() -> dict:
    return run_layout(steps=4)


@pytest.mark.slow
def test_id_repr_reproduces_the_id_model_exactly() -> None:
    """item_repr=id with item tokens available builds today's GPTModel: bit-identical losses/ranks."""
    got = run_text_layout(item_repr="id", steps=4)
    ref = id_reference()
    assert got["losses"] == ref["losses"]
    assert got["grad_norms"] == ref["grad_norms"]
    assert got["ranks"] == ref["ranks"]
    assert not any(name.startswith("item_") for name in got["param_names"])
    assert got["eval_table_calls"] == 0


@pytest.mark.slow
def test_text_model_differs_and_computes_its_table_once_per_evaluation() -> None:
    got = run_text_layout(item_repr="text+id", steps=4)
    assert got["losses"] != pytest.approx(id_reference()["losses"], rel=1e-3)  # control: text is really used
    assert "item_text.token_embedding.weight" in got["param_names"]
    assert got["eval_table_calls"] == 1  # 64 users in 8 batches, one table
