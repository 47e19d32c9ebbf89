"""Chunked file coding of a :class:`~codecplatform.models.codec.Codec`: signals longer than memory
allows, coded chunk by chunk so that the result equals whole-signal coding as far as possible.

How a long signal is cut:

* segmented codecs (``segment_seconds``, EnCodec 48 kHz): the codec's own segments are the
  chunks; decoded segments are overlap-added incrementally with the same triangular weights
  (:func:`linear_overlap_add`): equal to ``encode``/``decode`` on the whole.
* streamable codecs (causal convolutions, EnCodec 24 kHz): encoder and decoder stream
  (:mod:`codecplatform.nn.streaming`), carrying their state across chunks; equal to whole-signal
  coding except the last frame, whose missing samples are zeros here (the whole signal pads
  them by reflection inside each convolution).
* other codecs (DAC): each chunk is coded with ``context_frames`` of neighbouring frames on
  both sides, which are dropped; equal to whole-signal coding once the context covers the
  networks' receptive field.

Signals no longer than one chunk are coded whole. Codecs that normalize without segments get
their scale from a first pass over the signal. The methods sit in a mixin, as DAC's
``CodecMixin`` keeps ``compress``/``decompress`` apart from the model
(https://github.com/descriptinc/descript-audio-codec, ``dac/model/base.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from codecplatform.models.base import grad_off_generator, grad_off_method
from codecplatform.nn.streaming import streaming, streams_exactly
from codecplatform.types import EncodedAudio


class ChunkedCoding:
    """``encode_chunked`` / ``decode_chunked`` / segment decoding of an encoder -> quantizer ->
    decoder codec (the :class:`~codecplatform.models.base.AudioCodec` methods, overridden).

    Mixed into :class:`~codecplatform.models.codec.Codec` before ``AudioCodec``; it uses the
    codec's ``encoder``, ``quantizer``, ``decoder``, ``hop_length``, ``channels``, ``normalize``,
    ``segment_length``/``segment_stride``/``segments``, ``normalize_input``, ``encode``/``decode``,
    ``resolve_n_q``, ``codebook_mask``, ``encoder_lookahead``/``decoder_lookahead``, ``can_stream``,
    ``stream`` and ``grad_off``.
    """

    encoder: Any
    quantizer: Any
    decoder: Any
    hop_length: int
    channels: int
    normalize: bool
    segment_length: int | None
    segment_stride: int | None
    can_stream: bool
    stream: Any

    _PROBE_FRAMES = 64  # streaming probes: longer than any layer's start-up need (reflect padding)

    @grad_off_method
    def encode_chunked(
        self,
        read: Callable[[int, int], Tensor],
        length: int,
        n_q: int,
        chunk_samples: int,
        context_frames: int,
        device: torch.device | str = "cpu",
    ) -> EncodedAudio:
        """Encode the ``length``-sample signal ``read(start, stop) -> (C, stop - start)`` chunk by
        chunk -> EncodedAudio(codes (1, n_q, T') on CPU, scale (1, S, 1) or None, length), as
        ``encode`` gives on the whole signal (see the module docstring for how chunks join).
        ``chunk_samples`` must be a multiple of ``hop_length``."""
        hop = self.hop_length
        if chunk_samples < hop or chunk_samples % hop:
            raise ValueError(f"chunk_samples must be a positive multiple of the hop {hop}, got {chunk_samples}")
        n_q = self.resolve_n_q(n_q=n_q)
        load = lambda start, stop: read(start, stop)[None].to(device)  # noqa: E731  (1, C, n)
        if self.segment_length is not None:
            codes, scales = [], []
            for offset, size in self.segments(length):
                x, scale = self.normalize_input(load(offset, offset + size))
                codes.append(self.quantizer.encode(self.encoder(x), n_q).cpu())  # (1, K, ceil(size / hop))
                if scale is not None:
                    scales.append(scale.cpu())
            return EncodedAudio(torch.cat(codes, dim=-1), torch.cat(scales, dim=1) if scales else None, length)
        if length <= chunk_samples:
            return self.encode(load(0, length), n_q=n_q).to("cpu")

        scale = _chunked_scale(read, length, chunk_samples).to(device) if self.normalize else None
        prepare = (lambda x: x) if scale is None else (lambda x: x / scale)  # noqa: E731
        n_frames = math.ceil(length / hop)
        probe = min(n_frames, self._PROBE_FRAMES)
        codes = []
        flush = self.encoder_lookahead
        zeros = torch.zeros(1, self.channels, probe * hop, device=device)
        if streams_exactly(self.encoder, zeros, probe, flush):
            with streaming(self.encoder):
                for start, stop in _chunks(length, chunk_samples):
                    x = prepare(load(start, stop))
                    if stop == length:  # complete the last frame, then the look-ahead, with zeros
                        x = F.pad(x, (0, -length % hop + flush))
                    z = self.encoder(x)
                    if z.shape[-1]:
                        codes.append(self.quantizer.encode(z, n_q).cpu())
        else:
            for f0, f1 in _chunks(n_frames, chunk_samples // hop):
                a, b = max(0, f0 - context_frames), min(n_frames, f1 + context_frames)
                z = self.encoder(prepare(load(a * hop, min(length, b * hop))))  # (1, D, b - a)
                codes.append(self.quantizer.encode(z[..., f0 - a : f1 - a], n_q).cpu())
        all_codes = torch.cat(codes, dim=-1)
        if all_codes.shape[-1] != n_frames:
            raise RuntimeError(f"chunked encoding gave {all_codes.shape[-1]} frames, expected {n_frames}")
        return EncodedAudio(all_codes, None if scale is None else scale.cpu(), length)

    @grad_off_method
    def encode_chunked_many(
        self,
        signals: Sequence[Tensor],
        n_q: int,
        chunk_samples: int,
        context_frames: int,
        device: torch.device | str = "cpu",
    ) -> list[EncodedAudio]:
        """:meth:`encode_chunked` of each (C, n_i) signal, item by item the same codes. A codec that
        streams (:attr:`can_stream`) codes the signals longer than a chunk as concurrent streams
        (``stream(batch=N)``), chunk after chunk: each network call reads the weights once for all
        of them, and an LSTM steps through N sequences at once instead of one (measured on one CPU
        thread: benchmarks/RESULTS.md, "How fast is a corpus tokenized?")."""
        n_q = self.resolve_n_q(n_q=n_q)
        hop, flush = self.hop_length, self.encoder_lookahead

        def one(s: Tensor) -> EncodedAudio:
            return self.encode_chunked(lambda a, b: s[:, a:b], s.shape[-1], n_q, chunk_samples, context_frames, device)

        long = [i for i, s in enumerate(signals) if s.shape[-1] > chunk_samples]
        out: list[EncodedAudio | None] = [None if i in long else one(s) for i, s in enumerate(signals)]
        probe = torch.zeros(1, self.channels, self._PROBE_FRAMES * hop, device=device)
        if len(long) < 2 or not self.can_stream or not streams_exactly(self.encoder, probe, self._PROBE_FRAMES, flush):
            return [one(s) if e is None else e for s, e in zip(signals, out)]
        if chunk_samples < hop or chunk_samples % hop:
            raise ValueError(f"chunk_samples must be a positive multiple of the hop {hop}, got {chunk_samples}")
        codes: list[list[Tensor]] = [[] for _ in long]
        with self.stream(n_q=n_q, batch=len(long)) as streams:
            for start in range(0, max(signals[i].shape[-1] for i in long), chunk_samples):
                chunks = []
                for i in long:
                    length = signals[i].shape[-1]
                    x = signals[i][:, start : start + chunk_samples].to(device) if start < length else None
                    if x is not None and start + chunk_samples >= length:  # the last frame and look-ahead: zeros
                        x = F.pad(x, (0, -length % hop + flush))
                    chunks.append(x)
                for k, c in enumerate(streams.encode(chunks)):
                    if c is not None and c.shape[-1]:
                        codes[k].append(c.cpu())
        for k, i in enumerate(long):
            length = signals[i].shape[-1]
            item_codes, n_frames = torch.cat(codes[k], dim=-1)[None], math.ceil(length / hop)
            if item_codes.shape[-1] != n_frames:
                raise RuntimeError(f"chunked encoding gave {item_codes.shape[-1]} frames, expected {n_frames}")
            out[i] = EncodedAudio(item_codes, None, length)
        return out  # type: ignore[return-value]

    @grad_off_generator
    def decode_chunked(
        self,
        encoded: EncodedAudio,
        chunk_frames: int,
        context_frames: int,
        device: torch.device | str = "cpu",
        codebooks: Sequence[int] | None = None,
    ) -> Iterator[Tensor]:
        """Decode EncodedAudio (codes (1, K, T')) chunk by chunk: yields consecutive (C, n) CPU
        blocks that join into ``decode(encoded, codebooks)[0]`` (see the module docstring)."""
        codes, length, hop = encoded.codes, encoded.length, self.hop_length
        n_frames = codes.shape[-1]
        scales = None if encoded.scale is None else encoded.scale.to(device)
        keep = None if codebooks is None else self.codebook_mask(codebooks, codes.shape[1])
        synthesize = lambda c: self.decoder(self.quantizer.decode(c.to(device), keep))  # noqa: E731  (1, C, frames * hop)

        if self.segment_length is not None:
            yield from self._decode_segments(codes, scales, length, synthesize)
            return
        if n_frames <= chunk_frames:
            yield self.decode(EncodedAudio(codes.to(device), scales, length), codebooks)[0].cpu()
            return
        emitted = 0
        probe = torch.zeros(1, codes.shape[1], min(n_frames, self._PROBE_FRAMES), dtype=torch.long, device=device)
        flush = self.decoder_lookahead
        if streams_exactly(self.decoder, self.quantizer.decode(probe), probe.shape[-1] * hop, flush):
            with streaming(self.decoder):
                for f0, f1 in _chunks(n_frames, chunk_frames):
                    latent = self.quantizer.decode(codes[..., f0:f1].to(device), keep)  # (1, D, frames)
                    if f1 == n_frames and flush:  # the decoder's look-ahead: zero latent frames
                        latent = F.pad(latent, (0, flush))
                    y = self.decoder(latent)[0]
                    y = y if scales is None else y * scales[0]
                    n = min(y.shape[-1], length - emitted)
                    emitted += n
                    yield y[:, :n].cpu()
        else:
            for f0, f1 in _chunks(n_frames, chunk_frames):
                a, b = max(0, f0 - context_frames), min(n_frames, f1 + context_frames)
                y = synthesize(codes[..., a:b])[0, :, (f0 - a) * hop : (f1 - a) * hop]
                y = y if scales is None else y * scales[0]
                n = min(y.shape[-1], length - emitted)
                emitted += n
                yield y[:, :n].cpu()
        if emitted != length:
            raise RuntimeError(f"chunked decoding gave {emitted} samples, expected {length}")

    def _decode_segments(
        self, codes: Tensor, scales: Tensor | None, length: int, synthesize: Callable[[Tensor], Tensor]
    ) -> Iterator[Tensor]:
        """Segment-by-segment decoding of a segmented codec, overlap-added incrementally: yields
        (C, n) CPU blocks equal to ``decode`` of the whole."""
        segments = self.segments(length)
        frames = [math.ceil(size / self.hop_length) for _, size in segments]
        if sum(frames) != codes.shape[-1]:
            raise ValueError(f"codes have {codes.shape[-1]} frames, {len(segments)} segment(s) need {sum(frames)}")
        stride = self.segment_stride
        weight, out, weights, position, f = None, None, None, 0, 0  # out/weights start at `position`
        for s, ((offset, _), count) in enumerate(zip(segments, frames)):
            y = synthesize(codes[..., f : f + count])[0]  # (C, count * hop)
            f += count
            if scales is not None:
                y = y * scales[0, s]
            if weight is None:
                weight = overlap_weights(y.shape[-1], y)
                out, weights = y.new_zeros(y.shape[0], 0), y.new_zeros(0)
            if y.shape[-1] > weight.shape[-1]:
                raise ValueError(f"segment {s} decodes to {y.shape[-1]} samples, more than the first one")
            end = offset + y.shape[-1]
            grow = end - position - out.shape[-1]
            if grow > 0:
                out, weights = F.pad(out, (0, grow)), F.pad(weights, (0, grow))
            lo = offset - position
            out[:, lo : lo + y.shape[-1]] += weight[: y.shape[-1]] * y
            weights[lo : lo + y.shape[-1]] += weight[: y.shape[-1]]
            final = min(length, offset + stride if s + 1 < len(segments) else end)
            if final > position:
                n = final - position
                yield (out[:, :n] / weights[:n]).cpu()
                out, weights, position = out[:, n:], weights[n:], final


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """[start, stop) of consecutive chunks of ``size`` covering ``total``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _chunked_scale(read: Callable[[int, int], Tensor], length: int, chunk: int) -> Tensor:
    """The (1, 1, 1) input scale ``Codec.normalize_input`` computes on the whole signal, from a
    pass over chunks: RMS over time of the channel mean, + 1e-8."""
    total = 0.0
    for start, stop in _chunks(length, chunk):
        mono = read(start, stop).double().mean(dim=0)
        total += float(mono.pow(2).sum())
    return torch.tensor(math.sqrt(total / length) + 1e-8, dtype=torch.float32).view(1, 1, 1)


def overlap_weights(n: int, like: Tensor) -> Tensor:
    """The triangle (n,) that weights a segment of ``n`` samples in :func:`linear_overlap_add`
    (dtype and device of ``like``), > 0 everywhere."""
    t = torch.arange(1, n + 1, device=like.device, dtype=like.dtype) / (n + 1)
    return 0.5 - (t - 0.5).abs()


def linear_overlap_add(frames: list[Tensor], stride: int) -> Tensor:
    """Overlap-add segments (B, C, T_s) placed every ``stride`` samples -> (B, C, total).

    Each segment is weighted by a triangle peaking at its middle (the first segment's length
    sets the triangle; shorter segments use its start) and every output sample is divided by
    the sum of the weights covering it: a sample covered once is unchanged, two overlapping
    segments cross-fade linearly. ``total = stride * (S - 1) + T_last``. (EnCodec's
    ``_linear_overlap_add``, facebookresearch/encodec ``encodec/utils.py``.)
    """
    n = frames[0].shape[-1]
    weight = overlap_weights(n, frames[0])  # (n,) > 0
    total = stride * (len(frames) - 1) + frames[-1].shape[-1]
    out = frames[0].new_zeros(*frames[0].shape[:-1], total)
    weight_sum = frames[0].new_zeros(total)
    for s, frame in enumerate(frames):
        size = frame.shape[-1]
        if size > n:
            raise ValueError(f"segment {s} has {size} samples, more than the first one ({n})")
        out[..., s * stride : s * stride + size] += weight[:size] * frame
        weight_sum[s * stride : s * stride + size] += weight[:size]
    if bool((weight_sum <= 0).any()):
        raise ValueError(f"stride {stride} leaves gaps between segments of {n} samples")
    return out / weight_sum
