"""Preflight: cross-field checks of a whole `RunConfig` before any process group, data or model exists.

`validate(cfg, world_size)` raises the first problem as a `ConfigError` naming the field, its value and
what is allowed; `problems(cfg, world_size)` lists all of them (for the `jobs/preflight.py` CLI).
Checks that belong to one group's schema live beside it (e.g. `config.comm.validate_comm`) and are
called from here; this module owns the checks that span groups (layout x model x data x train).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hybridrec.distributed.env import BACKENDS
from hybridrec.distributed.layout import ParallelLayout
from hybridrec.errors import ConfigError

DATA_SOURCES = ("synthetic", "ml100k", "amazon2014", "amazon2018", "amazon2023")
FILE_SOURCES = ("amazon2014", "amazon2018", "amazon2023")
SYNTHETIC_SCALES = ("tiny", "paper")
ITEM_REPRS = ("id", "text", "text+id")
BALANCE_MODES = ("uniform", "adaptive")
EVAL_PROTOCOLS = ("full", "uni100", "pop100")
EVAL_SPLITS = ("valid", "test")


def validate(cfg: Any, world_size: int) -> ParallelLayout:
    """Refuse a bad config with one clear message; returns the validated layout when all is well."""
    for problem in _checks(cfg, world_size):
        raise problem
    return ParallelLayout.build(cfg.parallel, world_size, cfg.train.global_batch_size)


def problems(cfg: Any, world_size: int, overrides: list[str] | None = None) -> list[ConfigError]:
    """Every independent problem found (checks after a failed layout are skipped if they need it);
    `overrides` (the command line's Hydra overrides) adds the checks only their text allows (a rack
    named twice in `allreduce.racks={...}`, which composing silently drops)."""
    from hybridrec.config.comm import duplicate_rack_names

    return [*duplicate_rack_names(list(overrides or [])), *_checks(cfg, world_size)]


def _guard(check: Callable[[], None]) -> ConfigError | None:
    try:
        check()
    except ConfigError as err:
        return err
    return None


def _one_of(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field, value, f"one of {list(allowed)}")


def _checks(cfg: Any, world_size: int) -> Iterator[ConfigError]:
    layout: ParallelLayout | None = None
    try:
        layout = ParallelLayout.build(cfg.parallel, world_size, cfg.train.global_batch_size)
    except ConfigError as err:
        yield err
    for check in (_check_parallel, _check_model, _check_data, _check_train_eval, _check_comm, _check_telemetry):
        yield from check(cfg, layout, world_size)


def _check_parallel(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    par = cfg.parallel
    for err in (
        _guard(lambda: _one_of("parallel.backend", par.backend, BACKENDS)),
        _guard(lambda: _one_of("parallel.balance", par.balance, BALANCE_MODES)),
    ):
        if err:
            yield err
    if getattr(par, "timeout_s", 1.0) <= 0:
        yield ConfigError("parallel.timeout_s", par.timeout_s, "a positive number of seconds")
    threshold = getattr(par, "rebalance_threshold", 0.1)
    if not threshold > 0:
        yield ConfigError("parallel.rebalance_threshold", threshold, "a positive fraction (e.g. 0.15)")
    if getattr(par, "memory_budget_mb", 0.0) < 0:
        yield ConfigError("parallel.memory_budget_mb", par.memory_budget_mb, "MiB >= 0 (0 = unlimited)")
    # NOTES section 1 trap: interleaved 1F1B at pp=2 with batched p2p swaps activations silently
    if par.vpp > 1 and par.pp == 2 and getattr(par, "batch_p2p_comm", None) is True:
        yield ConfigError(
            "parallel.batch_p2p_comm", True,
            "false (or null = auto) with interleaved pipelining at pp=2 (vpp>1): megatron's batched "
            "p2p gives silently wrong losses there (Megatron-LM issues #750, #1450)",
        )
    if par.use_distributed_optimizer and getattr(cfg.allreduce, "algorithm", "megatron") != "megatron":
        yield ConfigError("parallel.use_distributed_optimizer", True,
                          "false unless allreduce.algorithm=megatron (GradSync replaces megatron's reduction)")


def _check_model(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    model, par = cfg.model, cfg.parallel
    tp, pp, vpp = par.tp, par.pp, par.vpp
    for name in ("hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size", "vocab_pad_multiple"):
        value = getattr(model, name)
        if not isinstance(value, int) or value < 1:
            yield ConfigError(f"model.{name}", value, "a positive integer")
            return
    if model.hidden_size % model.num_attention_heads:
        yield ConfigError("model.num_attention_heads", model.num_attention_heads,
                          f"a divisor of model.hidden_size={model.hidden_size}")
    if tp >= 1 and model.num_attention_heads % tp:
        yield ConfigError("model.num_attention_heads", model.num_attention_heads,
                          f"a multiple of parallel.tp={tp} (heads are split across tensor-parallel ranks)")
    if tp >= 1 and model.ffn_hidden_size % tp:
        yield ConfigError("model.ffn_hidden_size", model.ffn_hidden_size, f"a multiple of parallel.tp={tp}")
    if not 0.0 <= model.dropout < 1.0:
        yield ConfigError("model.dropout", model.dropout, "a probability in [0, 1)")
    if model.item_repr not in ITEM_REPRS:
        yield ConfigError("model.item_repr", model.item_repr, f"one of {list(ITEM_REPRS)}")
    else:
        from hybridrec.model.item_text import check_item_text_config

        err = _guard(lambda: check_item_text_config(model, bool(getattr(cfg.data, "item_text", False))))
        if err:
            yield err
    if pp >= 1 and vpp >= 1:
        err = _guard(lambda: check_stage_layers(model.num_layers, pp, vpp,
                                                getattr(model, "num_layers_in_first_pipeline_stage", None),
                                                getattr(model, "num_layers_in_last_pipeline_stage", None)))
        if err:
            yield err


def check_stage_layers(num_layers: int, pp: int, vpp: int, first: int | None, last: int | None) -> list[int]:
    """Layers per pipeline stage as megatron-core 0.16.1 builds them; ConfigError when it would refuse.

    Uneven stages: `first`/`last` set the first/last stage's counts, the middle stages share the rest
    evenly. With vpp > 1 every stage's count must divide by vpp.
    """
    if pp == 1:
        if first is not None or last is not None:
            raise ConfigError("model.num_layers_in_first_pipeline_stage", first,
                              "null when parallel.pp=1 (uneven stages need a pipeline)")
        return [num_layers]
    counts: list[int | None] = [None] * pp
    rest, middle = num_layers, pp
    for index, value, name in ((0, first, "first"), (pp - 1, last, "last")):
        if value is None:
            continue
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.num_layers_in_{name}_pipeline_stage", value, "null or a positive integer")
        counts[index] = value
        rest -= value
        middle -= 1
    if first is None and last is None:
        if num_layers % pp:
            raise ConfigError("model.num_layers", num_layers,
                              f"a multiple of parallel.pp={pp} (or set model.num_layers_in_first/last_"
                              "pipeline_stage for uneven stages)")
    elif rest < 0 or bool(rest) != bool(middle) or (middle and rest % middle):
        raise ConfigError(
            "model.num_layers", num_layers,
            f"first ({first}) + last ({last}) + an equal share for each of the {middle} other stages "
            f"(left {rest} layers)",
        )
    share = rest // middle if middle else 0
    stage_layers = [c if c is not None else share for c in counts]
    if vpp > 1:
        for stage, count in enumerate(stage_layers):
            if count % vpp or count == 0:
                raise ConfigError("parallel.vpp", vpp,
                                  f"a divisor of every stage's layer count (stage {stage} has {count})")
    return stage_layers


def _check_data(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    data = cfg.data
    if data.source not in DATA_SOURCES:
        yield ConfigError("data.source", data.source, f"one of {list(DATA_SOURCES)}")
    elif data.source in FILE_SOURCES:
        if not data.path:
            yield ConfigError("data.path", data.path, f"the path of the {data.source} file (data.source needs one)")
        elif not Path(data.path).expanduser().is_file():
            yield ConfigError("data.path", data.path, "an existing file (not found)")
    if data.source == "synthetic" and data.synthetic_scale not in SYNTHETIC_SCALES:
        yield ConfigError("data.synthetic_scale", data.synthetic_scale, f"one of {list(SYNTHETIC_SCALES)}")
    if data.kcore < 3:
        yield ConfigError("data.kcore", data.kcore, "an integer >= 3 (leave-one-out needs train, valid, test)")
    if data.max_seq_len < 1:
        yield ConfigError("data.max_seq_len", data.max_seq_len, "a positive integer")
    if data.num_negatives < 1:
        yield ConfigError("data.num_negatives", data.num_negatives, "a positive integer")


def _check_train_eval(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    from hybridrec.config.train import validate_train

    train, ev = cfg.train, cfg.eval
    err = _guard(lambda: validate_train(train))
    if err:
        yield err
    if train.steps < 0:
        yield ConfigError("train.steps", train.steps, "an integer >= 0")
    if not train.lr > 0:
        yield ConfigError("train.lr", train.lr, "a positive learning rate")
    if train.clip_grad < 0:
        yield ConfigError("train.clip_grad", train.clip_grad, ">= 0 (0 = no clipping)")
    if train.resume not in ("", "auto") and not Path(train.resume).expanduser().exists():
        yield ConfigError("train.resume", train.resume, "'' , 'auto' or an existing checkpoint directory")
    if not ev.k or any((not isinstance(k, int)) or k < 1 for k in ev.k):
        yield ConfigError("eval.k", list(ev.k), "a non-empty list of positive integers")
    bad = [p for p in ev.protocols if p not in EVAL_PROTOCOLS]
    if bad:
        yield ConfigError("eval.protocols", list(ev.protocols), f"a list drawn from {list(EVAL_PROTOCOLS)}")
    if ev.split not in EVAL_SPLITS:
        yield ConfigError("eval.split", ev.split, f"one of {list(EVAL_SPLITS)}")
    if ev.batch_size < 1:
        yield ConfigError("eval.batch_size", ev.batch_size, "a positive integer")


def _check_comm(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    from hybridrec.config.comm import rack_problems, validate_comm
    from hybridrec.distributed.compression import make_codec

    comp = cfg.compression
    for err in (_guard(lambda: make_codec(comp)), _guard(lambda: validate_comm(cfg.allreduce, comp, world_size))):
        if err:
            yield err
    yield from rack_problems(getattr(cfg.allreduce, "racks", None) or {})
    embedding = getattr(cfg, "embedding", None)
    if getattr(embedding, "enabled", False):
        from hybridrec.embedding.groups import validate_config

        # the table's world is the data-parallel ranks (it is copied over tp: embedding.groups.across_tp)
        table_world = layout.dp if layout is not None else world_size
        err = _guard(lambda: validate_config(embedding, table_world))
        if err:
            yield err
        from hybridrec.embedding.groups import job_refusals

        yield from job_refusals(cfg)


def _check_telemetry(cfg: Any, layout: ParallelLayout | None, world_size: int) -> Iterator[ConfigError]:
    from hybridrec.config.telemetry import validate_telemetry

    err = _guard(lambda: validate_telemetry(cfg.telemetry))
    if err:
        yield err
