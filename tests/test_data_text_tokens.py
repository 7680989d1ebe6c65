"""The item tokenizer: deterministic, round-trips, pads; ml-100k item tokens are cached with the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridrec.config.data import DataConfig
from hybridrec.data import load_processed
from hybridrec.data.text_tokens import build_item_tokens, train_tokenizer
from hybridrec.errors import ConfigError

TEXTS = ["USB Cable | Electronics, Accessories | Acme", "", "Wireless Headphones | Electronics, Audio",
         "USB Charger | Electronics, Accessories", "Café Speaker | Electronics, Audio | Acme"]


def test_tokenizer_round_trips_and_is_deterministic() -> None:
    tokens = build_item_tokens(TEXTS, vocab_size=200, max_tokens=16)
    again = build_item_tokens(TEXTS, vocab_size=200, max_tokens=16)
    np.testing.assert_array_equal(tokens.token_ids, again.token_ids)
    assert tokens.tokenizer_json == again.tokenizer_json
    tokenizer = tokens.tokenizer()
    for item, text in enumerate(TEXTS, start=1):
        ids = tokens.token_ids[item, : tokens.lengths[item]].tolist()
        assert 1 not in ids  # no [UNK]
        normalised = tokenizer.normalizer.normalize_str(text)
        words = [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalised)]
        assert tokenizer.decode(ids) == " ".join(words)
    assert tokenizer.decode(tokenizer.encode("usb cable").ids) == "usb cable"
    assert "cafe" in tokenizer.decode(tokens.token_ids[5].tolist())  # accents stripped, lowercased


def test_padding_truncation_and_empty_texts() -> None:
    tokens = build_item_tokens(TEXTS, vocab_size=200, max_tokens=4)
    assert tokens.token_ids.shape == (len(TEXTS) + 1, 4) and tokens.token_ids.dtype == np.int32
    assert tokens.lengths[0] == 0 and not tokens.token_ids[0].any()  # padding item
    assert tokens.lengths[2] == 0 and not tokens.token_ids[2].any()  # item without text
    assert tokens.lengths[1] == 4  # truncated
    wide = build_item_tokens(TEXTS, vocab_size=200, max_tokens=32)
    np.testing.assert_array_equal(wide.token_ids[:, :4], tokens.token_ids)
    assert (wide.token_ids[3, wide.lengths[3]:] == 0).all()


def test_small_vocab_keeps_characters_and_refuses_too_small() -> None:
    tokenizer = train_tokenizer(TEXTS, vocab_size=80)
    assert tokenizer.get_vocab_size() <= 80
    assert 1 not in tokenizer.encode("headphones").ids  # spelled with pieces, not [UNK]
    with pytest.raises(ConfigError, match="data.text_vocab_size"):
        train_tokenizer(TEXTS, vocab_size=10)


def test_ml100k_item_tokens_round_trip_through_the_cache(tmp_path: Path) -> None:
    cfg = DataConfig(source="ml100k", item_text=True, text_max_tokens=24, text_vocab_size=3000,
                     cache_dir=str(tmp_path))
    built, cached = load_processed(cfg), load_processed(cfg)
    assert cached.stats["cache"] == "hit"
    assert built.item_tokens is not None and cached.item_tokens is not None
    np.testing.assert_array_equal(built.item_tokens.token_ids, cached.item_tokens.token_ids)
    np.testing.assert_array_equal(built.item_tokens.lengths, cached.item_tokens.lengths)
    assert built.item_tokens.tokenizer_json == cached.item_tokens.tokenizer_json
    assert cached.item_tokens.token_ids.shape == (cached.num_items + 1, 24)
    assert cached.stats["metadata"]["items_without_metadata"] == 1
    toy_story = cached.item_keys.index("1") + 1
    text = cached.item_tokens.tokenizer().decode(cached.item_tokens.token_ids[toy_story].tolist())
    assert text.startswith("toy story ( 1995 ) | animation")
    plain = load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path)))
    assert plain.item_tokens is None and plain.cache_path != cached.cache_path


def test_item_text_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.item_text"):
        load_processed(DataConfig(source="synthetic", item_text=True, cache_dir=str(tmp_path)))
    raw = tmp_path / "r.json"
    raw.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n')
    with pytest.raises(ConfigError, match="data.meta_path"):
        load_processed(DataConfig(source="amazon2018", path=str(raw), item_text=True, cache_dir=str(tmp_path)))
