"""Codec round trips, wire sizes against the formulas, packing, and error feedback."""

import pytest
import torch

from hybridrec.config.comm import CompressionConfig
from hybridrec.distributed.compression import CODECS, encode_with_feedback, make_codec, pack, unpack
from hybridrec.errors import ConfigError

N = 2**18  # 1 MiB of fp32


def codec(name, **kw):
    return make_codec(CompressionConfig(codec=name, **kw))


@pytest.mark.parametrize("name", sorted(CODECS))
def test_pack_unpack_round_trip_and_wire_bytes(name):
    c = codec(name)
    x = torch.randn(10_007, generator=torch.Generator().manual_seed(0))
    payload = c.encode(x, {})
    buf = pack(payload)
    assert buf.numel() == c.wire_bytes(payload)
    assert torch.equal(c.decode(unpack(buf, c, x.numel())), c.decode(payload))


def test_lossless_and_half_round_trips():
    x = torch.randn(1000)
    assert torch.equal(codec("none").decode(codec("none").encode(x, {})), x)
    assert torch.allclose(codec("fp16").decode(codec("fp16").encode(x, {})), x, rtol=1e-3, atol=1e-4)
    assert torch.allclose(codec("bf16").decode(codec("bf16").encode(x, {})), x, rtol=1e-2, atol=1e-2)


def test_topk_keeps_largest_exactly_and_wire_ratio():
    c = codec("topk", ratio=0.01)
    x = torch.randn(N, generator=torch.Generator().manual_seed(1))
    payload = c.encode(x, {})
    decoded = c.decode(payload)
    k = payload.parts[0].numel()
    assert k == 2622  # ceil(0.01 * 262144)
    kept = decoded != 0
    assert torch.equal(decoded[kept], x[kept])
    assert x[~kept].abs().max() <= x[kept].abs().min()
    ratio = c.wire_bytes(payload) / (4 * N)
    assert ratio <= 0.021, ratio


def test_sign1bit_round_trip_signs_scales_and_wire_ratio():
    c = codec("sign1bit", chunk_size=1024)
    x = torch.randn(N + 3, generator=torch.Generator().manual_seed(2))
    payload = c.encode(x, {})
    decoded = c.decode(payload)
    assert torch.equal(torch.sign(decoded), torch.where(x >= 0, 1.0, -1.0))
    assert torch.allclose(decoded[:1024].abs(), x[:1024].abs().mean().expand(1024))
    assert torch.allclose(decoded[-3:].abs(), x[-3:].abs().mean().expand(3))  # short last chunk
    ratio = c.wire_bytes(payload) / (4 * x.numel())
    assert ratio <= 0.035, ratio


@pytest.mark.parametrize("name", ["topk", "sign1bit"])
def test_error_feedback_transmits_every_coordinates_mass(name):
    """A fixed gradient g over T steps: with EF, sent + residual == T * g exactly (nothing lost),
    every coordinate is sent at some step, and the relative shortfall of what was sent shrinks
    with T (the residual stays bounded while T * g grows)."""
    c = codec(name, ratio=0.01)
    g = 0.1 + 0.9 * torch.rand(1000, generator=torch.Generator().manual_seed(3))
    state: dict = {}
    sent = torch.zeros(1000, dtype=torch.float64)
    ever = torch.zeros(1000, dtype=torch.bool)
    shortfall = {}
    for step in range(1, 5001):
        decoded = c.decode(encode_with_feedback(c, g, state, error_feedback=True))
        sent += decoded.double()
        ever |= decoded != 0
        if step in (2500, 5000):
            expected = step * g.double()
            assert torch.allclose(sent + state["residual"].double(), expected, rtol=0, atol=0.02)
            shortfall[step] = float(((sent - expected).abs() / expected).max())
    assert bool(ever.all())
    assert shortfall[5000] < 0.75 * shortfall[2500]
    assert shortfall[5000] < 0.12, shortfall


def test_without_error_feedback_small_coordinates_are_never_sent():
    c = codec("topk", ratio=0.01)
    g = torch.linspace(1.0, 2.0, 1000)
    state: dict = {}
    sent = sum(c.decode(encode_with_feedback(c, g, state, error_feedback=False)) for _ in range(50))
    assert int((sent == 0).sum()) == 990


def test_unknown_codec_and_bad_ratio_are_refused():
    with pytest.raises(ConfigError, match="compression.codec"):
        codec("zip")
    with pytest.raises(ConfigError, match="compression.ratio"):
        codec("topk", ratio=0.0)
