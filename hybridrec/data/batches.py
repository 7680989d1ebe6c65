"""Training examples, evaluation examples and the deterministic global-batch iterator.

Training examples (`data.train_windows`):
- `last` (the SASRec convention): ONE example per user, built from the last `max_len + 1` items of the
  user's train part (s[:-2]): inputs = those items minus the last, labels = minus the first, both
  right-aligned and left-padded with 0; mask = 1.0 where the label is a real item. Older items of
  histories longer than max_len + 1 are never trained on.
- `all` (the whole history): windows of max_len + 1 items ending every `stride` items from the end of the
  train part back to its start (stride = `data.train_stride`, 0 = max_len); each window trains only its
  last `stride` labels, so every next-item target of the train part is a label exactly once, with at
  least max_len - stride items of context (fewer only near the start of the history). stride = max_len
  cuts the history into consecutive chunks; stride = 1 is "every prefix" (one label per example).
  The newest window of every user equals its `last` example.
Memory: 2 int64 + 1 float32 arrays of (N, max_len): about 150 MB per 192k examples at max_len 50.
Users whose train part has a single item give no label and are left out.

`TrainBatchIterator` draws global batches from a stream of per-epoch permutations seeded by
(seed, epoch), so the global batch at step t depends only on (examples, global_batch, seed, t): every
parallel layout sees the same global batch; dp rank r gets the contiguous rows
[r * global_batch / dp_size, (r + 1) * global_batch / dp_size) of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from hybridrec.data.split import history_ends, left_padded_windows, targets
from hybridrec.errors import ConfigError

if TYPE_CHECKING:
    from hybridrec.data.processed import ProcessedData

Examples = tuple[np.ndarray, np.ndarray, np.ndarray]


TRAIN_WINDOWS = ("last", "all")


def train_examples(data: ProcessedData, max_len: int, windows: str = "last", stride: int = 0) -> Examples:
    """(inputs, labels, mask): int64, int64, float32 arrays of shape (N, max_len); see the module doc."""
    if max_len < 1:
        raise ConfigError("data.max_seq_len", max_len, "an integer >= 1")
    if windows not in TRAIN_WINDOWS:
        raise ConfigError("data.train_windows", windows, " | ".join(TRAIN_WINDOWS))
    if not 0 <= stride <= max_len:
        raise ConfigError("data.train_stride", stride, f"0 (= max_seq_len) or 1..max_seq_len={max_len}")
    stride = stride or max_len
    starts = data.offsets[:-1]
    ends = data.offsets[1:] - 2  # end of the train part (exclusive)
    keep = np.flatnonzero(ends - starts >= 2)
    starts, ends = starts[keep], ends[keep]
    if windows == "last":
        per_user = np.ones(len(keep), dtype=np.int64)
        stride = max_len
    else:  # ceil((targets in the train part) / stride) windows per user
        per_user = -(-(ends - starts - 1) // stride)
    user = np.repeat(np.arange(len(keep)), per_user)
    back = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)  # 0 = newest window
    window_ends = ends[user] - back * stride
    window = left_padded_windows(data.items, starts[user], window_ends, max_len + 1)
    inputs = np.ascontiguousarray(window[:, :-1])
    labels = np.ascontiguousarray(window[:, 1:])
    labels[inputs == 0] = 0  # a short history's first item is never a label (it has no input before it)
    mask = (labels != 0).astype(np.float32)
    if stride < max_len:
        mask[:, :max_len - stride] = 0.0  # those labels are trained by the window `stride` items earlier
    return inputs, labels, mask


def eval_examples(data: ProcessedData, split: str, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (U, max_len) int64 left-padded histories, targets (U,) int64) for 'valid' or 'test'."""
    if split not in ("valid", "test"):
        raise ConfigError("eval.split", split, "valid | test")
    inputs = left_padded_windows(data.items, data.offsets[:-1], history_ends(data.offsets, split), max_len)
    return inputs, targets(data.offsets, data.items, split)


class TrainBatchIterator:
    """Endless deterministic batches; `batch(step)` is random access, iteration starts at `start_step`."""

    def __init__(
        self, examples: Examples, global_batch: int, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
        start_step: int = 0,
    ):
        num = len(examples[0])
        if global_batch < 1:
            raise ConfigError("train.global_batch_size", global_batch, "an integer >= 1")
        if dp_size < 1 or global_batch % dp_size:
            raise ConfigError("train.global_batch_size", global_batch, f"a multiple of the dp size {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ConfigError("dp_rank", dp_rank, f"0 <= dp_rank < {dp_size}")
        if num == 0:
            raise ConfigError("data", "no training examples", "at least one user with >= 2 train items")
        self.examples, self.global_batch, self.seed = examples, global_batch, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.step = start_step
        self._num = num
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def steps_per_epoch(self) -> float:
        return self._num / self.global_batch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self._num)
        return self._perm_cache[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        """Example indices of the global batch at `step` (the same for every layout)."""
        start = step * self.global_batch
        positions = np.arange(start, start + self.global_batch)
        epochs, within = np.divmod(positions, self._num)
        out = np.empty(self.global_batch, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[within[sel]]
        return out

    def batch(self, step: int) -> Examples:
        """This dp rank's contiguous slice of the global batch at `step`."""
        per_rank = self.global_batch // self.dp_size
        rows = self.global_indices(step)[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        return tuple(array[rows] for array in self.examples)  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Examples]:
        return self

    def __next__(self) -> Examples:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("global_batch", self.global_batch) != self.global_batch:
            raise ConfigError("train.resume", state, f"a checkpoint with seed {self.seed} and "
                              f"global batch {self.global_batch}")
        self.step = int(state["step"])
