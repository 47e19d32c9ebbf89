"""Entropy coding of (K, T) codes with a code language model (EnCodec section 3.3).

    payload = entropy_encode(codes, lm)                       # codes (K, T) int64 -> bytes
    codes = entropy_decode(payload, lm, n_q=K, n_frames=T)    # -> (K, T) int64

Pure functions over one example's codes; the ``.cpc`` container stores ``n_q``, ``n_frames``,
``segment_frames``, the LM's identity and a checksum of the payload.

What is coded, as the reference ``encodec/compress.py``: frame by frame, codebook by codebook
within a frame, each symbol with the integer cdf (:func:`~codecplatform.entropy.range_coder.quantize_pdf`)
of the LM's softmax for that codebook, given the frames before it in the same segment. A segment
(``segment_frames``; None: the whole signal is one segment, as the reference's 24 kHz model) starts
a fresh range coder and a fresh LM state (positions from 0, start tokens); the bytes of the
segments are concatenated (each decodes to its own end). Within a segment the LM sees a sliding
window of its ``past_context`` frames (EnCodec: 3.5 s) with positions growing from 0: the
reference runs the LM step by step over the whole segment with a state cropped to ``past_context``
frames, which is what ``CodeLM.step`` does.

Bit-exactness: the LM is evaluated in float64 on the CPU (:func:`coding_lm`: a float64 copy; pass
one made once to avoid copying per call). The decoder must evaluate step by step; the encoder
evaluates in chunks of frames (``mode="batch"``, faster) or step by step (``mode="step"``, the
decoder's exact computation). In float64 the two differ by ~1e-16, far below the 2**-24 grid of the
pdf quantization, so they give the same bytes except with vanishing probability (a value within
1e-16 of a grid point); ``verify=True`` decodes the payload once more and raises if it differs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from codecplatform.entropy.range_coder import (
    RangeCoderError,
    RangeDecoder,
    RangeEncoder,
    code_length_bits,
    quantize_pdf,
)
from codecplatform.models.code_lm import CodeLM

# frames x codebooks evaluated per chunk of the batch encoder (bounds the float64 pdf memory)
CHUNK_ROWS = 4096


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored after): frame-by-frame LM steps
    are tiny ops that threads only slow down (15-30x on a busy 2-core machine, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def coding_lm(lm: CodeLM) -> CodeLM:
    """The LM as coding uses it: float64, CPU, eval mode; ``lm`` itself when it already is."""
    param = next(lm.parameters())
    if param.dtype == torch.float64 and param.device.type == "cpu" and not lm.training:
        return lm
    return copy.deepcopy(lm).to(device="cpu", dtype=torch.float64).eval()


def _check(codes: Tensor, lm: CodeLM, frame_rate: float | None) -> None:
    if codes.dim() != 2:
        raise ValueError(f"codes must be (codebooks, frames), got shape {tuple(codes.shape)}")
    if codes.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    if not 1 <= codes.shape[0] <= lm.n_q:
        raise ValueError(f"{codes.shape[0]} codebooks: the language model has 1..{lm.n_q}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= lm.card):
        raise ValueError(f"codes must lie in [0, {lm.card}): the language model's codebook size")
    _check_rate(lm, frame_rate)


def _check_rate(lm: CodeLM, frame_rate: float | None) -> None:
    if frame_rate is not None and lm.frame_rate is not None and abs(frame_rate - lm.frame_rate) > 1e-6 * frame_rate:
        raise ValueError(
            f"the language model was trained at {lm.frame_rate:g} frames/s, the codes are at {frame_rate:g}"
        )


def _segments(n_frames: int, segment_frames: int | None) -> list[tuple[int, int]]:
    if segment_frames is not None and segment_frames < 1:
        raise ValueError(f"segment_frames must be >= 1 or None, got {segment_frames}")
    step = segment_frames or max(n_frames, 1)
    return [(s, min(s + step, n_frames)) for s in range(0, n_frames, step)]


def _cdfs(logits: Tensor) -> np.ndarray:
    """(..., card) float64 logits -> (..., card + 1) integer cdfs."""
    return quantize_pdf(torch.softmax(logits.to(torch.float64), dim=-1))


@torch.no_grad()
def entropy_encode(
    codes: Tensor,
    lm: CodeLM,
    frame_rate: float | None = None,
    segment_frames: int | None = None,
    mode: str = "batch",
    verify: bool = False,
) -> bytes:
    """(K, T) int64 codes -> the entropy-coded payload.

    Args:
        codes: one example's codes, K <= ``lm.n_q`` codebooks, values < ``lm.card``.
        lm: the code LM (copied to float64 on the CPU unless it already is: :func:`coding_lm`).
        frame_rate: the codes' frame rate, checked against the LM's when both are known.
        segment_frames: frames per independently coded segment (None: one segment).
        mode: ``"batch"`` (chunks of frames per LM call) or ``"step"`` (frame by frame, as the
            decoder); both give the same bytes.
        verify: decode the payload again and raise RuntimeError if it does not give ``codes``.
    """
    if mode not in ("batch", "step"):
        raise ValueError(f"mode must be 'batch' or 'step', got {mode!r}")
    codes = codes.detach().cpu().long()
    _check(codes, lm, frame_rate)
    model = coding_lm(lm)
    K, T = codes.shape
    out = bytearray()
    for start, stop in _segments(T, segment_frames):
        encoder = RangeEncoder()
        segment = codes[:, start:stop]
        if mode == "step":
            state = model.initial_state(1, K)
            prev = None
            with one_thread():
                for t in range(stop - start):
                    logits, state = model.step(prev, state)
                    cdf = _cdfs(logits[0])  # (K, card+1)
                    for k, symbol in enumerate(segment[:, t].tolist()):
                        encoder.push_range(int(cdf[k, symbol]), int(cdf[k, symbol + 1]))
                    prev = segment[None, :, t]
        else:
            state = model.initial_state(1, K)
            chunk = max(1, CHUNK_ROWS // K)
            for c in range(0, stop - start, chunk):
                part = segment[None, :, c : c + chunk]  # (1,K,n)
                logits, state = model.forward_chunk(part, state)
                cdf = _cdfs(logits[0].transpose(0, 1))  # (n,K,card+1), frame-major like the decoder
                symbols = part[0].T.numpy()[..., None]  # (n,K,1)
                lows = np.take_along_axis(cdf, symbols, -1).ravel().tolist()
                highs = np.take_along_axis(cdf, symbols + 1, -1).ravel().tolist()
                for lo, hi in zip(lows, highs):
                    encoder.push_range(lo, hi)
        out += encoder.flush()
    payload = bytes(out)
    if verify:
        decoded = entropy_decode(payload, model, K, T, segment_frames=segment_frames)
        if not torch.equal(decoded, codes):
            raise RuntimeError("entropy coding verification failed: the payload does not decode to the codes")
    return payload


@torch.no_grad()
def entropy_decode(
    payload: bytes,
    lm: CodeLM,
    n_q: int,
    n_frames: int,
    segment_frames: int | None = None,
    frame_rate: float | None = None,
) -> Tensor:
    """The payload of :func:`entropy_encode` -> (n_q, n_frames) int64 codes, frame by frame.

    Needs the same LM (weights), ``n_q``, ``n_frames`` and ``segment_frames`` as the encoder.
    Raises :class:`~codecplatform.entropy.range_coder.RangeCoderError` when the payload runs out,
    does not decode, or has bytes left over (truncated or corrupt data, another LM); a payload
    corrupted otherwise decodes to wrong codes: the caller's checksum catches it.
    """
    if not 1 <= n_q <= lm.n_q:
        raise ValueError(f"n_q={n_q}: the language model has 1..{lm.n_q} codebooks")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    _check_rate(lm, frame_rate)
    model = coding_lm(lm)
    codes = torch.zeros(n_q, n_frames, dtype=torch.long)
    offset = 0
    with one_thread():  # frame by frame: tiny ops
        for start, stop in _segments(n_frames, segment_frames):
            decoder = RangeDecoder(payload, offset)
            state = model.initial_state(1, n_q)
            prev = None
            for t in range(start, stop):
                logits, state = model.step(prev, state)
                cdf = _cdfs(logits[0])  # (K, card+1)
                frame = [decoder.pull(cdf[k]) for k in range(n_q)]
                codes[:, t] = torch.tensor(frame)
                prev = codes[None, :, t]
            offset = decoder.finish()
    if offset != len(payload):
        raise RangeCoderError(
            f"the entropy-coded payload has {len(payload) - offset} bytes beyond its {offset} "
            "(corrupt data, or other n_q / n_frames / segment_frames than at encoding)"
        )
    return codes


@torch.no_grad()
def estimate_bits(codes: Tensor, lm: CodeLM, segment_frames: int | None = None) -> float:
    """Ideal code length (bits) of ``codes`` (K, T) with the quantized cdfs: the payload is
    within a few bytes per segment of it (no coding needed: one batch LM evaluation)."""
    codes = codes.detach().cpu().long()
    _check(codes, lm, None)
    model = coding_lm(lm)
    K, T = codes.shape
    bits = 0.0
    chunk = max(1, CHUNK_ROWS // K)
    for start, stop in _segments(T, segment_frames):
        state = model.initial_state(1, K)
        for c in range(start, stop, chunk):
            part = codes[None, :, c : min(c + chunk, stop)]
            logits, state = model.forward_chunk(part, state)
            bits += code_length_bits(_cdfs(logits[0]), part[0].numpy())
    return bits
