"""Half-precision codecs: fp16 and bf16 casts (2 bytes per element on the wire)."""

from __future__ import annotations

from typing import Any

import torch

from hybridrec.distributed.compression.base import Payload


class CastCodec:
    lossy = True

    def __init__(self, dtype: torch.dtype, name: str):
        self.dtype, self.name = dtype, name

    def encode(self, tensor: torch.Tensor, state: dict[str, Any]) -> Payload:
        return Payload((tensor.reshape(-1).to(self.dtype),), tensor.numel())

    def decode(self, payload: Payload) -> torch.Tensor:
        return payload.parts[0].float()

    def wire_bytes(self, payload: Payload) -> int:
        return payload.parts[0].numel() * 2

    def part_specs(self, numel: int) -> list[tuple[torch.dtype, int]]:
        return [(self.dtype, numel)]
