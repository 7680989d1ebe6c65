"""Fixed evaluation negatives, sampled once per data set and stored with it (pure numpy).

- `uni100`: uniform over items 1..num_items; `pop100`: proportional to the item's train-part
  interaction count (`ProcessedData.item_counts`; items never seen in training are not drawn unless
  a user has too few other candidates, then the rest is filled uniformly).
- Each row holds `num_negatives` distinct items, none of them in the user's full sequence
  (train history, valid target and test target), so valid and test rows are both clean.
- Deterministic: the generator is seeded from (seed, protocol, split); rows are drawn in fixed chunks.
"""

from __future__ import annotations

import zlib

import numpy as np

from hybridrec.errors import ConfigError

PROTOCOLS = ("uni100", "pop100")
SPLITS = ("valid", "test")
# users per chunk (about 16k x 120 candidates: ~60 MB of temporaries)
CHUNK_USERS = 16_384
# draws (each twice as wide as the last) before a row falls back to exact sampling
MAX_ATTEMPTS = 4


def _rng(seed: int, protocol: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(protocol.encode()), zlib.crc32(split.encode())])


def _draw(rng: np.random.Generator, shape: tuple[int, int], num_items: int, table: np.ndarray | None) -> np.ndarray:
    """Uniform over 1..num_items, or (table given) an entry of table = each item repeated count times,
    i.e. exactly proportional to its count."""
    if table is None:
        return rng.integers(1, num_items + 1, size=shape, dtype=np.int64)
    return table[rng.integers(0, len(table), size=shape)]


def history_keys(offsets: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted keys user * (num_items + 1) + item of every interaction: the membership table."""
    users = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return np.sort(users * (num_items + 1) + items.astype(np.int64))


def _take_valid(
    cand: np.ndarray, rows: np.ndarray, keys: np.ndarray, num_items: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first n candidates that are not in the row user's history and not a repeat within
    the row. One sort of the (row, item) keys finds both: equal neighbours are repeats, and sorted
    queries make the history lookup cheap. Returns (rows that got n, their values)."""
    flat = (rows[:, None] * (num_items + 1) + cand).ravel()
    order = np.argsort(flat)
    sorted_keys = flat[order]
    bad_sorted = np.zeros(len(flat), dtype=bool)
    bad_sorted[1:] = sorted_keys[1:] == sorted_keys[:-1]
    pos = np.minimum(np.searchsorted(keys, sorted_keys), len(keys) - 1)
    bad_sorted |= keys[pos] == sorted_keys
    bad = np.empty_like(bad_sorted)
    bad[order] = bad_sorted
    good = ~bad.reshape(cand.shape)
    rank = np.cumsum(good, axis=1)
    ok = rank[:, -1] >= n
    pick = good & (rank <= n)
    return ok, cand[ok][pick[ok]].reshape(int(ok.sum()), n)


def _exact_row(
    rng: np.random.Generator, history: np.ndarray, num_items: int, n: int, weights: np.ndarray | None, user: int
) -> np.ndarray:
    allowed = np.setdiff1d(np.arange(1, num_items + 1), history)
    if len(allowed) < n:
        raise ConfigError("data.num_negatives", n,
                          f"<= {len(allowed)}: user {user} has only {len(allowed)} items outside their sequence")
    if weights is None:
        return rng.choice(allowed, size=n, replace=False)
    w = weights[allowed].astype(np.float64)
    positive = allowed[w > 0]
    if len(positive) >= n:
        return rng.choice(allowed, size=n, replace=False, p=w / w.sum())
    rest = rng.choice(allowed[w <= 0], size=n - len(positive), replace=False)
    return np.concatenate([positive, rest])


def sample_negatives(
    offsets: np.ndarray,
    items: np.ndarray,
    num_items: int,
    num_negatives: int,
    seed: int,
    protocol: str,
    split: str,
    item_counts: np.ndarray | None = None,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """(num_users, num_negatives) int32 negatives for `protocol` ('uni100' | 'pop100') and split;
    `keys` (from `history_keys`) may be passed to share the membership table between calls."""
    if protocol not in PROTOCOLS:
        raise ConfigError("eval.protocols", protocol, " | ".join(PROTOCOLS))
    if protocol == "pop100" and item_counts is None:
        raise ValueError("pop100 needs item_counts")
    n = num_negatives
    num_users = len(offsets) - 1
    weights = table = None
    if protocol == "pop100":
        weights = np.asarray(item_counts, dtype=np.int64).copy()
        weights[0] = 0
        if weights.sum() > 0:
            table = np.repeat(np.arange(num_items + 1, dtype=np.int64), weights)
        else:
            weights = None
    rng = _rng(seed, protocol, split)
    keys = history_keys(offsets, items, num_items) if keys is None else keys
    out = np.zeros((num_users, n), dtype=np.int32)
    for start in range(0, num_users, CHUNK_USERS):
        pending = np.arange(start, min(start + CHUNK_USERS, num_users))
        width = n + n // 8 + 8
        for _attempt in range(MAX_ATTEMPTS):
            ok, values = _take_valid(_draw(rng, (len(pending), width), num_items, table), pending, keys, num_items, n)
            out[pending[ok]] = values
            pending = pending[~ok]
            if len(pending) == 0:
                break
            width *= 2
        for user in pending:
            history = items[offsets[user]:offsets[user + 1]]
            out[user] = _exact_row(rng, history, num_items, n, weights, int(user))
    return out


def sample_all(
    offsets: np.ndarray, items: np.ndarray, num_items: int, num_negatives: int, seed: int, item_counts: np.ndarray
) -> dict[str, np.ndarray]:
    """All stored negative sets: {"uni100/valid", "uni100/test", "pop100/valid", "pop100/test"}."""
    keys = history_keys(offsets, items, num_items)
    return {
        f"{protocol}/{split}": sample_negatives(offsets, items, num_items, num_negatives, seed, protocol, split,
                                                item_counts, keys)
        for protocol in PROTOCOLS
        for split in SPLITS
    }
