"""Top-k sparsification: the k = ceil(ratio * n) largest-magnitude entries as fp32 values plus
int32 indices, 8k bytes on the wire (2 * ratio of dense fp32). Use with error feedback."""

from __future__ import annotations

from typing import Any

import torch

from hybridrec.distributed.compression.base import Payload, topk_count
from hybridrec.errors import ConfigError


class TopKCodec:
    name = "topk"
    lossy = True

    def __init__(self, ratio: float):
        if not 0.0 < ratio <= 1.0:
            raise ConfigError("compression.ratio", ratio, "a top-k ratio in (0, 1] with compression.codec=topk")
        self.ratio = ratio

    @classmethod
    def from_config(cls, cfg: Any) -> TopKCodec:
        return cls(cfg.ratio)

    def encode(self, tensor: torch.Tensor, state: dict[str, Any]) -> Payload:
        flat = tensor.reshape(-1).float()
        k = topk_count(flat.numel(), self.ratio)
        indices = torch.topk(flat.abs(), k, sorted=False).indices
        return Payload((flat[indices], indices.to(torch.int32)), flat.numel())

    def decode(self, payload: Payload) -> torch.Tensor:
        values, indices = payload.parts
        dense = values.new_zeros(payload.numel, dtype=torch.float32)
        dense.index_add_(0, indices.long(), values.float())
        return dense

    def wire_bytes(self, payload: Payload) -> int:
        return payload.parts[0].numel() * 4 + payload.parts[1].numel() * 4

    def part_specs(self, numel: int) -> list[tuple[torch.dtype, int]]:
        k = topk_count(numel, self.ratio)
        return [(torch.float32, k), (torch.int32, k)]
