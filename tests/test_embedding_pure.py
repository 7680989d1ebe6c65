"""Pure parts of the 2D sparse-parallel embedding: groups, row sharding, byte theory, memory,
and row-wise AdaGrad against hand-computed updates (no processes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridrec.config.embedding import EmbeddingConfig
from hybridrec.embedding.exchange import exchange_bytes, plan_exchange
from hybridrec.embedding.groups import EmbeddingGroups, RowSharding, momentum_scale, validate_config
from hybridrec.embedding.memory import embedding_memory
from hybridrec.embedding.rowwise_adagrad import RowWiseAdagrad
from hybridrec.errors import ConfigError


@pytest.mark.parametrize("placement", ["contiguous", "strided"])
@pytest.mark.parametrize("world,e", [(4, 1), (4, 2), (4, 4), (8, 2), (8, 4), (6, 3)])
def test_groups_partition_world_both_ways(world, e, placement):
    groups = EmbeddingGroups.build(world, e, placement)
    shard, replica = groups.sharding_groups(), groups.replica_groups()
    assert len(shard) == world // e and all(len(g) == e for g in shard)
    assert len(replica) == e and all(len(g) == world // e for g in replica)
    assert sorted(r for g in shard for r in g) == list(range(world))
    assert sorted(r for g in replica for r in g) == list(range(world))
    for rank in range(world):
        assert set(groups.sharding_group_of(rank)) & set(groups.replica_group_of(rank)) == {rank}
        assert groups.sharding_group_of(rank)[groups.shard_rank(rank)] == rank
        assert groups.replica_group_of(rank)[groups.replica_index(rank)] == rank


def test_group_layouts_named_in_the_docs():
    assert EmbeddingGroups.build(4, 2).sharding_groups() == [[0, 1], [2, 3]]
    assert EmbeddingGroups.build(4, 2).replica_groups() == [[0, 2], [1, 3]]
    assert EmbeddingGroups.build(4, 2, "strided").sharding_groups() == [[0, 2], [1, 3]]
    assert EmbeddingGroups.build(4, 2, "strided").replica_groups() == [[0, 1], [2, 3]]
    assert EmbeddingGroups.build(4, 0).sharding_groups() == [[0, 1, 2, 3]]  # 0 = world
    assert EmbeddingGroups.build(4, 1).replica_groups() == [[0, 1, 2, 3]]


@pytest.mark.parametrize("world,e,placement,field", [
    (4, 3, "contiguous", "embedding.group_size"), (4, -1, "contiguous", "embedding.group_size"),
    (4, 8, "contiguous", "embedding.group_size"), (4, 2, "diagonal", "embedding.placement"),
    (0, 1, "contiguous", "world_size")])
def test_bad_groups_raise_config_error_naming_field(world, e, placement, field):
    with pytest.raises(ConfigError) as err:
        EmbeddingGroups.build(world, e, placement)
    assert err.value.field == field


def test_config_validation_and_auto_momentum_scale():
    cfg = EmbeddingConfig(enabled=True, group_size=2, replica_sync="weights")
    groups = validate_config(cfg, 8)
    assert momentum_scale(cfg, groups) == 4.0  # M = 8 / 2
    assert momentum_scale(EmbeddingConfig(group_size=2, replica_sync="grad"), groups) == 1.0
    assert momentum_scale(EmbeddingConfig(optimizer="rowwise_adagrad", replica_sync="weights"), groups) == 1.0
    assert momentum_scale(EmbeddingConfig(optimizer="adam", replica_sync="weights"), groups) == 1.0  # the trainer's Adam-equivalent setting
    for bad in ({"replica_sync": "x"}, {"optimizer": "sgd"}, {"row_sharding": "hash"}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            validate_config(EmbeddingConfig(**bad), 8)


@pytest.mark.parametrize("scheme", ["modulo", "contiguous"])
@pytest.mark.parametrize("rows,e", [(10, 4), (12, 3), (7, 1), (5, 8)])
def test_row_sharding_is_a_bijection(scheme, rows, e):
    sharding = RowSharding(rows, e, scheme)
    seen = []
    for shard in range(e):
        global_rows = sharding.global_rows(shard)
        assert len(global_rows) == sharding.shard_rows(shard)
        assert (sharding.owner(global_rows) == shard).all()
        assert (sharding.local_index(global_rows) == np.arange(len(global_rows))).all()
        seen.extend(global_rows.tolist())
    assert sorted(seen) == list(range(rows))
    assert sharding.max_shard_rows() == max(sharding.shard_rows(s) for s in range(e))


def test_modulo_spreads_a_popularity_ordered_head_contiguous_does_not():
    hot = np.arange(1000)  # ids in popularity order: the 1000 hottest of 1M rows
    modulo = np.bincount(RowSharding(1_000_000, 4, "modulo").owner(hot), minlength=4)
    blocks = np.bincount(RowSharding(1_000_000, 4, "contiguous").owner(hot), minlength=4)
    assert modulo.tolist() == [250, 250, 250, 250]
    assert blocks.tolist() == [1000, 0, 0, 0]


def test_exchange_plan_and_byte_theory():
    sharding = RowSharding(20, 2, "modulo")
    ids = torch.tensor([[3, 4, 3], [7, 8, 9]])
    plan = plan_exchange(ids, sharding)
    assert plan.send_counts.tolist() == [2, 3]  # owners: 4, 8 -> 0; 3, 7, 9 -> 1
    assert sorted(plan.send_ids[:2].tolist()) == [4, 8]
    unique = torch.empty_like(plan.send_ids)
    unique[plan.order] = plan.send_ids
    assert unique[plan.inverse].reshape(2, 3).tolist() == ids.tolist()
    # rank 0 of 2 sends 3 ids to rank 1 and serves the 4 ids rank 1 sends it
    theory = exchange_bytes([[2, 3], [4, 5]], me=0, dim=16, itemsize=4)
    assert (theory.counts, theory.ids, theory.embeddings, theory.gradients) == (8, 24, 256, 192)
    assert plan_exchange(ids, sharding, dedup=False).send_counts.tolist() == [2, 4]
    with pytest.raises(IndexError):
        plan_exchange(torch.tensor([20]), sharding)


def test_memory_accounting_full_sharding_vs_replication():
    full = embedding_memory(5_000_000, 64, 4, 4, batch_per_rank=128, ids_per_example=50)
    repl = embedding_memory(5_000_000, 64, 1, 4, batch_per_rank=128, ids_per_example=50)
    assert full.parameters == 1_250_000 * 64 * 4 and repl.parameters == 5_000_000 * 64 * 4
    assert full.optimizer_state == 1_250_000 * 4 and full.elementwise_adagrad_state == full.parameters
    n = 128 * 50
    assert full.alltoall_bytes_per_step == 3 * 8 + (n * 3 // 4) * (8 + 2 * 64 * 4)
    assert repl.alltoall_bytes_per_step == 0 and full.replica_sync == 0
    assert repl.replica_allreduce_bytes_per_step == 4 * n * 64 * 4
    two_d = embedding_memory(5_000_000, 64, 2, 4, batch_per_rank=128, ids_per_example=50)
    assert full.parameters < two_d.parameters < repl.parameters
    assert two_d.alltoall_bytes_per_step < full.alltoall_bytes_per_step


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32).clone()


def test_rowwise_adagrad_matches_hand_computed_update_and_leaves_other_rows_bitwise():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(5, 2))
    before, lr, eps = weight.detach().clone(), 0.1, 1e-8
    opt = RowWiseAdagrad([weight], lr=lr, eps=eps)
    state_before = _bits(opt.state[weight]["sum"])
    # row 1 twice (coalesced to [1, 3]) and row 3 once
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3, 1]]),
                                          torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 2.0]]), (5, 2))
    opt.step()
    # row 1: g = [1, 2], v = (1 + 4) / 2 = 2.5; row 3: g = [3, 4], v = (9 + 16) / 2 = 12.5
    assert opt.state[weight]["sum"].tolist() == [0.0, 2.5, 0.0, 12.5, 0.0]
    expect1 = before[1] - lr * torch.tensor([1.0, 2.0]) / math.sqrt(2.5 + eps)
    expect3 = before[3] - lr * torch.tensor([3.0, 4.0]) / math.sqrt(12.5 + eps)
    torch.testing.assert_close(weight[1].detach(), expect1, rtol=0, atol=1e-7)
    torch.testing.assert_close(weight[3].detach(), expect3, rtol=0, atol=1e-7)
    for row in (0, 2, 4):
        assert torch.equal(_bits(weight.detach()[row]), _bits(before[row]))
        assert torch.equal(_bits(opt.state[weight]["sum"])[row], state_before[row])
    # second step on row 3 only: v = 12.5 + (0 + 1) / 2 = 13.0
    w3, w1 = weight.detach()[3].clone(), _bits(weight.detach()[1])
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[3]]), torch.tensor([[0.0, 1.0]]), (5, 2))
    opt.step()
    assert opt.state[weight]["sum"][3].item() == 13.0
    torch.testing.assert_close(weight[3].detach(), w3 - lr * torch.tensor([0.0, 1.0]) / math.sqrt(13.0 + eps),
                               rtol=0, atol=1e-7)
    assert torch.equal(_bits(weight.detach()[1]), w1)


def test_momentum_scaled_rowwise_adagrad_divides_the_accumulator_by_c():
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    opt = RowWiseAdagrad([weight], lr=0.5, eps=1e-8, momentum_scale=4.0)
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.tensor([[2.0, 2.0]]), (3, 2))
    opt.step()
    # v = 4; step = 0.5 * 2 / sqrt(4 / 4 + 1e-8) = 1.0 (plain row-wise AdaGrad would step 0.5)
    torch.testing.assert_close(weight[2].detach(), torch.tensor([-1.0, -1.0]), rtol=0, atol=1e-7)
    assert torch.equal(weight.detach()[:2], torch.zeros(2, 2))
    with pytest.raises(ConfigError):
        RowWiseAdagrad([weight], momentum_scale=0.0)
