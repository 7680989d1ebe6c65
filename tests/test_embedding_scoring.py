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
    ({"tp": 2}, "parallel.tp"), ({"pp": 2}, "parallel.pp"), ({"item_repr": "text"}, "model.item_repr"),
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
