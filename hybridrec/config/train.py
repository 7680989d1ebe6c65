"""Schemas of the `train/` and `eval/` groups."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    global_batch_size: int = 128
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    seed: int = 1234
    log_every: int = 20
    # save a checkpoint every N steps (0 = only at the end, when save_final is set)
    checkpoint_every: int = 0
    save_final: bool = True
    # directory of a checkpoint to resume from ("" = start fresh, "auto" = latest in the output dir)
    resume: str = ""
    # auto | cpu | cuda
    device: str = "auto"


@dataclass
class EvalConfig:
    k: list[int] = field(default_factory=lambda: [10])
    # any of full | uni100 | pop100
    protocols: list[str] = field(default_factory=lambda: ["full", "uni100", "pop100"])
    split: str = "test"
    batch_size: int = 256
    # full ranking: drop the user's history items from the candidates (SASRec keeps them)
    exclude_history: bool = False
    # also evaluate the most-popular baseline with the same protocols (rank 0, numpy)
    baseline: bool = True
