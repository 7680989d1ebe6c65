"""Training examples from the whole history (`data.train_windows=all`): every next-item target of every
train part is a label exactly once, with the context the stride promises, on a hand-made data set and on
random histories."""

from __future__ import annotations

import numpy as np
import pytest

from hybridrec.data import ProcessedData
from hybridrec.data.batches import train_examples
from hybridrec.errors import ConfigError


def toy() -> ProcessedData:
    # train parts: [1 2 3 4] | [7] (no label) | [2 4 6]
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [2, 4, 6, 8, 1]]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    return ProcessedData(3, 9, offsets, np.concatenate(seqs).astype(np.int32), np.zeros(10, np.int64), {})


def random_data(seed: int, users: int = 40, items: int = 30, shortest: int = 3) -> ProcessedData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, 40, size=users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return ProcessedData(users, items, offsets, rng.integers(1, items + 1, size=offsets[-1]).astype(np.int32),
                         np.zeros(items + 1, np.int64), {})


def test_chunks_of_the_whole_train_part() -> None:
    inputs, labels, mask = train_examples(toy(), max_len=2, windows="all")
    # user 0: newest window [2 3 4] then [_ 1 2]; user 2: [2 4 6]
    np.testing.assert_array_equal(inputs, [[2, 3], [0, 1], [2, 4]])
    np.testing.assert_array_equal(labels, [[3, 4], [0, 2], [4, 6]])
    np.testing.assert_array_equal(mask, [[1, 1], [0, 1], [1, 1]])


def test_every_prefix_trains_one_label_per_example() -> None:
    inputs, labels, mask = train_examples(toy(), max_len=3, windows="all", stride=1)
    np.testing.assert_array_equal(inputs, [[1, 2, 3], [0, 1, 2], [0, 0, 1], [0, 2, 4], [0, 0, 2]])
    np.testing.assert_array_equal(labels[:, -1], [4, 3, 2, 6, 4])
    np.testing.assert_array_equal(mask, [[0, 0, 1]] * 5)


@pytest.mark.parametrize("max_len,stride", [(5, 0), (5, 1), (5, 2), (8, 3), (50, 0), (50, 10)])
def test_every_train_target_is_a_label_exactly_once(max_len: int, stride: int) -> None:
    data = random_data(seed=max_len + stride)
    inputs, labels, mask = train_examples(data, max_len, windows="all", stride=stride)
    expected = []  # (previous item, target) for every target of every train part
    for u in range(data.num_users):
        train = data.items[data.offsets[u]:data.offsets[u + 1] - 2]
        expected += list(zip(train[:-1].tolist(), train[1:].tolist(), strict=True))
    rows, cols = np.nonzero(mask)
    got = list(zip(inputs[rows, cols].tolist(), labels[rows, cols].tolist(), strict=True))
    assert sorted(got) == sorted(expected)
    # context: a trained label sits in the last `stride` columns, so it sees >= max_len - stride + 1 inputs
    # (all of its history when the window is left-padded)
    assert (cols >= max_len - (stride or max_len)).all()


def test_newest_window_is_the_sasrec_example() -> None:
    data = random_data(seed=3, shortest=4)  # every user has a label
    last = train_examples(data, 6)
    every = train_examples(data, 6, windows="all")
    assert len(every[0]) > len(last[0]) == data.num_users
    windows_per_user = -(-(np.diff(data.offsets) - 3) // 6)
    newest = np.concatenate([[0], np.cumsum(windows_per_user)[:-1]])
    for array_all, array_last in zip(every, last, strict=True):
        np.testing.assert_array_equal(array_all[newest], array_last)


def test_bad_choices_name_the_field() -> None:
    with pytest.raises(ConfigError, match="data.train_windows"):
        train_examples(toy(), 3, windows="prefix")
    with pytest.raises(ConfigError, match="data.train_stride"):
        train_examples(toy(), 3, windows="all", stride=4)
