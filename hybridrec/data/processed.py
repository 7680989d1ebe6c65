"""`load_processed(cfg) -> ProcessedData`: read raw data, dedupe, k-core, remap ids (0 = padding), split
leave-one-out, sample fixed negatives and cache it all in HDF5 keyed by a hash of the data config.

`process(raw, cfg)` is the pure part (arrays in, arrays out); `load_processed` adds the file I/O.
Several ranks may call `load_processed` at once: each writes the same bytes atomically, so the cache
stays valid; the trainer may let rank 0 build it first to save time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridrec.config.data import DataConfig
from hybridrec.data import cache, kcore, negatives, split, synthetic
from hybridrec.data.formats import BAD_LINE_POLICIES, READERS, RawInteractions
from hybridrec.data.formats.movielens import default_path as ml100k_default_path
from hybridrec.data.text_tokens import ItemTokens
from hybridrec.errors import ConfigError, DataError

SOURCES = ("synthetic", "ml100k", "amazon2014", "amazon2018", "amazon2023")
MIN_SEQUENCE = 3  # leave-one-out: >= 1 train item, a valid target, a test target


@dataclass
class ProcessedData:
    num_users: int
    num_items: int
    offsets: np.ndarray  # int64 (num_users + 1)
    items: np.ndarray  # int32, item ids 1..num_items
    item_counts: np.ndarray  # int64 (num_items + 1), train-part interactions per item
    negatives: dict[str, np.ndarray]  # "uni100/valid" ... -> (num_users, n) int32
    stats: dict[str, Any] = field(default_factory=dict)
    # raw key (asin, movie id) of item i at item_keys[i - 1]; empty for synthetic data
    item_keys: list[str] = field(default_factory=list)
    cache_path: str = ""
    # token ids of each item's text (data.item_text=true), row 0 = padding item
    item_tokens: ItemTokens | None = None

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]:self.offsets[user + 1]]


def validate(cfg: DataConfig) -> Path | None:
    """Check the data config; return the raw file to read (None for synthetic)."""
    if cfg.source not in SOURCES:
        raise ConfigError("data.source", cfg.source, " | ".join(SOURCES))
    if cfg.on_bad_line not in BAD_LINE_POLICIES:
        raise ConfigError("data.on_bad_line", cfg.on_bad_line, " | ".join(BAD_LINE_POLICIES))
    if cfg.kcore < 1:
        raise ConfigError("data.kcore", cfg.kcore, "an integer >= 1")
    if cfg.num_negatives < 1:
        raise ConfigError("data.num_negatives", cfg.num_negatives, "an integer >= 1")
    if cfg.source == "synthetic":
        synthetic.spec_for(cfg.synthetic_scale)
        return None
    if cfg.source == "ml100k":
        raw_file = Path(cfg.path) if cfg.path else ml100k_default_path()
    elif not cfg.path:
        raise ConfigError("data.path", cfg.path, f"the path of the {cfg.source} interaction file")
    else:
        raw_file = Path(cfg.path).expanduser()
    if not raw_file.is_file():
        raise DataError(raw_file, f"data.path: file not found (data.source={cfg.source})")
    return raw_file


def validate_meta(cfg: DataConfig) -> Path | None:
    """The metadata file to read when data.item_text is set (None otherwise)."""
    if not cfg.item_text:
        return None
    from hybridrec.data import metadata

    if cfg.source not in metadata.READERS:
        raise ConfigError("data.item_text", True, f"false for data.source={cfg.source} (no item metadata); "
                          f"sources with metadata: {' | '.join(metadata.READERS)}")
    if cfg.meta_path:
        meta_file = Path(cfg.meta_path).expanduser()
    elif cfg.source == "ml100k":
        meta_file = metadata.movielens.default_path()
    else:
        raise ConfigError("data.meta_path", cfg.meta_path, f"the path of the {cfg.source} metadata file")
    if not meta_file.is_file():
        raise DataError(meta_file, "data.meta_path: file not found")
    return meta_file


def add_item_tokens(data: ProcessedData, cfg: DataConfig, meta_file: Path) -> None:
    """Read metadata, build item texts, train the tokenizer and store the padded token ids."""
    from hybridrec.data import metadata
    from hybridrec.data.text_tokens import build_item_tokens

    table = metadata.read(cfg.source, meta_file, cfg.on_bad_line)
    texts, counts = metadata.item_texts(data.item_keys, table)
    data.item_tokens = build_item_tokens(texts, cfg.text_vocab_size, cfg.text_max_tokens)
    data.stats["metadata"] = {**{k: v for k, v in table.stats.items() if k != "skipped_examples"}, **counts,
                              "skipped_examples": table.stats["skipped_examples"],
                              "text_vocab_size": data.item_tokens.vocab_size,
                              "texts_truncated": int((data.item_tokens.lengths >= cfg.text_max_tokens).sum())}


def read_raw(cfg: DataConfig, raw_file: Path | None) -> RawInteractions:
    if cfg.source == "synthetic":
        return synthetic.generate(cfg.synthetic_scale, cfg.seed)
    return READERS[cfg.source](raw_file, cfg.on_bad_line)


def process(raw: RawInteractions, cfg: DataConfig) -> ProcessedData:
    """Dedupe, k-core, remap, sort chronologically (stable), count, sample negatives. Pure."""
    stats = dict(raw.stats)
    stats.update(raw_users=len(np.unique(raw.users)), raw_items=len(np.unique(raw.items)))
    keep = kcore.dedupe_mask(raw.users, raw.items, raw.timestamps) if cfg.dedupe else None
    stats["after_dedupe_interactions"] = int(keep.sum()) if keep is not None else len(raw.users)
    user_min = max(cfg.kcore, MIN_SEQUENCE)
    keep, rounds = kcore.kcore_mask(raw.users, raw.items, user_min, cfg.kcore, keep)
    stats.update(kcore=cfg.kcore, kcore_user_min=user_min, kcore_rounds=rounds)
    if not keep.any():
        where = raw.stats.get("path") or raw.stats.get("format", "data")
        raise DataError(where, f"k-core filtering removed every user (k={cfg.kcore}, users need >= {user_min} "
                        f"items and items >= {cfg.kcore} users; {len(raw.users)} interactions before)")
    offsets, seq_items, _user_codes, item_codes = kcore.group_sequences(
        raw.users[keep], raw.items[keep], raw.timestamps[keep]
    )
    num_users, num_items = len(offsets) - 1, len(item_codes)
    stats.update(users=num_users, items=num_items, interactions=len(seq_items))
    counts = split.train_item_counts(offsets, seq_items, num_items)
    negs = negatives.sample_all(offsets, seq_items, num_items, cfg.num_negatives, cfg.seed, counts)
    item_keys = [raw.item_keys[c] for c in item_codes] if raw.item_keys else []
    return ProcessedData(num_users, num_items, offsets, seq_items, counts, negs, stats, item_keys)


def _to_cache(data: ProcessedData, cfg: DataConfig, digest: str, path: Path) -> None:
    arrays = {"sequences/offsets": data.offsets, "sequences/items": data.items, "item_counts": data.item_counts}
    arrays.update({f"negatives/{key}": value for key, value in data.negatives.items()})
    attrs = {
        "format_version": cache.FORMAT_VERSION, "config_hash": digest,
        "config_json": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "stats_json": json.dumps(data.stats, sort_keys=True, default=str),
        "num_users": data.num_users, "num_items": data.num_items,
    }
    if data.item_tokens is not None:
        arrays["text/token_ids"] = data.item_tokens.token_ids
        arrays["text/lengths"] = data.item_tokens.lengths
        attrs["tokenizer_json"] = data.item_tokens.tokenizer_json
        attrs["text_vocab_size"] = data.item_tokens.vocab_size
    cache.write(path, arrays, attrs, data.item_keys)


def _from_cache(found: tuple[dict[str, np.ndarray], dict[str, Any], list[str]], path: Path) -> ProcessedData:
    arrays, attrs, keys = found
    negs = {name[len("negatives/"):]: arr for name, arr in arrays.items() if name.startswith("negatives/")}
    tokens = None
    if "text/token_ids" in arrays:
        tokens = ItemTokens(arrays["text/token_ids"], arrays["text/lengths"], int(attrs["text_vocab_size"]),
                            str(attrs["tokenizer_json"]))
    return ProcessedData(
        item_tokens=tokens,
        num_users=int(attrs["num_users"]), num_items=int(attrs["num_items"]),
        offsets=arrays["sequences/offsets"], items=arrays["sequences/items"],
        item_counts=arrays["item_counts"], negatives=negs, stats=dict(attrs["stats_json"]),
        item_keys=keys, cache_path=str(path),
    )


def load_processed(cfg: DataConfig) -> ProcessedData:
    """Processed data for `cfg`, from the HDF5 cache when a valid one exists, else built and cached."""
    raw_file = validate(cfg)
    meta_file = validate_meta(cfg)
    digest = cache.config_hash(cfg, raw_file, meta_file)
    path = cache.cache_file(cfg, digest)
    if cfg.use_cache:
        found = cache.read(path, digest)
        if found is not None:
            data = _from_cache(found, path)
            data.stats["cache"] = "hit"
            return data
    started = time.perf_counter()
    raw = read_raw(cfg, raw_file)
    data = process(raw, cfg)
    if meta_file is not None:
        add_item_tokens(data, cfg, meta_file)
    data.stats["build_s"] = round(time.perf_counter() - started, 3)
    _to_cache(data, cfg, digest, path)
    data.cache_path = str(path)
    data.stats["cache"] = "built"
    return data
