"""Training/eval examples on a hand-made data set, and global batches identical for every dp layout."""

from __future__ import annotations

import numpy as np
import pytest

from hybridrec.data import ProcessedData
from hybridrec.data.batches import TrainBatchIterator, eval_examples, train_examples
from hybridrec.errors import ConfigError


def toy() -> ProcessedData:
    # user 0: 1 2 3 4 5 6 | user 1: 7 8 9 | user 2: 2 4 6 8 1
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [2, 4, 6, 8, 1]]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    items = np.concatenate(seqs).astype(np.int32)
    return ProcessedData(3, 9, offsets, items, np.zeros(10, np.int64), {})


def test_train_examples_are_last_window_of_train_part_left_padded() -> None:
    inputs, labels, mask = train_examples(toy(), max_len=3)
    # train parts: [1 2 3 4], [7] (no label: dropped), [2 4 6]
    np.testing.assert_array_equal(inputs, [[1, 2, 3], [0, 2, 4]])
    np.testing.assert_array_equal(labels, [[2, 3, 4], [0, 4, 6]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 1, 1]])
    assert inputs.dtype == labels.dtype == np.int64 and mask.dtype == np.float32
    inputs, labels, mask = train_examples(toy(), max_len=5)
    np.testing.assert_array_equal(inputs, [[0, 0, 1, 2, 3], [0, 0, 0, 2, 4]])
    np.testing.assert_array_equal(labels, [[0, 0, 2, 3, 4], [0, 0, 0, 4, 6]])
    np.testing.assert_array_equal(mask, labels != 0)


def test_eval_examples_follow_leave_one_out() -> None:
    inputs, targets = eval_examples(toy(), "valid", max_len=3)
    np.testing.assert_array_equal(inputs, [[2, 3, 4], [0, 0, 7], [2, 4, 6]])
    np.testing.assert_array_equal(targets, [5, 8, 8])
    inputs, targets = eval_examples(toy(), "test", max_len=3)
    np.testing.assert_array_equal(inputs, [[3, 4, 5], [0, 7, 8], [4, 6, 8]])
    np.testing.assert_array_equal(targets, [6, 9, 1])
    with pytest.raises(ConfigError, match="eval.split"):
        eval_examples(toy(), "train", 3)


def examples(n: int = 37) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.arange(n, dtype=np.int64)[:, None]
    return ids * np.ones((1, 4), np.int64), ids + 1000, np.ones((n, 4), np.float32)


@pytest.mark.parametrize("dp_size", [1, 2, 4, 8])
def test_global_batch_is_identical_for_every_dp_layout(dp_size: int) -> None:
    data = examples()
    reference = TrainBatchIterator(data, 8, 0, 1, seed=3)
    ranks = [TrainBatchIterator(data, 8, r, dp_size, seed=3) for r in range(dp_size)]
    for step in range(12):  # crosses epochs (37 examples, 8 per batch)
        whole = reference.batch(step)
        parts = [it.batch(step) for it in ranks]
        for field in range(3):
            np.testing.assert_array_equal(np.concatenate([p[field] for p in parts]), whole[field])
        assert all(len(p[0]) == 8 // dp_size for p in parts)


def test_batches_cover_each_epoch_once_and_are_seeded() -> None:
    data = examples(32)
    it = TrainBatchIterator(data, 8, seed=1)
    first_epoch = np.concatenate([it.global_indices(s) for s in range(4)])
    assert sorted(first_epoch.tolist()) == list(range(32))
    second = np.concatenate([it.global_indices(s) for s in range(4, 8)])
    assert sorted(second.tolist()) == list(range(32)) and not np.array_equal(first_epoch, second)
    assert not np.array_equal(TrainBatchIterator(data, 8, seed=2).global_indices(0), it.global_indices(0))


def test_iterator_resumes_from_state() -> None:
    data = examples()
    it = TrainBatchIterator(data, 4, seed=0)
    seen = [next(it)[1] for _ in range(5)]
    resumed = TrainBatchIterator(data, 4, seed=0)
    resumed.load_state_dict(it.state_dict())
    np.testing.assert_array_equal(next(resumed)[1], it.batch(5)[1])
    np.testing.assert_array_equal(TrainBatchIterator(data, 4, seed=0, start_step=2).batch(2)[1], seen[2])
    with pytest.raises(ConfigError, match="train.resume"):
        TrainBatchIterator(data, 4, seed=9).load_state_dict(it.state_dict())


def test_bad_batch_layouts_are_refused() -> None:
    with pytest.raises(ConfigError, match="multiple of the dp size 3"):
        TrainBatchIterator(examples(), 8, 0, 3)
    with pytest.raises(ConfigError, match="dp_rank"):
        TrainBatchIterator(examples(), 8, 2, 2)
