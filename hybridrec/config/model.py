"""Schema of the `model/` config group: the SASRec-style megatron GPT over item IDs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 2
    ffn_hidden_size: int = 256
    dropout: float = 0.1
    # vocab (items + padding) is padded to a multiple of this times tp
    vocab_pad_multiple: int = 128
    # id | text | text+id (item representation; text needs item metadata)
    item_repr: str = "id"
