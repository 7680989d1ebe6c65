"""Chronological leave-one-out views of the grouped sequences (pure numpy).

For user u with sequence s = items[offsets[u]:offsets[u+1]]: train = s[:-2], valid target = s[-2],
test target = s[-1]; the valid history is s[:-2] and the test history is s[:-1].
"""

from __future__ import annotations

import numpy as np

SPLITS = ("valid", "test")


def lengths(offsets: np.ndarray) -> np.ndarray:
    return np.diff(offsets)


def targets(offsets: np.ndarray, items: np.ndarray, split: str) -> np.ndarray:
    """Target item per user: s[-2] for valid, s[-1] for test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    back = 2 if split == "valid" else 1
    return items[offsets[1:] - back].astype(np.int64)


def history_ends(offsets: np.ndarray, split: str) -> np.ndarray:
    """End (exclusive, into `items`) of each user's history for the split; it starts at offsets[:-1]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return offsets[1:] - (2 if split == "valid" else 1)


def train_item_counts(offsets: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Interactions per item in the train parts (s[:-2] of every user); index 0 (padding) is 0."""
    train_mask = np.ones(len(items), dtype=bool)
    ends = offsets[1:]
    train_mask[ends - 1] = False
    train_mask[ends - 2] = False
    counts = np.bincount(items[train_mask], minlength=num_items + 1).astype(np.int64)
    counts[0] = 0
    return counts


def left_padded_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int, dtype: type = np.int64
) -> np.ndarray:
    """Row r = the last `width` items of items[starts[r]:ends[r]], right-aligned, left-padded with 0."""
    n = len(starts)
    out = np.zeros((n, width), dtype=dtype)
    if n == 0 or width == 0:
        return out
    take = np.minimum(ends - starts, width)
    cols = np.arange(width)
    # position in `items` of column c of row r: ends[r] - width + c, valid where c >= width - take[r]
    src = ends[:, None] - width + cols[None, :]
    valid = cols[None, :] >= (width - take)[:, None]
    out[valid] = items[src[valid]]
    return out
