"""Pure tests of the model's building blocks: vocab padding, layout-independent init, tp reassembly,
the attention mask, and the CPU backend's idempotence."""

from __future__ import annotations

import pytest
import torch

from hybridrec.errors import ConfigError
from hybridrec.model.params import ParamInfo, assemble_full, full_initial_value, tp_slice
from hybridrec.model.sasrec import attention_mask, padded_vocab_size


@pytest.mark.parametrize(("items", "multiple", "tp", "expected"), [
    (100, 128, 1, 128), (127, 128, 1, 128), (128, 128, 1, 256), (1682, 128, 1, 1792), (1682, 128, 2, 1792),
    (1900, 128, 1, 1920), (1900, 128, 2, 2048), (100, 64, 2, 128),
])
def test_vocab_is_items_plus_padding_rounded_to_multiple_times_tp(items, multiple, tp, expected) -> None:
    assert padded_vocab_size(items, multiple, tp) == expected
    assert expected % (multiple * tp) == 0 and expected >= items + 1


def test_vocab_refuses_empty_item_set() -> None:
    with pytest.raises(ConfigError, match="num_items"):
        padded_vocab_size(0, 128, 1)


def test_initial_value_depends_only_on_name_and_seed() -> None:
    a = full_initial_value("decoder.layers.3.mlp.linear_fc1.weight", (8, 4), 0.02, 0)
    b = full_initial_value("decoder.layers.3.mlp.linear_fc1.weight", (8, 4), 0.02, 0)
    c = full_initial_value("decoder.layers.2.mlp.linear_fc1.weight", (8, 4), 0.02, 0)
    d = full_initial_value("decoder.layers.3.mlp.linear_fc1.weight", (8, 4), 0.02, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert 0.005 < float(a.std()) < 0.05
    assert torch.equal(full_initial_value("decoder.final_layernorm.weight", (4,), 0.02, 0), torch.ones(4))
    assert torch.equal(full_initial_value("decoder.layers.0.mlp.linear_fc1.bias", (4,), 0.02, 0), torch.zeros(4))


@pytest.mark.parametrize("dim", [0, 1])
def test_tp_slices_reassemble_to_the_full_tensor(dim: int) -> None:
    full = torch.arange(48.0).reshape(6, 8)
    shards = []
    for rank in range(2):
        info = ParamInfo("w", "w", dim, 2, rank, tuple(full.chunk(2, dim)[rank].shape))
        assert info.full_shape == (6, 8)
        shards.append((info, tp_slice(full, info)))
    replicated = ParamInfo("b", "b", None, 2, 1, (3,))
    shards.append((replicated, torch.ones(3)))
    shards.append(shards[0])  # a dp replica of rank 0's slice is ignored
    out = assemble_full(shards)
    assert torch.equal(out["w"], full) and torch.equal(out["b"], torch.ones(3))


def test_reassembly_refuses_missing_tp_slice() -> None:
    info = ParamInfo("w", "w", 0, 2, 1, (3, 8))
    with pytest.raises(ValueError, match="incomplete"):
        assemble_full([(info, torch.zeros(3, 8))])


def test_attention_mask_is_causal_and_hides_padding_keys() -> None:
    inputs = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = attention_mask(inputs, mask_padding_keys=True)
    assert mask.shape == (2, 1, 4, 4)
    allowed = ~mask[0, 0]
    # position 3 (item 6) attends to items 5 and 6 only; padding queries attend to themselves only
    assert allowed[3].tolist() == [False, False, True, True]
    assert allowed[0].tolist() == [True, False, False, False]
    assert (~mask[1, 0]).tolist() == torch.tril(torch.ones(4, 4, dtype=torch.bool)).tolist()
    assert torch.equal(attention_mask(inputs, mask_padding_keys=False)[0, 0], mask[1, 0])


def test_cpu_backend_setup_is_idempotent_and_chooses_gloo() -> None:
    from hybridrec.distributed import backend

    assert backend.setup("cpu") == "cpu"
    patched_zeros = torch.zeros
    assert backend.setup("cpu") == "cpu"
    assert torch.zeros is patched_zeros  # not wrapped twice
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.cuda.current_device() == torch.device("cpu")
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64
    assert backend.process_group_backend("auto") == "gloo"
    with pytest.raises(ConfigError, match="parallel.backend"):
        backend.process_group_backend("mpi")


def test_transformer_config_guards_interleaved_batched_p2p_and_passes_stage_layers() -> None:
    from hybridrec.config.model import ModelConfig
    from hybridrec.model.sasrec import transformer_config

    cfg = ModelConfig(num_layers=6, num_attention_heads=2, hidden_size=32, ffn_hidden_size=64,
                      num_layers_in_first_pipeline_stage=2, num_layers_in_last_pipeline_stage=4)
    with pytest.raises(ConfigError, match="batch_p2p_comm"):
        transformer_config(cfg, 1, 2, 2, "cpu", batch_p2p_comm=True)
    plain = transformer_config(cfg, 1, 2, 1, "cpu")
    assert plain.batch_p2p_comm is True
    assert plain.num_layers_in_first_pipeline_stage == 2 and plain.num_layers_in_last_pipeline_stage == 4
    with pytest.raises(ConfigError, match="parallel.tp"):
        transformer_config(cfg, 4, 1, 1, "cpu")
