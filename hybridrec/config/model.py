"""Schema of the `model/` config group: the SASRec-style megatron GPT over item IDs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 2
    ffn_hidden_size: int = 256
    # hidden dropout: embeddings, attention and MLP outputs (0 for layout-equivalence runs)
    dropout: float = 0.1
    # dropout of the attention probabilities; null = dropout
    attention_dropout: float | None = None
    # vocab (items + padding) is padded to a multiple of this times tp
    vocab_pad_multiple: int = 128
    # id | text | text+id (item representation; text needs item metadata)
    item_repr: str = "id"
    # text+id only: sum (id row + text encoding) | concat (Linear([id row ; text encoding]))
    item_fusion: str = "sum"
    # pooling of an item's token embeddings: mean | transformer (item_text_layers pre-norm layers, then mean)
    item_text_pool: str = "mean"
    item_text_layers: int = 1
    # std of the normal init of weight matrices and embeddings (biases 0, norms 1)
    init_std: float = 0.02
    # seed of the layout-independent init (each parameter from a generator seeded by its global name)
    init_seed: int = 0
    # uneven pipeline stages (megatron's num_layers_in_first/last_pipeline_stage); null = even split
    num_layers_in_first_pipeline_stage: int | None = None
    num_layers_in_last_pipeline_stage: int | None = None
    # mask attention to left-padding positions (as SASRec's timeline mask does)
    mask_padding_keys: bool = True
