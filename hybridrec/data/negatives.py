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
CHUNK_USERS = 16_384


def _rng(seed: int, protocol: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(protocol.encode()), zlib.crc32(split.encode())])


def _history_keys(offsets: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    users = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return np.unique(users * (num_items + 1) + items.astype(np.int64))


def _draw(rng: np.random.Generator, shape: tuple[int, int], num_items: int, cum: np.ndarray | None) -> np.ndarray:
    if cum is None:
        return rng.integers(1, num_items + 1, size=shape, dtype=np.int64)
    x = rng.random(shape) * cum[-1]
    return np.minimum(np.searchsorted(cum, x, side="right"), num_items - 1) + 1


def _first_valid_per_row(cand: np.ndarray, bad: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mark repeats within a row as bad, keep the first n good entries; returns (rows ok, values)."""
    order = np.argsort(cand, axis=1, kind="stable")
    sorted_cand = np.take_along_axis(cand, order, axis=1)
    repeat_sorted = np.zeros_like(bad)
    repeat_sorted[:, 1:] = sorted_cand[:, 1:] == sorted_cand[:, :-1]
    repeat = np.zeros_like(bad)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    good = ~bad & ~repeat
    rank = np.cumsum(good, axis=1)
    ok = rank[:, -1] >= n
    pick = good & (rank <= n)
    values = cand[ok][pick[ok]].reshape(int(ok.sum()), n)
    return ok, values


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
    weights = None if protocol == "uni100" else np.asarray(item_counts, dtype=np.float64)
    cum = None if weights is None else np.cumsum(weights[1:])
    if cum is not None and cum[-1] <= 0:
        cum, weights = None, None
    rng = _rng(seed, protocol, split)
    keys = _history_keys(offsets, items, num_items)
    out = np.zeros((num_users, n), dtype=np.int32)
    for start in range(0, num_users, CHUNK_USERS):
        pending = np.arange(start, min(start + CHUNK_USERS, num_users))
        width = n + n // 2 + 16
        for _attempt in range(4):
            cand = _draw(rng, (len(pending), width), num_items, cum)
            cand_keys = pending[:, None] * (num_items + 1) + cand
            pos = np.minimum(np.searchsorted(keys, cand_keys), len(keys) - 1)
            ok, values = _first_valid_per_row(cand, keys[pos] == cand_keys, n)
            out[pending[ok]] = values
            pending = pending[~ok]
            if len(pending) == 0:
                break
            width *= 2
        for user in pending:
            history = items[offsets[user]:offsets[user + 1]]
            out[user] = _exact_row(rng, history, num_items, n, weights, int(user))
    return out
