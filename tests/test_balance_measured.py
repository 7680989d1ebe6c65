"""Balancing on measured times of the real megatron model: a recommender with a large item vocabulary
(heavy output layer + loss on the last stage) is balanced better than the even split."""

from __future__ import annotations

import pytest
import torch

from hybridrec.config.model import ModelConfig
from hybridrec.train import profile as P
from hybridrec.train.balance import balanced_partition, imbalance, uniform_partition

VOCAB, SEQ, MBS, HIDDEN = 16384, 20, 8, 64


@pytest.fixture  # per test: megatron's groups must be gone before plan_adaptive builds its own
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = ModelConfig(hidden_size=HIDDEN, num_layers=8, num_attention_heads=2, ffn_hidden_size=256, dropout=0.0)
    with P.single_process_megatron():
        yield P.build_gpt(P.transformer_config(cfg), VOCAB, SEQ)
    torch.set_num_threads(threads)


def test_piece_memory_is_counted_exactly(model):
    costs = P.profile_pieces(model, P.ProfileShape(VOCAB, SEQ, MBS), repeats=1)
    assert costs.num_layers == 8
    assert costs.embedding.param_bytes == (VOCAB * HIDDEN + SEQ * HIDDEN) * 4
    # the output piece keeps at least the [s, b, vocab] fp32 logits for backward
    assert costs.output.activation_bytes >= SEQ * MBS * VOCAB * 4
    assert costs.embedding.activation_bytes < costs.layers[0].activation_bytes < costs.output.activation_bytes
    assert all(p.time_s > 0 for p in (costs.embedding, *costs.layers, costs.output))


def test_balanced_partition_is_closer_to_one_on_measured_stage_times(model):
    shape = P.ProfileShape(VOCAB, SEQ, MBS)
    costs = P.profile_pieces(model, shape, repeats=3)
    uniform, balanced = uniform_partition(costs, 2), balanced_partition(costs, 2)
    assert balanced.layers_per_stage[0] > balanced.layers_per_stage[1], balanced.reason
    measured_uniform, measured_balanced = P.measure_partitions(
        model, shape, [list(uniform.layers_per_stage), list(balanced.layers_per_stage)], repeats=5)
    print(f"uniform {uniform.layers_per_stage} measured {measured_uniform} max/mean {imbalance(measured_uniform):.3f}")
    print(f"balanced {balanced.layers_per_stage} measured {measured_balanced} "
          f"max/mean {imbalance(measured_balanced):.3f}; {balanced.reason}")
    assert imbalance(measured_balanced) - 1 < imbalance(measured_uniform) - 1
    assert max(measured_balanced) < max(measured_uniform)


@pytest.mark.slow
def test_adaptive_plan_for_a_job_single_process():
    """What main.py calls for parallel.balance=adaptive: profile, split, micro-batch choice, applied config."""
    from dataclasses import replace

    from hybridrec.config.parallel import ParallelConfig
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.preflight import check_stage_layers

    pcfg = ParallelConfig(pp=2, micro_batch_size=8, balance="adaptive", dynamic_micro_batch=True, profile_repeats=1)
    layout = ParallelLayout.build(pcfg, 2, 32)
    mcfg = ModelConfig(hidden_size=32, num_layers=4, num_attention_heads=2, ffn_hidden_size=64, dropout=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plan = P.plan_adaptive(mcfg, pcfg, layout, vocab_size=8192, seq_len=10)
    finally:
        torch.set_num_threads(threads)
    counts = list(plan.partition.layers_per_stage)
    applied = plan.model_config(mcfg)
    assert check_stage_layers(4, 2, 1, applied.num_layers_in_first_pipeline_stage,
                              applied.num_layers_in_last_pipeline_stage) == counts
    # dp = 1: the whole global batch of 32 goes through the pipeline
    assert plan.micro is not None and 32 % plan.micro.micro_batch_size == 0
    assert plan.micro.micro_batch_size * plan.micro.num_micro_batches == 32
    assert "pipeline partition" in plan.describe() and "bubble" in plan.describe()
    # the chosen micro-batch size gives a valid layout
    assert ParallelLayout.build(replace(pcfg, micro_batch_size=plan.micro.micro_batch_size), 2, 32).pp == 2
