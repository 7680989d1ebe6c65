"""Schemas of the `train/` and `eval/` groups."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    global_batch_size: int = 128
    steps: int = 200
    # peak learning rate (after warmup)
    lr: float = 1e-3
    # linear warmup from 0 over this many steps (megatron's OptimizerParamScheduler)
    warmup_steps: int = 0
    # after warmup: constant | linear | cosine | inverse-square-root, from lr down to min_lr
    lr_decay: str = "constant"
    # the decay ends (min_lr from then on) at this step; 0 = train.steps
    lr_decay_steps: int = 0
    min_lr: float = 0.0
    # decoupled (AdamW) weight decay; biases and norm weights (1-D parameters) are not decayed
    weight_decay: float = 0.0
    # cross entropy with label smoothing over the (padded) item vocabulary; 0 = plain CE
    label_smoothing: float = 0.0
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
    # validation (full ranking on the valid split) every N steps; 0 = none (hybridrec.train.validation)
    eval_every: int = 0
    # stop after this many validations without improvement of select_metric; 0 = never stop early
    patience: int = 0
    # validation metric for early stopping and model selection (higher is better): <protocol>/<metric>
    select_metric: str = "full/NDCG@10"
    # validation protocols (the valid split's stored negatives for sampled ones)
    valid_protocols: list[str] = field(default_factory=lambda: ["full"])
    # test metrics from the best-validation weights (kept in memory) instead of the last step's
    keep_best: bool = True
    # improvements smaller than this do not reset the patience counter
    min_delta: float = 0.0
    # validate on a fixed random subset of this many users (0 = all; keeps validation cheap at scale)
    valid_max_users: int = 0


LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root")


def validate_train(cfg: TrainConfig) -> None:
    """Group-local checks of the schedule and validation fields (ConfigError naming the field)."""
    from hybridrec.errors import ConfigError

    if cfg.lr_decay not in LR_DECAY_STYLES:
        raise ConfigError("train.lr_decay", cfg.lr_decay, " | ".join(LR_DECAY_STYLES))
    for name in ("warmup_steps", "lr_decay_steps", "eval_every", "patience", "valid_max_users"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"train.{name}", getattr(cfg, name), "an integer >= 0")
    if not 0.0 <= cfg.min_lr <= cfg.lr:
        raise ConfigError("train.min_lr", cfg.min_lr, f"0 <= min_lr <= train.lr={cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError("train.weight_decay", cfg.weight_decay, ">= 0")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ConfigError("train.label_smoothing", cfg.label_smoothing, "0 <= label_smoothing < 1")
    decay_steps = cfg.lr_decay_steps or cfg.steps
    if cfg.warmup_steps and cfg.warmup_steps >= max(decay_steps, 1):
        raise ConfigError("train.warmup_steps", cfg.warmup_steps,
                          f"fewer than the decay steps ({decay_steps}: train.lr_decay_steps or train.steps)")
    if "/" not in cfg.select_metric:
        raise ConfigError("train.select_metric", cfg.select_metric, "<protocol>/<metric>, e.g. full/NDCG@10")
    protocol = cfg.select_metric.split("/", 1)[0]
    conventions = ("full_incl", "full_excl") if "full" in cfg.valid_protocols else ()
    if protocol not in cfg.valid_protocols and protocol not in conventions:
        raise ConfigError("train.select_metric", cfg.select_metric,
                          f"a metric of one of train.valid_protocols {list(cfg.valid_protocols)}")


@dataclass
class EvalConfig:
    k: list[int] = field(default_factory=lambda: [10])
    # any of full | uni100 | pop100
    protocols: list[str] = field(default_factory=lambda: ["full", "uni100", "pop100"])
    split: str = "test"
    batch_size: int = 256
    # full ranking: drop the items of the input window (the last data.max_seq_len history items) from the
    # candidates (SASRec's own evaluation keeps them)
    exclude_history: bool = False
    # also report the other full-ranking convention as protocol full_excl (or full_incl when
    # exclude_history is set), in the metrics, the baseline and the validation curve
    both_conventions: bool = True
    # also evaluate the most-popular baseline with the same protocols (rank 0, numpy)
    baseline: bool = True
