"""Pure preprocessing of interaction arrays: (user, item) dedupe and iterative k-core filtering.

Conventions:
- dedupe keeps, for every (user, item) pair, the earliest interaction (ties: first in file order).
- k-core is iterative: drop users with fewer than `user_min` and items with fewer than `item_min`
  interactions, repeat until nothing changes. `load_processed` uses item_min = k and
  user_min = max(k, 3), because leave-one-out needs at least one train item, a valid and a test item.
"""

from __future__ import annotations

import numpy as np


def dedupe_mask(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Boolean mask of the interactions kept: the first (by time, then file order) of each pair."""
    n = len(users)
    order = np.lexsort((np.arange(n), timestamps, items, users))
    su, si = users[order], items[order]
    first = np.ones(n, dtype=bool)
    first[1:] = (su[1:] != su[:-1]) | (si[1:] != si[:-1])
    keep = np.zeros(n, dtype=bool)
    keep[order[first]] = True
    return keep


def kcore_mask(
    users: np.ndarray, items: np.ndarray, user_min: int, item_min: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """Mask of the interactions in the (user_min, item_min)-core, and the number of rounds it took."""
    keep = np.ones(len(users), dtype=bool) if mask is None else mask.copy()
    num_users = int(users.max()) + 1 if len(users) else 0
    num_items = int(items.max()) + 1 if len(items) else 0
    rounds = 0
    while True:
        rounds += 1
        user_counts = np.bincount(users[keep], minlength=num_users)
        item_counts = np.bincount(items[keep], minlength=num_items)
        new_keep = keep & (user_counts[users] >= user_min) & (item_counts[items] >= item_min)
        if np.array_equal(new_keep, keep):
            return keep, rounds
        keep = new_keep


def group_sequences(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Remap kept users to 0..U-1 and items to 1..I (0 = padding), both in order of their codes, and
    sort each user's interactions chronologically with a stable sort (ties keep input order).

    Returns (offsets int64 (U+1), sequence items int32, kept user codes, kept item codes); the
    kept-code arrays map new ids back: user u <- user_codes[u], item i <- item_codes[i - 1].
    """
    user_codes, new_users = np.unique(users, return_inverse=True)
    item_codes, new_items = np.unique(items, return_inverse=True)
    order = np.lexsort((np.arange(len(users)), timestamps, new_users))
    seq_items = (new_items[order] + 1).astype(np.int32)
    counts = np.bincount(new_users, minlength=len(user_codes))
    offsets = np.zeros(len(user_codes) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, seq_items, user_codes, item_codes
