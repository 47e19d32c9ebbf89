"""The range coder and the pdf quantization: lossless round trips, the reference coder's exact bytes,
p = 1.0 and near-uniform pdfs, determinism, and the errors of truncated or corrupt payloads."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from codecplatform.entropy.range_coder import (
    MIN_RANGE,
    TOTAL_RANGE,
    RangeCoderError,
    RangeDecoder,
    RangeEncoder,
    code_length_bits,
    quantize_pdf,
)


def random_pdfs(n: int, card: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, card, generator=g, dtype=torch.float64), dim=-1)


def encode(symbols, cdfs) -> bytes:
    encoder = RangeEncoder()
    for s, cdf in zip(symbols, cdfs):
        encoder.push(int(s), cdf)
    return encoder.flush()


def decode(payload: bytes, cdfs, offset: int = 0) -> tuple[list[int], int]:
    decoder = RangeDecoder(payload, offset)
    out = [decoder.pull(cdf) for cdf in cdfs]
    return out, decoder.finish()


# ------------------------------------------------------------------------------------ quantization
def test_quantized_cdf_is_valid_and_batched():
    p = random_pdfs(50, 1024)
    cdf = quantize_pdf(p)
    assert cdf.shape == (50, 1025) and cdf.dtype == np.int64
    widths = np.diff(cdf, axis=-1)
    assert (cdf[:, 0] == 0).all() and (widths >= MIN_RANGE).all() and (cdf[:, -1] <= TOTAL_RANGE).all()
    assert (cdf[:, -1] > TOTAL_RANGE - 1024).all()  # the range is used, but for floor losses
    for i in (0, 17, 49):  # row by row == batched, numpy == torch, float32 input == its float64 value
        np.testing.assert_array_equal(quantize_pdf(p[i]), cdf[i])
        np.testing.assert_array_equal(quantize_pdf(p[i].numpy()), cdf[i])
    p32 = p.float()
    np.testing.assert_array_equal(quantize_pdf(p32), quantize_pdf(p32.double()))
    np.testing.assert_array_equal(quantize_pdf(p[:2, None]), cdf[:2, None])  # any leading shape


def test_probability_one_and_zero_and_unnormalized():
    for n in (1, 2, 1024):
        p = torch.zeros(n, dtype=torch.float64)
        p[n // 2] = 1.0
        cdf = quantize_pdf(p)
        widths = np.diff(cdf)
        assert widths[n // 2] == TOTAL_RANGE - (n - 1) * MIN_RANGE
        assert (np.delete(widths, n // 2) == MIN_RANGE).all() and cdf[-1] == TOTAL_RANGE
    # a float sum a few ulps above 1 (or a value above 1) never overflows the range
    p = torch.full((3,), 1 / 3 + 1e-15, dtype=torch.float64)
    assert quantize_pdf(p)[-1] <= TOTAL_RANGE
    assert quantize_pdf(torch.tensor([1.0000001, 0.0]))[-1] <= TOTAL_RANGE
    np.testing.assert_array_equal(
        quantize_pdf(torch.zeros(4)), quantize_pdf(torch.full((4,), 0.25))
    )  # no mass: uniform
    for bad in (torch.tensor([0.5, float("nan")]), torch.tensor([1.5, -0.5])):
        with pytest.raises(ValueError, match="finite and >= 0"):
            quantize_pdf(bad)
    with pytest.raises(ValueError, match="min_range"):
        quantize_pdf(torch.ones(2), min_range=1)


def test_the_reference_quantization_can_overflow_ours_cannot():
    """encodec PR 95's trap: the reference floors float32 pdfs and its total can exceed 2**24."""
    from encodec.quantization.ac import build_stable_quantized_cdf

    p = torch.softmax(3 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)), dim=-1)  # float32
    totals = torch.stack([build_stable_quantized_cdf(row, 24, check=False)[-1] for row in p])
    assert (totals > TOTAL_RANGE).any()
    assert (quantize_pdf(p)[:, -1] <= TOTAL_RANGE).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantization_of_gpu_tensors_equals_cpu():
    p = random_pdfs(20, 1024)
    np.testing.assert_array_equal(quantize_pdf(p.cuda()), quantize_pdf(p))
    np.testing.assert_array_equal(quantize_pdf(p.float().cuda()), quantize_pdf(p.float()))


# --------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("card", [2, 17, 1024])
def test_round_trip_and_length_near_the_ideal(card):
    p = random_pdfs(600, card, seed=card)
    cdfs = quantize_pdf(p)
    symbols = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(1))[:, 0].numpy()
    payload = encode(symbols, cdfs)
    decoded, end = decode(payload, cdfs)
    assert decoded == symbols.tolist() and end == len(payload)
    ideal = code_length_bits(cdfs, symbols)
    assert ideal / 8 <= len(payload) <= ideal / 8 + 4


def test_same_bytes_as_the_reference_coder():
    """With the same cdfs, encodec's ArithmeticCoder writes the same bytes; ours decodes its bytes."""
    from encodec.quantization.ac import ArithmeticCoder, ArithmeticDecoder

    p = random_pdfs(400, 300, seed=3, scale=4.0)
    cdfs = quantize_pdf(p)
    symbols = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(2))[:, 0].tolist()
    symbols[10] = int(torch.argmin(p[10]))  # an improbable one (width MIN_RANGE)
    fo = io.BytesIO()
    reference = ArithmeticCoder(fo)
    for s, cdf in zip(symbols, cdfs):
        reference.push(s, torch.from_numpy(cdf[1:]))  # the reference's cdf has no leading 0
    reference.flush()
    assert encode(symbols, cdfs) == fo.getvalue()
    reference_decoder = ArithmeticDecoder(io.BytesIO(fo.getvalue()))
    assert [reference_decoder.pull(torch.from_numpy(c[1:])) for c in cdfs] == symbols


def test_certain_and_impossible_symbols_and_near_uniform():
    n = 1024
    certain = torch.zeros(n, dtype=torch.float64)
    certain[7] = 1.0
    cdf_certain = quantize_pdf(certain)
    # 1000 certain symbols cost almost nothing; one "impossible" (p = 0) still codes (23 bits)
    symbols = [7] * 500 + [8] + [7] * 499
    payload = encode(symbols, [cdf_certain] * 1000)
    assert decode(payload, [cdf_certain] * 1000)[0] == symbols
    assert len(payload) <= 3 + math.ceil(1000 * -math.log2(1 - (n - 1) * MIN_RANGE / TOTAL_RANGE) / 8) + 3
    # near uniform: log2(n) bits each
    p = torch.softmax(1e-3 * torch.randn(300, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    cdfs = quantize_pdf(p)
    symbols = torch.randint(n, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    payload = encode(symbols, cdfs)
    assert decode(payload, cdfs)[0] == symbols
    assert abs(len(payload) * 8 - 300 * math.log2(n)) <= 40


def test_segments_concatenate_and_the_empty_stream():
    p = random_pdfs(90, 50, seed=5)
    cdfs = quantize_pdf(p)
    symbols = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0))[:, 0].tolist()
    parts = [encode(symbols[a:b], cdfs[a:b]) for a, b in ((0, 30), (30, 31), (31, 90))]
    payload = b"".join(parts)
    offset, out = 0, []
    for a, b in ((0, 30), (30, 31), (31, 90)):
        decoded, offset = decode(payload, cdfs[a:b], offset)
        out += decoded
    assert out == symbols and offset == len(payload)
    assert RangeEncoder().flush() == b""
    assert RangeDecoder(b"").finish() == 0


# ----------------------------------------------------------------------------------------- errors
def test_truncated_and_corrupt_payloads_raise():
    p = random_pdfs(300, 64, seed=9)
    cdfs = quantize_pdf(p)
    symbols = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0))[:, 0].tolist()
    payload = encode(symbols, cdfs)
    with pytest.raises(RangeCoderError, match="ended"):
        decode(payload[:-3], cdfs)
    with pytest.raises(RangeCoderError, match="ended"):
        decode(payload, np.concatenate([cdfs, cdfs]))  # asked for more symbols than were coded
    # a cdf that leaves the top of the range to no symbol: a value there does not decode
    narrow = np.array([0, 2, 4], dtype=np.int64)
    with pytest.raises(RangeCoderError, match="does not decode"):
        RangeDecoder(b"\xff" * 8).pull(narrow)
    # every single-bit flip: refused, or other symbols; only the last 4 bytes (the tail of the 32-bit
    # state, which the decoder may never read) may decode unchanged
    refused = 0
    for index in range(len(payload)):
        for bit in range(8):
            bad = bytearray(payload)
            bad[index] ^= 1 << bit
            try:
                decoded, _ = decode(bytes(bad), cdfs)
            except RangeCoderError:
                refused += 1
                continue
            assert len(decoded) == len(symbols)
            if index < len(payload) - 4:
                assert list(decoded) != symbols, f"bit {bit} of byte {index} of {len(payload)} went unseen"
    assert refused > len(payload) * 8 // 2  # most flips are refused outright, not only decoded wrong


def test_invalid_pushes():
    encoder = RangeEncoder()
    with pytest.raises(ValueError, match="out of range"):
        encoder.push(3, np.array([0, 2, 4]))
    with pytest.raises(ValueError, match="invalid symbol interval"):
        encoder.push_range(0, 1)
    encoder.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        encoder.push_range(0, 2)
