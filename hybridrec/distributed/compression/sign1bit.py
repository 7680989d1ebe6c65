"""1-bit sign compression: one bit per element (packed 8 per byte) plus one fp32 scale per chunk of
`chunk_size` elements (the chunk's mean magnitude). Wire: ceil(n/8) + 4*ceil(n/chunk) bytes, i.e.
3.125% + 0.1% of dense fp32 at chunk 1024. Use with error feedback."""

from __future__ import annotations

from typing import Any

import torch

from hybridrec.distributed.compression.base import Payload, ceil_div
from hybridrec.errors import ConfigError

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def _bit_weights(like: torch.Tensor) -> torch.Tensor:
    """The bit weights on `like`'s device (8 bytes; `new_tensor` keeps them off the host on GPU runs)."""
    return like.new_tensor(_BIT_WEIGHTS, dtype=torch.uint8)


class SignCodec:
    name = "sign1bit"
    lossy = True

    def __init__(self, chunk_size: int = 1024):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError("compression.chunk_size", chunk_size,
                              "a positive number of elements per fp32 scale with compression.codec=sign1bit")
        self.chunk_size = chunk_size

    @classmethod
    def from_config(cls, cfg: Any) -> SignCodec:
        return cls(cfg.chunk_size)

    def encode(self, tensor: torch.Tensor, state: dict[str, Any]) -> Payload:
        flat = tensor.reshape(-1).float()
        n = flat.numel()
        chunks = ceil_div(n, self.chunk_size)
        padded = flat.new_zeros(chunks * self.chunk_size)
        padded[:n] = flat
        counts = flat.new_full((chunks,), float(self.chunk_size))
        if chunks:
            counts[-1] = n - (chunks - 1) * self.chunk_size
        scales = padded.view(chunks, self.chunk_size).abs().sum(dim=1) / counts
        bits = flat.new_zeros(ceil_div(n, 8) * 8, dtype=torch.uint8)
        bits[:n] = (flat >= 0).to(torch.uint8)
        packed = (bits.view(-1, 8) * _bit_weights(flat)).sum(dim=1, dtype=torch.int32).to(torch.uint8)
        return Payload((packed, scales), n)

    def decode(self, payload: Payload) -> torch.Tensor:
        packed, scales = payload.parts
        n = payload.numel
        bits = (packed.view(-1, 1) & _bit_weights(packed)).ne(0).view(-1)[:n]
        signs = bits.to(torch.float32) * 2.0 - 1.0
        per_element = scales.float().repeat_interleave(self.chunk_size)[:n]
        return signs * per_element

    def wire_bytes(self, payload: Payload) -> int:
        return payload.parts[0].numel() + payload.parts[1].numel() * 4

    def part_specs(self, numel: int) -> list[tuple[torch.dtype, int]]:
        return [(torch.uint8, ceil_div(numel, 8)), (torch.float32, ceil_div(numel, self.chunk_size))]
