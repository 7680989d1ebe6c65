"""The SASRec-style next-item recommender on megatron-core's GPTModel (local layer spec).

Item ids are the tokens (0 = padding, 1..num_items real items, vocab padded to a multiple of
`vocab_pad_multiple * tp`), learned absolute positions, causal self-attention (optionally also masking
left-padding keys), tied input/output item embedding, and megatron's vocab-parallel cross entropy.
`build_chunks` returns this rank's model chunks (one per virtual pipeline stage) initialised
layout-independently (see `hybridrec.model.params`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hybridrec.config.model import ModelConfig
from hybridrec.errors import ConfigError
from hybridrec.model import params as P


def padded_vocab_size(num_items: int, pad_multiple: int, tp: int) -> int:
    """Items + padding id, rounded up to a multiple of pad_multiple * tp."""
    if num_items < 1:
        raise ConfigError("data.num_items", num_items, ">= 1")
    if pad_multiple < 1:
        raise ConfigError("model.vocab_pad_multiple", pad_multiple, ">= 1")
    multiple = pad_multiple * tp
    return -(-(num_items + 1) // multiple) * multiple


@dataclass(frozen=True)
class ModelShape:
    """What fixes the parameter shapes of a run besides the model config."""

    vocab_size: int
    max_seq_len: int
    num_items: int


def transformer_config(cfg: ModelConfig, tp: int, pp: int, vpp: int, device: str,
                       batch_p2p_comm: bool | None = None, **extra: Any):
    """megatron TransformerConfig for this model and layout (fusions off; CPU init on CPU).

    batch_p2p_comm None = auto: off for interleaved schedules (silently wrong at pp=2, NOTES trap).
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError("model.num_attention_heads", cfg.num_attention_heads,
                          f"a divisor of model.hidden_size={cfg.hidden_size}")
    if cfg.num_attention_heads % tp:
        raise ConfigError("parallel.tp", tp, f"a divisor of model.num_attention_heads={cfg.num_attention_heads}")
    interleaved = vpp > 1
    if batch_p2p_comm is None:
        batch_p2p_comm = not interleaved
    elif batch_p2p_comm and interleaved and pp == 2:
        raise ConfigError("parallel.batch_p2p_comm", batch_p2p_comm,
                          "false or null with interleaving at pp=2 (megatron swaps activations and gradients)")
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        ffn_hidden_size=cfg.ffn_hidden_size,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        init_method_std=cfg.init_std,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if interleaved else None,
        num_layers_in_first_pipeline_stage=cfg.num_layers_in_first_pipeline_stage if pp > 1 else None,
        num_layers_in_last_pipeline_stage=cfg.num_layers_in_last_pipeline_stage if pp > 1 else None,
        pipeline_dtype=torch.float32,
        params_dtype=torch.float32,
        use_cpu_initialization=device == "cpu",
        batch_p2p_comm=batch_p2p_comm,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        sequence_parallel=False,
        **extra,
    )


def build_chunks(cfg: ModelConfig, shape: ModelShape, tconfig: Any, device: torch.device,
                 item_tokens: Any = None) -> list[torch.nn.Module]:
    """This rank's GPTModel chunks (one per virtual stage), with layout-independent initial weights.

    Requires megatron's parallel_state to be initialised for the layout in `tconfig`. With
    `cfg.item_repr != "id"` the chunks fuse item text (`item_tokens`: ProcessedData.item_tokens) into
    the item table (`hybridrec.model.item_text`).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    vpp = tconfig.virtual_pipeline_model_parallel_size
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    model_class, extra = GPTModel, {}
    if cfg.item_repr != "id":  # item text (issue 10): a GPTModel subclass, see hybridrec.model.item_text
        from hybridrec.model import item_text

        model_class = item_text.item_text_model_class()
        extra = {"item_text": item_text.make_spec(cfg, shape.vocab_size, item_tokens, tp_size)}
    chunks = []
    for stage in range(vpp or 1):
        kwargs = {"vp_stage": stage} if vpp else {}
        chunk = model_class(
            config=tconfig,
            transformer_layer_spec=get_gpt_layer_local_spec(),
            vocab_size=shape.vocab_size,
            max_sequence_length=shape.max_seq_len,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=not vpp, **kwargs),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=not vpp, **kwargs),
            parallel_output=True,
            share_embeddings_and_output_weights=True,
            position_embedding_type="learned_absolute",
            **kwargs,
            **extra,
        )
        infos = P.param_infos(chunk, tp_size, tp_rank, tied_output=True)
        P.initialize_chunk(chunk, infos, cfg.init_std, cfg.init_seed)
        chunk.to(device)
        chunk.hybridrec_param_infos = infos  # type: ignore[attr-defined]
        chunks.append(chunk)
    return chunks


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside a megatron DDP (or other `.module`) wrapper."""
    while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
        chunk = chunk.module
    return chunk


def attention_mask(inputs: torch.Tensor, mask_padding_keys: bool) -> torch.Tensor:
    """[b, 1, s, s] boolean mask, True = may NOT attend: future positions, and padding keys if asked."""
    seq = inputs.shape[1]
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=inputs.device), diagonal=1)
    mask = future.view(1, 1, seq, seq).expand(inputs.shape[0], 1, seq, seq)
    if mask_padding_keys:
        keys = (inputs == 0).view(inputs.shape[0], 1, 1, seq)
        # a query never masks itself, so all-padding rows stay finite (their loss is masked anyway)
        diagonal = torch.eye(seq, dtype=torch.bool, device=inputs.device).view(1, 1, seq, seq)
        mask = mask | (keys & ~diagonal)
    return mask


def position_ids(inputs: torch.Tensor) -> torch.Tensor:
    return torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0).expand_as(inputs)
