"""Preflight refuses each bad config with a message naming field, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from hybridrec.config import RunConfig
from hybridrec.errors import ConfigError
from hybridrec.preflight import check_stage_layers, problems, validate


def cfg_with(**groups) -> RunConfig:
    """RunConfig with group fields replaced: cfg_with(parallel={"tp": 2}, model={"num_layers": 3})."""
    cfg = RunConfig()
    for group, fields in groups.items():
        setattr(cfg, group, replace(getattr(cfg, group), **fields))
    return cfg


def test_default_config_passes_and_returns_layout():
    layout = validate(RunConfig(), 1)
    assert (layout.tp, layout.pp, layout.dp, layout.num_micro_batches) == (1, 1, 1, 4)


def test_hybrid_layout_passes():
    cfg = cfg_with(parallel={"tp": 2, "pp": 2}, model={"num_attention_heads": 4})
    assert validate(cfg, 8).name() == "tp2-pp2-dp2"


CASES = [
    ("tp*pp*dp != world", {"parallel": {"tp": 2, "pp": 2, "dp": 2}}, 4, "parallel.dp", "world size 4"),
    ("world not divisible", {"parallel": {"tp": 3}}, 4, "parallel.tp*parallel.pp", "divisor of the world"),
    ("batch", {"train": {"global_batch_size": 100}}, 2, "train.global_batch_size", "dp*micro_batch_size"),
    ("unknown codec", {"compression": {"codec": "zip"}}, 1, "compression.codec", "sign1bit"),
    ("k = 0", {"compression": {"codec": "topk", "ratio": 0.0}, "allreduce": {"algorithm": "flat"}}, 1, "compression.ratio", "(0, 1]"),
    ("k > 1", {"compression": {"codec": "topk", "ratio": 1.5}, "allreduce": {"algorithm": "flat"}}, 1, "compression.ratio", "(0, 1]"),
    ("layers % pp", {"parallel": {"pp": 2}, "model": {"num_layers": 3}}, 2, "model.num_layers", "multiple of parallel.pp=2"),
    ("heads % tp", {"parallel": {"tp": 4}}, 4, "model.num_attention_heads", "multiple of parallel.tp=4"),
    ("hidden % heads", {"model": {"num_attention_heads": 3}}, 1, "model.num_attention_heads", "hidden_size=64"),
    ("vocab multiple", {"model": {"vocab_pad_multiple": 0}}, 1, "model.vocab_pad_multiple", "positive"),
    ("missing data file", {"data": {"source": "amazon2014", "path": "/no/such/file.json.gz"}}, 1,
     "data.path", "existing file"),
    ("no data path", {"data": {"source": "amazon2023"}}, 1, "data.path", "amazon2023"),
    ("unknown source", {"data": {"source": "netflix"}}, 1, "data.source", "ml100k"),
    ("backend", {"parallel": {"backend": "mpi"}}, 1, "parallel.backend", "gloo"),
    ("balance", {"parallel": {"balance": "magic"}}, 1, "parallel.balance", "adaptive"),
    ("vpp needs pp", {"parallel": {"vpp": 2}}, 1, "parallel.vpp", "pp >= 2"),
    ("interleaved pp2 batched p2p", {"parallel": {"pp": 2, "vpp": 2, "batch_p2p_comm": True, "micro_batch_size": 8},
                                         "model": {"num_layers": 4}}, 2, "parallel.batch_p2p_comm", "silently wrong"),
    ("vpp layers", {"parallel": {"pp": 2, "vpp": 2, "micro_batch_size": 8}, "model": {"num_layers": 2}}, 2,
     "parallel.vpp", "stage 0 has 1"),
    ("eval protocol", {"eval": {"protocols": ["full", "pop1000"]}}, 1, "eval.protocols", "uni100"),
    ("kcore", {"data": {"kcore": 1}}, 1, "data.kcore", ">= 3"),
    ("dropout", {"model": {"dropout": 1.0}}, 1, "model.dropout", "[0, 1)"),
]


@pytest.mark.parametrize("what, groups, world, field, allowed", CASES, ids=[c[0] for c in CASES])
def test_bad_config_message_names_field_value_and_allowed(what, groups, world, field, allowed):
    cfg = cfg_with(**groups)
    with pytest.raises(ConfigError) as info:
        validate(cfg, world)
    assert info.value.field == field, str(info.value)
    message = str(info.value)
    assert field in message and allowed in message and repr(info.value.value) in message


def test_interleaved_pp2_ok_without_batched_p2p():
    cfg = cfg_with(parallel={"pp": 2, "vpp": 2, "micro_batch_size": 8, "batch_p2p_comm": False},
                   model={"num_layers": 4})
    assert validate(cfg, 2).vpp == 2


def test_problems_lists_every_independent_error():
    cfg = cfg_with(compression={"codec": "zip"}, model={"dropout": 2.0}, data={"source": "x"})
    assert {p.field for p in problems(cfg, 1)} == {"compression.codec", "model.dropout", "data.source"}


def test_uneven_first_last_stage_counts_allowed():
    cfg = cfg_with(parallel={"pp": 4}, model={"num_layers": 6, "num_layers_in_first_pipeline_stage": 1,
                                              "num_layers_in_last_pipeline_stage": 1})
    assert validate(cfg, 4).pp == 4
    assert check_stage_layers(6, 4, 1, 1, 1) == [1, 2, 2, 1]
    assert check_stage_layers(5, 2, 1, 1, None) == [1, 4]
    assert check_stage_layers(5, 3, 1, None, 1) == [2, 2, 1]


UNEVEN = [(6, 4, 1, 1, 1), (6, 4, 1, 1, 2), (5, 2, 1, 1, None), (5, 2, 1, 5, None), (4, 3, 1, 2, 2),
          (8, 2, 2, 2, None), (8, 2, 2, 3, None), (7, 3, 1, None, 1), (6, 3, 1, 2, None), (4, 4, 1, None, None)]


@pytest.mark.parametrize("num_layers, pp, vpp, first, last", UNEVEN)
def test_stage_layer_rule_agrees_with_megatron_transformer_config(num_layers, pp, vpp, first, last):
    """Our check accepts exactly the uneven splits megatron-core 0.16.1's TransformerConfig accepts."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    try:
        TransformerConfig(num_layers=num_layers, hidden_size=8, num_attention_heads=2, pipeline_model_parallel_size=pp,
                          virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                          num_layers_in_first_pipeline_stage=first, num_layers_in_last_pipeline_stage=last,
                          pipeline_dtype=__import__("torch").float32)
        megatron_ok = True
    except (ValueError, AssertionError):
        megatron_ok = False
    try:
        check_stage_layers(num_layers, pp, vpp, first, last)
        ours_ok = True
    except ConfigError:
        ours_ok = False
    assert ours_ok == megatron_ok


def test_cli_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "jobs.preflight", "--world-size", "2", "parallel.pp=2"],
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert '"name": "tp1-pp2-dp1"' in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "jobs.preflight", "--world-size", "2", "parallel.tp=2",
                          "model.num_attention_heads=3", "model.hidden_size=63"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert "model.num_attention_heads" in bad.stderr and "parallel.tp=2" in bad.stderr
