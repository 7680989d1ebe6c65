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
# users per chunk: a (chunk, num_items + 1) bool table of used items of about 32 MiB
CHUNK_CELLS = 32 * 2**20
# candidate blocks drawn per chunk before the remaining rows fall back to exact sampling
MAX_BLOCKS = 8


def _rng(seed: int, protocol: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(protocol.encode()), zlib.crc32(split.encode())])


def _draw(rng: np.random.Generator, shape: tuple[int, int], num_items: int, table: np.ndarray | None) -> np.ndarray:
    """Uniform over 1..num_items, or (table given) an entry of table = each item repeated count times,
    i.e. exactly proportional to its count."""
    if table is None:
        return rng.integers(1, num_items + 1, size=shape, dtype=np.int64)
    return table[rng.integers(0, len(table), size=shape)]


def _fill_chunk(
    rng: np.random.Generator, users: np.ndarray, offsets: np.ndarray, items: np.ndarray, num_items: int,
    n: int, table: np.ndarray | None, used: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill n negatives for each of `users` (a chunk): candidates are drawn in blocks and taken column
    by column; `used` (len(users), num_items + 1) bool, all False on entry and on exit, marks the
    row's history and the negatives taken so far. Returns (values (B, n), filled mask (B,))."""
    rows = np.repeat(np.arange(len(users)), np.diff(offsets)[users])
    hist = items[offsets[users[0]]:offsets[users[-1] + 1]]  # users are consecutive
    used[rows, hist] = True
    out = np.zeros((len(users), n), dtype=np.int64)
    taken = np.zeros(len(users), dtype=np.int64)
    width = n + n // 8 + 8
    for _block in range(MAX_BLOCKS):
        open_rows = np.flatnonzero(taken < n)
        if len(open_rows) == 0:
            break
        cand = _draw(rng, (len(open_rows), width), num_items, table)
        for col in range(width):
            c = cand[:, col]
            ok = ~used[open_rows, c] & (taken[open_rows] < n)
            r, v = open_rows[ok], c[ok]
            out[r, taken[r]] = v
            used[r, v] = True
            taken[r] += 1
    used[rows, hist] = False
    used[np.repeat(np.arange(len(users)), taken), out[np.arange(n)[None, :] < taken[:, None]]] = False
    return out, taken == n


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
) -> np.ndarray:
    """(num_users, num_negatives) int32 negatives for `protocol` ('uni100' | 'pop100') and split."""
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
    out = np.zeros((num_users, n), dtype=np.int32)
    chunk = max(1, min(num_users, CHUNK_CELLS // (num_items + 1)))
    used = np.zeros((chunk, num_items + 1), dtype=bool)
    for start in range(0, num_users, chunk):
        users = np.arange(start, min(start + chunk, num_users))
        values, filled = _fill_chunk(rng, users, offsets, items, num_items, n, table, used[: len(users)])
        out[users[filled]] = values[filled]
        for user in users[~filled]:
            history = items[offsets[user]:offsets[user + 1]]
            out[user] = _exact_row(rng, history, num_items, n, weights, int(user))
    return out


def sample_all(
    offsets: np.ndarray, items: np.ndarray, num_items: int, num_negatives: int, seed: int, item_counts: np.ndarray
) -> dict[str, np.ndarray]:
    """All stored negative sets: {"uni100/valid", "uni100/test", "pop100/valid", "pop100/test"}."""
    return {
        f"{protocol}/{split}": sample_negatives(offsets, items, num_items, num_negatives, seed, protocol, split,
                                                item_counts)
        for protocol in PROTOCOLS
        for split in SPLITS
    }
