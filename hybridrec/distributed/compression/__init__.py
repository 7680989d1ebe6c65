"""Gradient codecs (one per file) and their registry: `make_codec(cfg)` looks the name up in
CODECS, a dict of constructors; adding a codec is one file plus one entry. Each codec reads and
checks its own parameters (e.g. `TopKCodec` the ratio), so a rule lives in one place: preflight
refuses a config by building its codec, and the job builds the same codec."""

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
    "topk": TopKCodec.from_config,
    "sign1bit": SignCodec.from_config,
}


def make_codec(cfg: CompressionConfig) -> Codec:
    """The codec named by `compression.codec`, built from (and checking) its own parameters."""
    if cfg.codec not in CODECS:
        raise ConfigError("compression.codec", cfg.codec, f"one of {sorted(CODECS)}")
    return CODECS[cfg.codec](cfg)


__all__ = ["CODECS", "Codec", "Payload", "encode_with_feedback", "make_codec", "pack", "unpack"]
