"""Identity codec: dense fp32 on the wire."""

from __future__ import annotations

from typing import Any

import torch

from hybridrec.distributed.compression.base import Payload


class NoneCodec:
    name = "none"
    lossy = False

    def encode(self, tensor: torch.Tensor, state: dict[str, Any]) -> Payload:
        return Payload((tensor.float().reshape(-1),), tensor.numel())

    def decode(self, payload: Payload) -> torch.Tensor:
        return payload.parts[0].float()

    def wire_bytes(self, payload: Payload) -> int:
        return payload.parts[0].numel() * 4

    def part_specs(self, numel: int) -> list[tuple[torch.dtype, int]]:
        return [(torch.float32, numel)]
