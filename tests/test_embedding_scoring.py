"""Tied output scoring against the row-sharded table on 4 gloo processes (E = 2: two sharding groups):
the distributed softmax cross entropy gives torch's cross entropy over the full vocabulary (loss,
hidden gradient, table-row gradient with the 1/E convention, extra-row gradient), and the per-shard
ranking counts equal counting on the unsharded scores; plus the preflight refusals of the job
combinations the 2D table does not support, each naming its field."""

from __future__ import annotations

import pytest
import torch

from hybridrec.distributed.spawn import run_ranks

NUM_ITEMS, VOCAB, DIM, N = 13, 16, 5, 6  # ids 0 and 14, 15 are extra rows; 13 item rows


def _full_weight() -> torch.Tensor:
    return torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(7))


def _rank_rows(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(50 + rank)
    hidden = torch.randn(N, DIM, generator=gen)
    labels = torch.randint(0, VOCAB, (N,), generator=gen)
    labels[0] = 0  # an extra (padding) target
    weights = torch.rand(N, generator=gen)  # upstream gradient per row
    return hidden, labels, weights


def _scoring_ranks(rank: int, world: int) -> dict:
    from types import SimpleNamespace

    from hybridrec.embedding.trainer_table import ItemVocab, TrainerTable

    cfg = SimpleNamespace(group_size=2, placement="contiguous", row_sharding="modulo", replica_sync="grad",
                          optimizer="rowwise_adagrad", lr=0.1, eps=1e-8, momentum_scale=0.0, dedup=True, init_std=0.02)
    train = SimpleNamespace(lr=1e-3, weight_decay=0.0)
    table = TrainerTable(cfg, train, ItemVocab(NUM_ITEMS, VOCAB), DIM, rank, world)
    full = _full_weight()
    rows = torch.from_numpy(table.lookup.global_rows()) + 1
    with torch.no_grad():
        table.weight.copy_(full[rows])
    extra = full[table.vocab.extra_ids()].clone().requires_grad_(True)
    hidden, labels, weights = _rank_rows(rank)
    hidden = hidden.clone().requires_grad_(True)
    loss = table.loss(hidden, labels, extra)
    (loss * weights).sum().backward()
    targets = torch.randint(1, NUM_ITEMS + 1, (N,), generator=torch.Generator().manual_seed(rank))
    cands = torch.randint(1, NUM_ITEMS + 1, (N, 4), generator=torch.Generator().manual_seed(9 + rank))
    counts = table.count_above(hidden.detach(), targets, extra.detach(), {"full": None, "s": cands}, None)
    return {"loss": loss.detach(), "grad_hidden": hidden.grad, "rows": rows, "grad_rows": table.grad_buffer.clone(),
            "grad_extra": extra.grad, "counts": counts, "targets": targets, "cands": cands,
            "sharding_group": table.groups.sharding_group_of(rank)}


def test_sharded_softmax_ce_and_counts_equal_the_unsharded_computation() -> None:
    out = run_ranks(_scoring_ranks, 4, timeout_s=120)
    full = _full_weight().requires_grad_(True)
    for rank, got in enumerate(out):
        hidden, labels, weights = _rank_rows(rank)
        hidden.requires_grad_(True)
        ref = torch.nn.functional.cross_entropy(hidden @ full.t(), labels, reduction="none")
        assert torch.allclose(got["loss"], ref.detach(), rtol=1e-5, atol=1e-6)
        (grad_hidden,) = torch.autograd.grad((ref * weights).sum(), hidden)
        assert torch.allclose(got["grad_hidden"], grad_hidden, rtol=1e-5, atol=1e-6)
        scores = hidden.detach() @ full.detach().t()
        target = scores.gather(1, got["targets"].unsqueeze(1))
        items = torch.zeros(VOCAB, dtype=torch.bool)
        items[1:NUM_ITEMS + 1] = True
        above_full = ((scores >= target) & items).sum(1) - 1  # the target itself is not counted
        above_sampled = (scores.gather(1, got["cands"]) >= target).sum(1)
        assert torch.equal(got["counts"], torch.stack([above_full, above_sampled], 1))
    # table rows: (1/E) x the gradient from the rows of the rank's sharding group; extra rows on shard 0 only
    for rank, got in enumerate(out):
        full.grad = None
        for member in got["sharding_group"]:
            hidden, labels, weights = _rank_rows(member)
            ((torch.nn.functional.cross_entropy(hidden @ full.t(), labels, reduction="none") * weights).sum()).backward()
        assert torch.allclose(got["grad_rows"], full.grad[got["rows"]] / 2, rtol=1e-5, atol=1e-6)
        extra_ids = torch.tensor([0, 14, 15])
        if got["sharding_group"].index(rank) == 0:
            assert torch.allclose(got["grad_extra"], full.grad[extra_ids], rtol=1e-5, atol=1e-6)
        else:
            assert got["grad_extra"] is None or float(got["grad_extra"].abs().max()) == 0.0


@pytest.mark.parametrize("override, field", [
    ({"pp": 2}, "parallel.pp"), ({"vpp": 2}, "parallel.vpp"), ({"item_repr": "text"}, "model.item_repr"),
    ({"mode": "local_sgd"}, "allreduce.mode"),
])
def test_preflight_names_each_unsupported_combination_with_the_2d_table(override: dict, field: str) -> None:
    from hybridrec.config import RunConfig
    from hybridrec.embedding.groups import job_refusals

    cfg = RunConfig()
    cfg.embedding.enabled = True
    for key, value in override.items():
        part = cfg.model if key == "item_repr" else cfg.allreduce if key == "mode" else cfg.parallel
        setattr(part, key, value)
    fields = [err.field for err in job_refusals(cfg)]
    assert fields == [field]
    assert job_refusals(RunConfig()) == [] or not RunConfig().embedding.enabled


def test_tp_with_the_2d_table_passes_preflight_and_the_table_world_is_dp() -> None:
    from hybridrec.config import RunConfig
    from hybridrec.errors import ConfigError
    from hybridrec.preflight import problems

    cfg = RunConfig()
    cfg.embedding.enabled, cfg.embedding.group_size, cfg.parallel.tp = True, 2, 2
    assert problems(cfg, 4) == []  # tp2 x dp2: E = 2 divides dp = 2
    cfg.embedding.group_size = 4  # E must divide dp (2), not the world (4)
    errs = problems(cfg, 4)
    assert [e.field for e in errs] == ["embedding.group_size"] and isinstance(errs[0], ConfigError)
    assert "world size 2" in str(errs[0])


def test_across_tp_gives_each_tp_index_its_own_copy_of_the_groups() -> None:
    from hybridrec.config import RunConfig
    from hybridrec.distributed.layout import ParallelLayout
    from hybridrec.embedding.groups import EmbeddingGroups, across_tp

    groups = EmbeddingGroups.build(4, 2)  # dp = 4, E = 2
    assert across_tp(groups.sharding_groups(), 1) == [[0, 1], [2, 3]]
    got = across_tp(groups.sharding_groups(), 2)
    assert got == [[0, 2], [4, 6], [1, 3], [5, 7]]
    par = RunConfig().parallel
    par.tp, par.dp = 2, 4
    layout = ParallelLayout.build(par, 8, 256)
    for group in got:  # every group holds one tp index and distinct dp ranks, in megatron's rank order
        coords = [layout.coords(r) for r in group]
        assert len({c.tp for c in coords}) == 1 and [c.dp for c in coords] == sorted({c.dp for c in coords})
    assert sorted(r for g in across_tp(groups.replica_groups(), 2) for r in g) == list(range(8))


def _whole_extra_rows_worker(rank: int, world: int) -> None:
    from megatron.core import parallel_state as ps

    from hybridrec.distributed import backend
    from hybridrec.model.sharded_output import padded_extra_rows, whole_extra_rows

    backend.cpu().prepare()  # megatron's CPU patches: its gather allocates on torch.cuda.current_device()
    ps.initialize_model_parallel(tensor_model_parallel_size=2)
    try:
        full = torch.arange(padded_extra_rows(3, 2) * 2, dtype=torch.float32).reshape(4, 2)  # 3 rows + 1 pad
        weight = torch.nn.Parameter(full.chunk(2)[rank].clone())
        scale = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # the same loss on both tp ranks
        rows = whole_extra_rows(weight, 3, 2)
        assert torch.equal(rows, full[:3])
        (rows * scale).sum().backward()
        expected = torch.cat([scale, torch.zeros(1, 2)]).chunk(2)[rank]  # the slice, not tp x the slice
        assert torch.equal(weight.grad, expected), (rank, weight.grad, expected)
    finally:
        ps.destroy_model_parallel()


def test_whole_extra_rows_under_tp_gathers_the_slices_and_splits_the_gradient_back() -> None:
    from hybridrec.distributed.spawn import run_ranks

    run_ranks(_whole_extra_rows_worker, 2, timeout_s=120, start_method="spawn")  # forked after earlier tests: SIGSEGV
