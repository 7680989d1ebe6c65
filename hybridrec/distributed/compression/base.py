"""The codec protocol (encode / decode / wire size), payload packing for transport, and error
feedback memory (GRACE's split: compressor = codec, memory = `encode_with_feedback`, communicator =
hybridrec.distributed.allreduce)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Payload:
    """What a codec puts on the wire: tensors (sent as raw bytes) plus metadata every rank can
    recompute from the input size alone (so it never travels)."""

    parts: tuple[torch.Tensor, ...]
    numel: int
    meta: dict[str, Any] = field(default_factory=dict)


class Codec(Protocol):
    """A gradient codec. `encode` may keep per-tensor state (e.g. PowerSGD factors) in `state`;
    error feedback is applied outside the codec (see `encode_with_feedback`)."""

    name: str
    lossy: bool

    def encode(self, tensor: torch.Tensor, state: dict[str, Any]) -> Payload: ...

    def decode(self, payload: Payload) -> torch.Tensor: ...

    def wire_bytes(self, payload: Payload) -> int: ...

    def part_specs(self, numel: int) -> list[tuple[torch.dtype, int]]:
        """(dtype, element count) of each payload part for an input of `numel` elements."""
        ...


def parts_nbytes(specs: list[tuple[torch.dtype, int]]) -> int:
    return sum(count * dtype.itemsize for dtype, count in specs)


def pack(payload: Payload) -> torch.Tensor:
    """All parts as one contiguous uint8 tensor (one message on the wire)."""
    return torch.cat([p.contiguous().view(-1).view(torch.uint8) for p in payload.parts])


def unpack(buffer: torch.Tensor, codec: Codec, numel: int, meta: dict[str, Any] | None = None) -> Payload:
    """Inverse of `pack` for a payload of an input with `numel` elements."""
    parts, offset = [], 0
    for dtype, count in codec.part_specs(numel):
        itemsize = dtype.itemsize
        size = count * itemsize
        raw = buffer[offset:offset + size]
        # buffers are whole allocations (aligned), so the offset decides the alignment (no data_ptr:
        # fake tensors in tests/test_gpu_path.py have none)
        if raw.storage_offset() % itemsize:
            raw = raw.clone()  # realign: a part after an odd-sized one
        parts.append(raw.view(dtype))
        offset += size
    if offset != buffer.numel():
        raise ValueError(f"{codec.name}: packed payload has {buffer.numel()} bytes, expected {offset}")
    return Payload(tuple(parts), numel, dict(meta or {}))


def encode_with_feedback(
    codec: Codec, tensor: torch.Tensor, state: dict[str, Any], error_feedback: bool
) -> Payload:
    """Encode `tensor + residual`; keep what the codec dropped as the next residual (error feedback).

    `state["residual"]` holds the residual for this (bucket, hop) and is saved in checkpoints."""
    if not (error_feedback and codec.lossy):
        return codec.encode(tensor, state)
    residual = state.get("residual")
    if residual is None or residual.shape != tensor.shape:
        residual = torch.zeros_like(tensor, dtype=torch.float32)
    elif residual.device != tensor.device:  # restored from a checkpoint loaded on the host
        residual = residual.to(tensor.device)
    compensated = tensor.float() + residual
    payload = codec.encode(compensated, state)
    state["residual"] = compensated - codec.decode(payload)
    return payload


def ceil_div(a: int, b: int) -> int:
    return -(-a // b) if b else 0


def topk_count(numel: int, ratio: float) -> int:
    return max(1, min(numel, math.ceil(ratio * numel))) if numel else 0
