"""Item text in the recommender: a text encoder over each item's tokens fused with the item's ID
embedding into the item table used for the input lookup *and* for scoring (tied output).

`model.item_repr`: `id` (today's GPTModel, untouched), `text` (item = its text encoding) or `text+id`
(`model.item_fusion`: `sum` = id row + text encoding; `concat` = Linear([id row ; text encoding])).
The text encoder: token embeddings (megatron `VocabParallelEmbedding` over the text vocabulary, split
over tp ranks), pooled per item by the mean over its real tokens (`model.item_text_pool=mean`) or by a
small pre-norm transformer over the tokens followed by the masked mean (`transformer`,
`model.item_text_layers` layers).

How it stays exact under the hybrid layouts:
- tp: every tp rank encodes ALL items (the vocab-parallel lookup sums token embeddings over the text
  vocab shards, mean pooling happens before that all-reduce), then `copy_to_tensor_model_parallel_region`
  (identity forward, all-reduce backward) and keeps the rows of its own item-vocab shard. So the fused
  table is sharded exactly like the item vocabulary, scoring stays vocab-parallel, and the replicated
  encoder parameters get the full (identical) gradient on every tp rank. The concat projection acts on
  local rows, so its weight enters through the same copy region (gradients summed over tp).
- pp: every chunk holds an encoder replica (initialised from the same global names); the first stage
  uses it for the input lookup, the last stage for scoring, middle stages not at all. The replicas'
  gradients are summed over the pipeline group by megatron's own finalize_model_grads
  (`config.has_cond_embedder` + `param.pipeline_parallel`); every replica but the first stage's is
  marked `shared`, so gradient norms / clipping count the encoder once.
- hooks, no copied megatron code: a forward hook replaces the word-embedding lookup's output with the
  lookup of the fused table (megatron then adds positions, transposes and applies dropout as usual), and a
  forward pre-hook passes the fused table as the output layer's `weight`.
- evaluation: in eval mode without grad the table is computed once and cached until the next
  `train()`/`eval()` switch, i.e. once per evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hybridrec.errors import ConfigError

ITEM_REPRS = ("id", "text", "text+id")
ITEM_FUSIONS = ("sum", "concat")
ITEM_TEXT_POOLS = ("mean", "transformer")


@dataclass(frozen=True)
class ItemTextSpec:
    """What the text part of the model needs besides megatron's config."""

    item_repr: str
    fusion: str
    pool: str
    text_layers: int
    text_heads: int
    text_vocab_size: int  # padded to a multiple of vocab_pad_multiple * tp
    token_ids: np.ndarray  # int64 (vocab_size, max_tokens): rows beyond num_items are 0 (no text)


def check_item_text_config(cfg: Any, item_text_enabled: bool | None = None) -> None:
    """ConfigError for an unusable item representation (model config; data.item_text if known)."""
    if cfg.item_repr not in ITEM_REPRS:
        raise ConfigError("model.item_repr", cfg.item_repr, f"one of {list(ITEM_REPRS)}")
    if cfg.item_repr == "id":
        return
    if cfg.item_fusion not in ITEM_FUSIONS:
        raise ConfigError("model.item_fusion", cfg.item_fusion, f"one of {list(ITEM_FUSIONS)}")
    if cfg.item_text_pool not in ITEM_TEXT_POOLS:
        raise ConfigError("model.item_text_pool", cfg.item_text_pool, f"one of {list(ITEM_TEXT_POOLS)}")
    if not isinstance(cfg.item_text_layers, int) or cfg.item_text_layers < 1:
        raise ConfigError("model.item_text_layers", cfg.item_text_layers, "a positive integer")
    if item_text_enabled is False:
        raise ConfigError("data.item_text", False, f"true when model.item_repr={cfg.item_repr} (items need text)")


def make_spec(cfg: Any, vocab_size: int, item_tokens: Any, tp: int) -> ItemTextSpec:
    """The spec of a text/text+id model: item token ids padded to the item vocabulary."""
    check_item_text_config(cfg, item_text_enabled=item_tokens is not None)
    ids = np.asarray(item_tokens.token_ids, dtype=np.int64)
    if ids.shape[0] > vocab_size:
        raise ConfigError("data.item_tokens", ids.shape, f"at most {vocab_size} rows (the item vocabulary)")
    table = np.zeros((vocab_size, ids.shape[1]), dtype=np.int64)
    table[: ids.shape[0]] = ids
    multiple = cfg.vocab_pad_multiple * tp
    text_vocab = -(-int(item_tokens.vocab_size) // multiple) * multiple
    if table.max(initial=0) >= text_vocab:
        raise ConfigError("data.item_tokens", int(table.max()), f"token ids below vocab_size={item_tokens.vocab_size}")
    return ItemTextSpec(cfg.item_repr, cfg.item_fusion, cfg.item_text_pool, cfg.item_text_layers,
                        cfg.num_attention_heads, text_vocab, table)


class ItemTextEncoder(torch.nn.Module):
    """token ids (V, L) -> one vector per item (V, h), identical on every tp rank."""

    def __init__(self, spec: ItemTextSpec, config: Any):
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        super().__init__()
        hidden = config.hidden_size
        self.pool = spec.pool
        self.token_embedding = VocabParallelEmbedding(spec.text_vocab_size, hidden,
                                                      init_method=config.init_method, config=config)
        if spec.pool == "transformer":
            self.position_embedding = torch.nn.Embedding(spec.token_ids.shape[1], hidden)
            layer = torch.nn.TransformerEncoderLayer(hidden, spec.text_heads, dim_feedforward=4 * hidden,
                                                     dropout=0.0, batch_first=True, norm_first=True)
            self.layers = torch.nn.TransformerEncoder(layer, spec.text_layers, enable_nested_tensor=False)

    def _lookup_local(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of the ids in this rank's text-vocab shard (zeros for the others)."""
        emb = self.token_embedding
        outside = (ids < emb.vocab_start_index) | (ids >= emb.vocab_end_index)
        local = torch.where(outside, torch.zeros_like(ids), ids - emb.vocab_start_index)
        return torch.nn.functional.embedding(local, emb.weight) * (~outside).unsqueeze(-1).to(emb.weight.dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

        real = token_ids > 0
        counts = real.sum(dim=1, keepdim=True).clamp(min=1).to(self.token_embedding.weight.dtype)
        if self.pool == "mean":  # sum before the tp all-reduce: (V, h) crosses the wire, not (V, L, h)
            local = (self._lookup_local(token_ids) * real.unsqueeze(-1)).sum(dim=1)
            return reduce_from_tensor_model_parallel_region(local) / counts
        tokens = reduce_from_tensor_model_parallel_region(self._lookup_local(token_ids))
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        # items without text: let them attend to their first (padding) token, then zero them below
        padding = ~real
        padding[:, 0] &= real.any(dim=1)
        hidden = self.layers(tokens + self.position_embedding(positions), src_key_padding_mask=padding)
        return (hidden * real.unsqueeze(-1)).sum(dim=1) / counts


def _megatron_gpt_model() -> type:
    from megatron.core.models.gpt.gpt_model import GPTModel

    return GPTModel


def item_text_model_class() -> type:
    """`ItemTextGPTModel` (defined lazily: importing megatron takes seconds)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _define_model_class(_megatron_gpt_model())
    return _MODEL_CLASS


_MODEL_CLASS: type | None = None


def _define_model_class(base: type) -> type:
    class ItemTextGPTModel(base):  # type: ignore[misc, valid-type]
        """megatron GPTModel whose item table (input lookup and tied output) is the fused item representation."""

        def __init__(self, *args: Any, item_text: ItemTextSpec, **kwargs: Any):
            from megatron.core import parallel_state as ps

            super().__init__(*args, **kwargs)
            config = self.config
            self.item_repr, self.item_fusion = item_text.item_repr, item_text.fusion
            self.item_text = ItemTextEncoder(item_text, config)
            if self.item_repr == "text+id" and self.item_fusion == "concat":
                self.item_fusion_proj = torch.nn.Linear(2 * config.hidden_size, config.hidden_size)
            self.register_buffer("item_token_ids", torch.from_numpy(item_text.token_ids), persistent=False)
            tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
            self._shard_rows = item_text.token_ids.shape[0] // tp_size
            self._shard_start = tp_rank * self._shard_rows
            if ps.get_pipeline_model_parallel_world_size() > 1:
                config.has_cond_embedder = True  # megatron sums `pipeline_parallel` params' grads over pp
                for param in self._text_parameters():
                    param.pipeline_parallel = True
                    if not self.pre_process:
                        param.shared = True  # counted once in grad norms (the first stage's replica)
            self._table: torch.Tensor | None = None
            self._eval_table: torch.Tensor | None = None
            if self.pre_process:
                self.embedding.word_embeddings.register_forward_hook(self._lookup_fused)
            if self.post_process:
                self.output_layer.register_forward_pre_hook(self._score_fused, with_kwargs=True)

        def _text_parameters(self) -> list[torch.nn.Parameter]:
            params = list(self.item_text.parameters())
            if hasattr(self, "item_fusion_proj"):
                params += list(self.item_fusion_proj.parameters())
            return params

        def _id_rows(self) -> torch.Tensor:
            return self.embedding.word_embeddings.weight if self.pre_process else self.output_layer.weight

        def item_table(self) -> torch.Tensor:
            """This rank's rows [start, start + V/tp) of the fused item table, (V/tp, h)."""
            from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

            text = copy_to_tensor_model_parallel_region(self.item_text(self.item_token_ids))
            text = text[self._shard_start:self._shard_start + self._shard_rows]
            if self.item_repr == "text":
                return text
            ids = self._id_rows()
            if self.item_fusion == "sum":
                return ids + text
            proj = self.item_fusion_proj  # replicated weight applied to local rows: grads summed over tp
            weight = copy_to_tensor_model_parallel_region(proj.weight)
            bias = copy_to_tensor_model_parallel_region(proj.bias)
            return torch.nn.functional.linear(torch.cat([ids, text], dim=1), weight, bias)

        def _current_table(self) -> torch.Tensor:
            if self.training or torch.is_grad_enabled():
                return self.item_table()
            if self._eval_table is None:  # once per evaluation (cleared by train()/eval())
                self._eval_table = self.item_table()
            return self._eval_table

        def train(self, mode: bool = True):
            self._eval_table = None
            return super().train(mode)

        def _lookup_fused(self, _module: Any, args: tuple, _output: torch.Tensor) -> torch.Tensor:
            """Vocab-parallel lookup of the fused table (replaces the ID lookup's output)."""
            from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

            ids, table = args[0], self._table
            outside = (ids < self._shard_start) | (ids >= self._shard_start + self._shard_rows)
            local = torch.where(outside, torch.zeros_like(ids), ids - self._shard_start)
            rows = torch.nn.functional.embedding(local, table) * (~outside).unsqueeze(-1).to(table.dtype)
            return reduce_from_tensor_model_parallel_region(rows)

        def _score_fused(self, _module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "weight": self._table}

        def forward(self, *args: Any, **kwargs: Any):
            self._table = self._current_table() if (self.pre_process or self.post_process) else None
            try:
                return super().forward(*args, **kwargs)
            finally:
                self._table = None

    return ItemTextGPTModel
