"""Arithmetic (range) coder with a 2^24 total range and a deterministic pdf quantization.

The coder is the one of the EnCodec paper (section 3.3) and of its reference implementation
(``encodec/quantization/ac.py``): a total range of ``2**24`` (:data:`TOTAL_RANGE_BITS`), every
symbol at least :data:`MIN_RANGE` = 2 wide, a binary stream whose bits are emitted as soon as the
low and high ends of the current interval share them. Given the same integer cdfs it writes the
same bytes as ``encodec.quantization.ac.ArithmeticCoder`` (same interval arithmetic, same bit
order: the first bit of the stream is the least significant bit of the first byte, the last byte
padded with zero bits); tests/entropy/test_range_coder.py checks it. It is written with whole-word
integer operations instead of a loop over bits, so it is several times faster than the reference.

Integer cdfs (``cdf``): int64, shape (..., N + 1) for N symbols, ``cdf[..., 0] = 0``,
``cdf[..., i + 1] - cdf[..., i] >= MIN_RANGE`` (the width of symbol i), ``cdf[..., N] <= 2**24``.
(The reference's ``build_stable_quantized_cdf`` returns ``cdf[1:]``.)

Determinism (:func:`quantize_pdf`): the decoder rebuilds every cdf from its own evaluation of the
language model, and one differing count desynchronizes the rest of the segment. The reference's
float32 floor onto a 1e-8 grid can round differently across devices or evaluation orders (encodec
PR 95) and give negative counts at ``p = 1``; here the pdf is floored in float64 on the CPU onto the
power-of-two grid ``2**-GRID_BITS`` (exact), then ``width_i = MIN_RANGE + (q_i * B) // sum(q)`` with
``q_i = floor(p_i * 2**24)`` and ``B = 2**24 - N * MIN_RANGE`` in integers. NaN or negative input is
an error. The model must still give the encoder and the decoder the same float64 pdf, which
:mod:`codecplatform.entropy.coding` ensures by running it in float64.

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TOTAL_RANGE_BITS = 24
TOTAL_RANGE = 1 << TOTAL_RANGE_BITS
MIN_RANGE = 2
GRID_BITS = 24  # the pdf is floored to multiples of 2**-24 (~6e-8; the reference: 1e-8, the paper: 1e-6)

# bit reversal of every byte: the stream is built most significant bit first, stored as the
# reference's BitPacker stores it (first bit in the least significant bit of the first byte)
_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


class RangeCoderError(ValueError):
    """A payload that cannot be decoded: truncated, corrupted, or decoded with other cdfs."""


def quantize_pdf(probs: torch.Tensor | np.ndarray, min_range: int = MIN_RANGE) -> np.ndarray:
    """(..., N) probabilities -> (..., N + 1) int64 cdf over ``2**24`` (see the module docstring).

    Deterministic: a pure function of the probabilities' float64 values, computed on the CPU with
    an exact floor onto a ``2**-24`` grid and integer arithmetic after it. Every symbol gets at
    least ``min_range`` (>= 2); the rest of the range is shared in proportion to the floored pdf,
    which need not sum exactly to 1. ``p = 1.0`` gives that symbol ``2**24 - (N - 1) * min_range``.
    """
    if min_range < 2:
        raise ValueError(f"min_range must be at least 2, got {min_range}")
    if isinstance(probs, torch.Tensor):
        p = probs.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        p = np.asarray(probs, dtype=np.float64)
    n = p.shape[-1]
    budget = TOTAL_RANGE - n * min_range
    if n < 1 or budget < 0:
        raise ValueError(f"{n} symbols do not fit in a range of 2**{TOTAL_RANGE_BITS} with min_range {min_range}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and >= 0")
    q = np.floor(np.minimum(p, 1.0) * float(1 << GRID_BITS)).astype(np.int64)  # exact: power-of-two scale
    total = q.sum(axis=-1, keepdims=True)
    flat = total == 0  # no mass above the grid (impossible for a pdf): uniform
    if flat.any():
        q = np.where(flat, 1, q)
        total = q.sum(axis=-1, keepdims=True)
    widths = min_range + (q * budget) // total  # < 2**24 * 2**24: fits in int64
    cdf = np.zeros((*p.shape[:-1], n + 1), dtype=np.int64)
    np.cumsum(widths, axis=-1, out=cdf[..., 1:])
    return cdf


def code_length_bits(cdf: np.ndarray, symbols: np.ndarray) -> float:
    """Ideal bits of coding ``symbols`` (...,) with the cdfs ``cdf`` (..., N + 1): sum of
    ``-log2(width / 2**24)``. The coder's output is within a few bytes of it per segment."""
    cdf = np.asarray(cdf)
    symbols = np.asarray(symbols)[..., None]
    widths = np.take_along_axis(cdf, symbols + 1, -1) - np.take_along_axis(cdf, symbols, -1)
    return float(-np.log2(widths / TOTAL_RANGE).sum())


class RangeEncoder:
    """Encodes symbols one at a time; :meth:`flush` ends the stream and returns its bytes.

    One encoder codes one segment (the EnCodec coder is reset per segment); the bytes of
    consecutive segments may be concatenated: :class:`RangeDecoder` reads exactly a segment's
    bytes and says where the next one starts (:attr:`RangeDecoder.end`).
    """

    def __init__(self) -> None:
        self.low = 0
        self.high = 0
        self.max_bit = -1  # low and high are (max_bit + 1)-bit numbers, their common prefix already out
        self._acc = 0  # pending output bits, most significant first
        self._n_acc = 0
        self._out = bytearray()
        self.symbols = 0
        self._done = False

    def push(self, symbol: int, cdf: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        """Code ``symbol`` (0 <= symbol < N) with the integer cdf (N + 1,) of :func:`quantize_pdf`."""
        n = len(cdf) - 1
        if not 0 <= symbol < n:
            raise ValueError(f"symbol {symbol} is out of range for a cdf of {n} symbols")
        self.push_range(int(cdf[symbol]), int(cdf[symbol + 1]))

    def push_range(self, lo: int, hi: int) -> None:
        """Code the symbol whose interval is ``[lo, hi)`` of ``[0, 2**24)``: ``lo = cdf[s]``,
        ``hi = cdf[s + 1]`` (the fast path for cdfs gathered in advance)."""
        if self._done:
            raise RuntimeError("the encoder was flushed: start a new RangeEncoder")
        if lo < 0 or hi > TOTAL_RANGE or hi - lo < MIN_RANGE:
            raise ValueError(
                f"invalid symbol interval [{lo}, {hi}): needs 0 <= lo, hi - lo >= {MIN_RANGE}, hi <= 2**24"
            )
        low, high, max_bit = self.low, self.high, self.max_bit
        delta = high - low + 1
        if delta < TOTAL_RANGE:  # inject bits: the range width back into [2**24, 2**25)
            shift = TOTAL_RANGE_BITS + 1 - delta.bit_length()
            low <<= shift
            high = (high << shift) | ((1 << shift) - 1)
            max_bit += shift
            delta <<= shift
        high = low + (((hi - 1) * delta) >> TOTAL_RANGE_BITS)  # floor
        low = low - ((-lo * delta) >> TOTAL_RANGE_BITS)  # ceil
        # emit the common leading bits of low and high
        n = max_bit + 1 - (low ^ high).bit_length()
        if n > 0:
            rest = max_bit + 1 - n
            self._acc = (self._acc << n) | (low >> rest)
            self._n_acc += n
            mask = (1 << rest) - 1
            low &= mask
            high &= mask
            max_bit = rest - 1
            if self._n_acc >= 64:
                self._drain()
        self.low, self.high, self.max_bit = low, high, max_bit
        self.symbols += 1

    def _drain(self) -> None:
        whole = self._n_acc >> 3
        rest = self._n_acc & 7
        self._out += (self._acc >> rest).to_bytes(whole, "big")
        self._acc &= (1 << rest) - 1
        self._n_acc = rest

    def flush(self) -> bytes:
        """End the stream: write the remaining bits of ``low``, pad the last byte with zeros."""
        if not self._done:
            self._acc = (self._acc << (self.max_bit + 1)) | self.low
            self._n_acc += self.max_bit + 1
            pad = -self._n_acc % 8
            self._acc <<= pad
            self._n_acc += pad
            self._drain()
            self._done = True
        return bytes(self._out).translate(_REVERSE)


class RangeDecoder:
    """Decodes the symbols of one :class:`RangeEncoder` stream starting at ``data[offset]``.

    Call :meth:`pull` with exactly the cdfs the encoder used, then :meth:`finish`, which checks
    the stream's padding and returns its end (the offset of the next segment). A stream that runs
    out of bytes, or whose next value falls outside every symbol's interval, raises
    :class:`RangeCoderError`; other corruption is caught by the caller's checksum.
    """

    def __init__(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        self._data = memoryview(bytes(data))
        if not 0 <= offset <= len(self._data):
            raise ValueError(f"offset {offset} is outside the {len(self._data)}-byte payload")
        self._start = offset
        self._byte = offset  # next byte to read into the bit buffer
        self._buf = 0  # bits read from the payload and not consumed yet, most significant first
        self._n_buf = 0
        self.bits_read = 0
        self.low = 0
        self.high = 0
        self.current = 0
        self.max_bit = -1
        self.symbols = 0

    def _read(self, n: int) -> int:
        while self._n_buf < n:
            chunk = self._data[self._byte : self._byte + 8]
            if not len(chunk):
                raise RangeCoderError(
                    f"the entropy-coded payload ended after {self.symbols} symbols of this segment "
                    "(truncated or corrupt data, or decoded with another language model)"
                )
            self._buf = (self._buf << (8 * len(chunk))) | int.from_bytes(bytes(chunk).translate(_REVERSE), "big")
            self._n_buf += 8 * len(chunk)
            self._byte += len(chunk)
        self._n_buf -= n
        out = self._buf >> self._n_buf
        self._buf &= (1 << self._n_buf) - 1
        self.bits_read += n
        return out

    def pull(self, cdf: np.ndarray | torch.Tensor | Sequence[int]) -> int:
        """The next symbol, decoded with the (N + 1,) integer cdf the encoder used for it."""
        if isinstance(cdf, torch.Tensor):
            cdf = cdf.cpu().numpy()
        cdf = np.asarray(cdf)
        low, high, current, max_bit = self.low, self.high, self.current, self.max_bit
        delta = high - low + 1
        if delta < TOTAL_RANGE:
            shift = TOTAL_RANGE_BITS + 1 - delta.bit_length()
            low <<= shift
            high = (high << shift) | ((1 << shift) - 1)
            current = (current << shift) | self._read(shift)
            max_bit += shift
            delta <<= shift
        value = current - low
        # the symbol s with ceil(cdf[s] * delta / 2**24) <= value: cdf[s] <= floor(value * 2**24 / delta)
        target = (value << TOTAL_RANGE_BITS) // delta
        symbol = int(np.searchsorted(cdf, target, side="right")) - 1
        n = len(cdf) - 1
        if symbol >= n or value > (((int(cdf[symbol + 1]) - 1) * delta) >> TOTAL_RANGE_BITS):
            raise RangeCoderError(
                f"the entropy-coded payload does not decode at symbol {self.symbols} of this segment "
                "(corrupt data, or decoded with another language model or cdfs)"
            )
        high = low + (((int(cdf[symbol + 1]) - 1) * delta) >> TOTAL_RANGE_BITS)
        low = low - ((-int(cdf[symbol]) * delta) >> TOTAL_RANGE_BITS)
        k = max_bit + 1 - (low ^ high).bit_length()
        if k > 0:
            mask = (1 << (max_bit + 1 - k)) - 1
            low &= mask
            high &= mask
            current &= mask
            max_bit -= k
        self.low, self.high, self.current, self.max_bit = low, high, current, max_bit
        self.symbols += 1
        return symbol

    @property
    def end(self) -> int:
        """Offset just past this stream's bytes (every bit the encoder wrote has been read once
        the last symbol is pulled: the encoder writes exactly the bits the decoder needs)."""
        return self._start + (self.bits_read + 7) // 8

    def finish(self) -> int:
        """Check the stream's end (zero padding bits) and return :attr:`end`."""
        pad = -self.bits_read % 8
        if pad:
            if self._read(pad) != 0:
                raise RangeCoderError("the entropy-coded segment's padding bits are not zero (corrupt data)")
            self.bits_read -= pad
        return self.end
