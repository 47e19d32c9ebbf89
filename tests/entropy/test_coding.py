"""entropy_encode / entropy_decode: lossless on random codes and on a tiny codec's codes, batch and
step-by-step encoders give the same bytes, segments, p = 1.0 and uniform LMs, and corrupt payloads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from code_lm_helpers import tiny_lm

from codecplatform.entropy.coding import coding_lm, entropy_decode, entropy_encode, estimate_bits
from codecplatform.entropy.range_coder import RangeCoderError
from codecplatform.models.base import AudioCodec


def random_codes(K: int = 4, T: int = 60, card: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, card, (K, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("segment_frames", [None, 25])
def test_round_trip_batch_equals_step(segment_frames):
    lm = coding_lm(tiny_lm(past_context=10))  # 60 frames: the window slides
    codes = random_codes()
    payload = entropy_encode(codes, lm, segment_frames=segment_frames)
    assert entropy_encode(codes, lm, segment_frames=segment_frames, mode="step") == payload
    assert entropy_encode(codes, lm, segment_frames=segment_frames, verify=True) == payload
    decoded = entropy_decode(payload, lm, n_q=4, n_frames=60, segment_frames=segment_frames)
    assert decoded.dtype == torch.int64
    torch.testing.assert_close(decoded, codes, rtol=0, atol=0)
    bits = estimate_bits(codes, lm, segment_frames=segment_frames)
    segments = 1 if segment_frames is None else 3
    assert bits / 8 <= len(payload) <= bits / 8 + 4 * segments


def test_fewer_codebooks_float32_lm_and_empty():
    lm32 = tiny_lm()
    codes = random_codes(K=2, T=20)
    payload = entropy_encode(codes, lm32)  # a float32 LM is copied to float64, not changed
    assert next(lm32.parameters()).dtype == torch.float32
    torch.testing.assert_close(entropy_decode(payload, lm32, 2, 20), codes, rtol=0, atol=0)
    assert entropy_encode(torch.zeros(3, 0, dtype=torch.long), lm32) == b""
    assert entropy_decode(b"", lm32, 3, 0).shape == (3, 0)


def test_codes_of_a_tiny_codec(tiny_codec_checkpoint):
    codec = AudioCodec.from_checkpoint(tiny_codec_checkpoint)
    t = torch.arange(2400) / codec.sample_rate
    x = 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.02 * torch.randn(2400, generator=torch.Generator().manual_seed(0))
    codes = codec.encode(x.view(1, 1, -1), n_q=codec.n_q).codes[0]  # (4, 300)
    lm = coding_lm(tiny_lm(n_q=codec.n_q, card=max(codec.codebook_sizes), frame_rate=codec.frame_rate))
    payload = entropy_encode(codes, lm, frame_rate=codec.frame_rate, segment_frames=100)
    decoded = entropy_decode(payload, lm, codec.n_q, codes.shape[-1], segment_frames=100, frame_rate=codec.frame_rate)
    torch.testing.assert_close(decoded, codes, rtol=0, atol=0)
    with pytest.raises(ValueError, match="frames/s"):
        entropy_encode(codes, lm, frame_rate=75.0)


def test_certain_and_uniform_language_models():
    codes = random_codes(K=3, T=40)
    certain = tiny_lm(n_q=3)
    with torch.no_grad():
        for head in certain.linears:
            head.weight.zero_()
            head.bias.fill_(-1e4)
            head.bias[5] = 1e4  # softmax gives exactly 1.0 for code 5 (also in float64)
    lm = coding_lm(certain)
    with torch.no_grad():
        assert (torch.softmax(lm(codes[None]), -1)[..., 5] == 1.0).all()
    fives = torch.full((3, 40), 5)
    payload = entropy_encode(fives, lm)
    assert len(payload) <= 4  # 120 certain symbols: a few bits
    torch.testing.assert_close(entropy_decode(payload, lm, 3, 40), fives, rtol=0, atol=0)
    payload = entropy_encode(codes, lm)  # "impossible" codes (p = 0) still code, 23 bits each
    torch.testing.assert_close(entropy_decode(payload, lm, 3, 40), codes, rtol=0, atol=0)
    assert len(payload) * 8 == pytest.approx((codes != 5).sum().item() * 23, abs=24)

    uniform = tiny_lm(n_q=3)
    with torch.no_grad():
        for head in uniform.linears:
            head.weight.zero_()
            head.bias.zero_()
    payload = entropy_encode(codes, uniform)
    torch.testing.assert_close(entropy_decode(payload, uniform, 3, 40), codes, rtol=0, atol=0)
    assert abs(len(payload) * 8 - codes.numel() * math.log2(16)) <= 32


def test_corrupt_or_mismatched_payloads():
    lm = coding_lm(tiny_lm())
    codes = random_codes(T=50)
    payload = entropy_encode(codes, lm)
    with pytest.raises(RangeCoderError, match="ended"):
        entropy_decode(payload[:-2], lm, 4, 50)
    with pytest.raises(RangeCoderError, match="beyond"):
        entropy_decode(payload + b"\x00", lm, 4, 50)
    with pytest.raises(RangeCoderError):
        entropy_decode(payload, lm, 4, 60)  # more frames than were coded
    # A flipped bit anywhere but the last 4 bytes (the tail of the coder's 32-bit state, which the
    # decoder may never read) is refused or changes the codes; the container's CRC catches the rest.
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "changed": 0, "unchanged": 0}
    for index in range(len(payload)):
        bad = bytearray(payload)
        bad[index] ^= 1 << int(rng.integers(8))
        try:
            decoded = entropy_decode(bytes(bad), lm, 4, 50)
        except RangeCoderError:
            outcomes["refused"] += 1
            continue
        assert decoded.shape == codes.shape
        same = torch.equal(decoded, codes)
        assert not same or index >= len(payload) - 4, f"a flip in byte {index} of {len(payload)} went unseen"
        outcomes["unchanged" if same else "changed"] += 1
    assert outcomes["refused"] > 0 and outcomes["changed"] + outcomes["refused"] >= len(payload) - 4, outcomes
    with pytest.raises(ValueError, match=r"lie in \[0, 16\)"):
        entropy_encode(torch.full((4, 3), 16), lm)
    with pytest.raises(ValueError, match="codebooks"):
        entropy_encode(torch.zeros(5, 3, dtype=torch.long), lm)
