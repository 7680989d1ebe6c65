"""Gradient codecs (one per file) and their registry: `make_codec(cfg)` looks the name up in
CODECS, a dict of constructors; adding a codec is one file plus one entry."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridrec.config.comm import CompressionConfig
from hybridrec.distributed.compression.base import Codec, Payload, encode_with_feedback, pack, unpack
from hybridrec.distributed.compression.cast import CastCodec
from hybridrec.distributed.compression.none import NoneCodec
from hybridrec.distributed.compression.sign1bit import SignCodec
from hybridrec.distributed.compression.topk import TopKCodec
from hybridrec.errors import ConfigError

CODECS: dict[str, Callable[[CompressionConfig], Codec]] = {
    "none": lambda cfg: NoneCodec(),
    "fp16": lambda cfg: CastCodec(torch.float16, "fp16"),
    "bf16": lambda cfg: CastCodec(torch.bfloat16, "bf16"),
    "topk": lambda cfg: TopKCodec(cfg.ratio),
    "sign1bit": lambda cfg: SignCodec(cfg.chunk_size),
}


def make_codec(cfg: CompressionConfig) -> Codec:
    if cfg.codec not in CODECS:
        raise ConfigError("compression.codec", cfg.codec, f"one of {sorted(CODECS)}")
    if cfg.codec == "topk" and not 0.0 < cfg.ratio <= 1.0:
        raise ConfigError("compression.ratio", cfg.ratio, "a top-k ratio in (0, 1]")
    if cfg.codec == "sign1bit" and cfg.chunk_size < 1:
        raise ConfigError("compression.chunk_size", cfg.chunk_size, "a positive number of elements per scale")
    return CODECS[cfg.codec](cfg)


__all__ = ["CODECS", "Codec", "Payload", "encode_with_feedback", "make_codec", "pack", "unpack"]
