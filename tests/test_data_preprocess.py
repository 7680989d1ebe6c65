"""Dedupe, iterative k-core, id remapping and chronological leave-one-out on hand-made fixtures with
known answers; load_processed end to end on a fixture file and on MovieLens-100k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hybridrec.config.data import DataConfig
from hybridrec.data import load_processed, process
from hybridrec.data.formats import RawInteractions, movielens
from hybridrec.data.kcore import dedupe_mask, group_sequences, kcore_mask
from hybridrec.data.split import targets, train_item_counts
from hybridrec.errors import ConfigError, DataError


def raw_from(rows: list[tuple[str, str, int]]) -> RawInteractions:
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u = [users.setdefault(r[0], len(users)) for r in rows]
    i = [items.setdefault(r[1], len(items)) for r in rows]
    return RawInteractions(np.array(u), np.array(i), np.array([r[2] for r in rows], dtype=np.int64),
                           list(users), list(items), {"path": "fixture"})


def test_kcore_is_iterative_with_known_answer() -> None:
    # k=3: round 1 drops u5 (2 items) and items d, e, f (< 3 users); u4 then has 2 items -> round 2 drops it
    rows = {"u1": "abcd", "u2": "abc", "u3": "abce", "u4": "abd", "u5": "ef"}
    flat = [(u, i, t) for u, s in rows.items() for t, i in enumerate(s)]
    raw = raw_from(flat)
    keep, rounds = kcore_mask(raw.users, raw.items, 3, 3)
    kept = sorted((raw.user_keys[raw.users[j]], raw.item_keys[raw.items[j]]) for j in np.flatnonzero(keep))
    assert kept == [(u, i) for u in ("u1", "u2", "u3") for i in "abc"]
    assert rounds == 3  # two rounds that change something, one that confirms


def test_dedupe_keeps_earliest_then_first_in_file() -> None:
    raw = raw_from([("u", "a", 5), ("u", "b", 1), ("u", "a", 2), ("u", "b", 1), ("v", "a", 9)])
    keep = dedupe_mask(raw.users, raw.items, raw.timestamps)
    assert keep.tolist() == [False, True, True, False, True]


def test_grouping_is_stable_chronological_and_remaps_from_one() -> None:
    # ties at t=5: file order x before z must be kept (44% of ml-100k users have such ties)
    raw = raw_from([("u", "x", 5), ("u", "y", 3), ("u", "z", 5), ("u", "w", 1), ("v", "y", 0)])
    offsets, items, user_codes, item_codes = group_sequences(raw.users, raw.items, raw.timestamps)
    assert offsets.tolist() == [0, 4, 5]
    names = [raw.item_keys[item_codes[i - 1]] for i in items]
    assert names == ["w", "y", "x", "z", "y"]
    assert items.min() == 1  # 0 is padding
    assert user_codes.tolist() == [0, 1]


def test_leave_one_out_targets_and_train_counts() -> None:
    offsets = np.array([0, 4, 7])
    items = np.array([1, 2, 3, 4, 2, 5, 1], dtype=np.int32)
    assert targets(offsets, items, "valid").tolist() == [3, 5]
    assert targets(offsets, items, "test").tolist() == [4, 1]
    assert train_item_counts(offsets, items, 5).tolist() == [0, 1, 2, 0, 0, 0]


def test_process_end_to_end_on_fixture() -> None:
    rows = []
    for u in range(6):
        seq = [f"i{(u + j) % 8}" for j in range(5)]
        rows += [(f"u{u}", it, 100 + t) for t, it in enumerate(seq)]
    rows.append(("u0", "i0", 500))  # duplicate pair, later: dropped by dedupe
    rows.append(("lonely", "i9", 1))  # removed by k-core
    data = process(raw_from(rows), DataConfig(kcore=3, num_negatives=2))
    assert (data.num_users, data.num_items) == (6, 8)
    assert data.stats["after_dedupe_interactions"] == 31
    assert data.stats["interactions"] == 30 and len(data.items) == 30
    assert data.item_keys[data.sequence(0)[0] - 1] == "i0"
    assert [data.item_keys[i - 1] for i in data.sequence(2)] == ["i2", "i3", "i4", "i5", "i6"]
    assert data.item_counts.sum() == 6 * 3
    assert set(data.negatives) == {"uni100/valid", "uni100/test", "pop100/valid", "pop100/test"}


def test_kcore_removing_everyone_is_an_error() -> None:
    raw = raw_from([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "d", 1), ("u2", "e", 2), ("u2", "f", 3)])
    with pytest.raises(DataError, match="k-core filtering removed every user"):
        process(raw, DataConfig(kcore=3))


def test_small_k_still_gives_leave_one_out_sequences() -> None:
    raw = raw_from([("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3),
                    ("u2", "e", 4), ("u3", "a", 1), ("u3", "b", 2), ("u3", "c", 3), ("u3", "d", 4)])
    data = process(raw, DataConfig(kcore=1, num_negatives=1))
    assert data.num_users == 2  # u1 has only 2 items: no train item once valid and test are held out
    assert np.diff(data.offsets).min() >= 3


def test_load_processed_from_a_file(tmp_path: Path) -> None:
    lines = []
    for u in range(20):
        for t in range(6):
            lines.append(json.dumps({"user_id": f"U{u}", "parent_asin": f"P{(u * 3 + t) % 15}",
                                     "rating": 5, "timestamp": 1_600_000_000_000 + t}))
    path = tmp_path / "Electronics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="amazon2023", path=str(path), cache_dir=str(tmp_path / "cache"), num_negatives=5)
    data = load_processed(cfg)
    assert (data.num_users, data.num_items, len(data.items)) == (20, 15, 120)
    assert data.stats["cache"] == "built" and data.stats["timestamp_unit"] == "ms"


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.source"):
        load_processed(DataConfig(source="amazon2099"))
    with pytest.raises(ConfigError, match="data.path"):
        load_processed(DataConfig(source="amazon2014", path=""))
    with pytest.raises(DataError, match="file not found"):
        load_processed(DataConfig(source="amazon2018", path=str(tmp_path / "missing.json.gz")))
    with pytest.raises(ConfigError, match="data.synthetic_scale"):
        load_processed(DataConfig(synthetic_scale="huge"))
    with pytest.raises(ConfigError, match="data.kcore"):
        load_processed(DataConfig(kcore=0))


def test_ml100k_after_5core(tmp_path: Path) -> None:
    data = load_processed(DataConfig(source="ml100k", cache_dir=str(tmp_path)))
    assert (data.num_users, data.num_items, len(data.items)) == (943, 1349, 99_287)
    assert data.stats["raw_interactions"] == 100_000
    assert np.diff(data.offsets).min() >= 5
    # every sequence equals Python's stable sort by timestamp of the user's kept lines, in file order
    raw = movielens.read()
    kept = set(data.item_keys)
    per_user: dict[int, list[tuple[int, str]]] = {}
    for u, i, t in zip(raw.users.tolist(), raw.items.tolist(), raw.timestamps.tolist(), strict=True):
        if raw.item_keys[i] in kept:
            per_user.setdefault(u, []).append((t, raw.item_keys[i]))
    ties_at_end = 0
    for u in range(data.num_users):
        expected = sorted(per_user[u], key=lambda pair: pair[0])
        assert [data.item_keys[i - 1] for i in data.sequence(u)] == [key for _, key in expected]
        ties_at_end += expected[-1][0] == expected[-2][0]
    assert ties_at_end > 0.3 * data.num_users  # the trap the stable sort exists for
