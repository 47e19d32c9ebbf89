"""Codec = encoder -> quantizer -> decoder, usable without Lightning (notebooks, inference)."""

from __future__ import annotations

import contextlib
import functools
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.models.base import AudioCodec
from codecplatform.nn.conv import fold_weight_norm
from codecplatform.nn.streaming import StreamingModule, streaming, streams_exactly
from codecplatform.quantizers.base import Quantizer
from codecplatform.types import CodecOutput, EncodedAudio, check_audio


def _grad_off(method: Callable) -> Callable:
    """Run a coding method in ``self.grad_off()`` (inference mode once prepared, else no_grad)."""

    @functools.wraps(method)
    def wrapper(self: AudioCodec, *args: Any, **kwargs: Any) -> Any:
        with self.grad_off():
            return method(self, *args, **kwargs)

    return wrapper


def _grad_off_generator(method: Callable) -> Callable:
    """:func:`_grad_off` for a generator method: each step runs in the context, the caller's
    code between the items does not."""

    @functools.wraps(method)
    def wrapper(self: AudioCodec, *args: Any, **kwargs: Any) -> Iterator[Any]:
        items = method(self, *args, **kwargs)
        while True:
            with self.grad_off():
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item

    return wrapper


class Codec(AudioCodec):
    """A neural audio codec: (B, C, T) audio <-> (B, K, T') codes.

    Args:
        encoder: audio -> latents (B, D, T').
        quantizer: latents -> codes and quantized latents.
        decoder: quantized latents -> audio.
        sample_rate: audio sample rate in Hz.
        bandwidths: target bitrates in kbps the codec is trained for (EnCodec: 1.5, 3, 6, 12, 24).
            Each maps to the largest codebook count that fits; training draws counts among
            them (through the quantizer's dropout policy) and ``encode(bandwidth=...)`` uses them.
            None: every count 1..n_q is allowed.
        normalize: divide each input by its RMS before encoding and multiply the output back
            (EnCodec's non-streamable 48 kHz model); the scale travels in ``EncodedAudio``.
        segment_seconds: inference only (``encode``/``decode``, not ``forward``): cut the audio
            into segments of this duration, encode each on its own (normalized by its own scale
            when ``normalize``) and overlap-add the decoded segments with linear cross-fades
            (EnCodec's 48 kHz model: 1 s). None (default): the whole signal is one segment.
        segment_overlap: fraction of a segment shared with the next one (EnCodec: 0.01); the
            segment stride is ``max(1, int((1 - segment_overlap) * segment_length))``.
    """

    def __init__(
        self,
        encoder: Encoder,
        quantizer: Quantizer,
        decoder: Decoder,
        sample_rate: int,
        bandwidths: list[float] | None = None,
        normalize: bool = False,
        segment_seconds: float | None = None,
        segment_overlap: float = 0.01,
    ):
        super().__init__()
        if encoder.dimension != quantizer.dimension or decoder.dimension != quantizer.dimension:
            raise ValueError(
                f"latent sizes differ: encoder.dimension={encoder.dimension}, "
                f"quantizer.dimension={quantizer.dimension}, decoder.dimension={decoder.dimension}"
            )
        if encoder.hop_length != decoder.hop_length:
            raise ValueError(f"encoder hop {encoder.hop_length} != decoder hop {decoder.hop_length}")
        if encoder.channels != decoder.channels:
            raise ValueError(f"encoder channels {encoder.channels} != decoder channels {decoder.channels}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if segment_seconds is not None and int(segment_seconds * sample_rate) < 1:
            raise ValueError(f"segment_seconds must give at least one sample, got {segment_seconds}")
        if not 0.0 <= segment_overlap < 1.0:
            raise ValueError(f"segment_overlap must be in [0, 1), got {segment_overlap}")
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.sample_rate = sample_rate
        self.channels = encoder.channels
        self.hop_length = encoder.hop_length
        self.normalize = normalize
        self.segment_length = None if segment_seconds is None else int(segment_seconds * sample_rate)
        self.segment_stride = (
            None if self.segment_length is None else max(1, int((1.0 - segment_overlap) * self.segment_length))
        )
        self.bandwidths = sorted(bandwidths) if bandwidths else None
        self.n_q_choices = sorted({self.n_q_for_bandwidth(bw) for bw in self.bandwidths}) if self.bandwidths else None

    # -- rates -------------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        """Latent frames per second."""
        return self.sample_rate / self.hop_length

    def n_q_for_bandwidth(self, bandwidth: float) -> int:
        """Codebooks that fit in ``bandwidth`` kbps (EnCodec: 6 kbps at 75 Hz, 10 bits -> 8)."""
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 kbps, got {bandwidth}")
        n_q = self.quantizer.n_q_for_bits(bandwidth * 1000.0 / self.frame_rate)
        full = self.bitrate(self.quantizer.n_q)
        if bandwidth > full + 1e-6:
            raise ValueError(f"bandwidth {bandwidth} kbps exceeds this codec's maximum of {full:g} kbps")
        return n_q

    def bitrate(self, n_q: int) -> float:
        """Nominal bitrate in kbps with the first ``n_q`` codebooks."""
        return self.frame_rate * sum(self.quantizer.bits_per_frame[:n_q]) / 1000.0

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.quantizer.codebook_sizes)

    @property
    def n_q(self) -> int:
        return self.quantizer.n_q

    @property
    def samples_per_frame(self) -> int:
        return self.hop_length

    # -- training / evaluation ------------------------------------------------------------------
    def forward(
        self, x: Tensor, n_q: int | Tensor | None = None, generator: torch.Generator | None = None
    ) -> CodecOutput:
        """(B, C, T) -> CodecOutput(x_hat (B, C, T), z (B, D, T'), quantized).

        In training mode with ``n_q=None`` the codebook counts come from the quantizer's dropout
        policy (drawn with ``generator``); in eval mode ``n_q=None`` means all codebooks.
        """
        check_audio(x, self.channels)
        length = x.shape[-1]
        x, scale = self.normalize_input(x)
        z = self.encoder(x)
        if n_q is None and self.training:
            n_q = self.quantizer.sample_n_q(x.shape[0], self.n_q_choices, generator)
        quantized = self.quantizer(z, n_q)
        x_hat = self.decoder(quantized.z_q.to(z.dtype))[..., :length]
        if scale is not None:
            x_hat = x_hat * scale
        return CodecOutput(x_hat=x_hat, z=z, quantized=quantized)

    def normalize_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, C, T) -> (x / scale, scale (B, 1, 1)) with scale the RMS of the channel mean (+1e-8),
        when the codec normalizes its input (``normalize``); else (x, None)."""
        if not self.normalize:
            return x, None
        scale = x.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt() + 1e-8  # (B,1,1)
        return x / scale, scale

    # -- inference ---------------------------------------------------------------------------
    def segments(self, length: int) -> list[tuple[int, int]]:
        """(offset, samples) of each inference segment of a ``length``-sample signal.

        One segment ``(0, length)`` without ``segment_seconds``; else segments of
        ``segment_length`` samples every ``segment_stride`` samples, the last one shorter.
        """
        if self.segment_length is None or self.segment_stride is None:
            return [(0, length)]
        offsets = range(0, max(length, 1), self.segment_stride)
        return [(offset, min(self.segment_length, length - offset)) for offset in offsets]

    @_grad_off
    def encode(self, x: Tensor, bandwidth: float | None = None, n_q: int | None = None) -> EncodedAudio:
        """(B, C, T) audio -> EncodedAudio, K codebooks from ``bandwidth`` (kbps) or ``n_q``
        (default: all codebooks).

        With S = ``len(self.segments(T))`` segments (S = 1 unless ``segment_seconds``), the
        segments' codes are concatenated along time: codes (B, K, sum_s ceil(T_s / hop)), and
        ``scale`` is (B, S, 1), the per-segment input scale (None unless ``normalize``).
        """
        if bandwidth is not None and n_q is not None:
            raise ValueError("give bandwidth or n_q, not both")
        check_audio(x, self.channels)
        if bandwidth is not None:
            n_q = self.n_q_for_bandwidth(bandwidth)
        codes: list[Tensor] = []
        scales: list[Tensor] = []
        for offset, size in self.segments(x.shape[-1]):
            segment, scale = self.normalize_input(x[..., offset : offset + size])
            codes.append(self.quantizer.encode(self.encoder(segment), n_q))  # (B, K, ceil(size / hop))
            if scale is not None:
                scales.append(scale)  # (B, 1, 1)
        return EncodedAudio(
            codes=torch.cat(codes, dim=-1),
            scale=torch.cat(scales, dim=1) if scales else None,
            length=x.shape[-1],
        )

    @_grad_off
    def decode(self, encoded: EncodedAudio | Tensor, codebooks: Sequence[int] | None = None) -> Tensor:
        """EncodedAudio (or bare codes (B, K, T') of an unsegmented codec) -> audio (B, C, T).

        ``codebooks``: decode from these codebook indices only (0-based, each < K; codebook
        ablation: "what does codebook 1 carry?"); the others contribute nothing to the latent.
        Default: all K. Segmented codes are decoded segment by segment, each multiplied by its
        scale, and overlap-added with EnCodec's triangular weights (:func:`linear_overlap_add`).
        """
        if codebooks is not None:
            encoded = self._as_encoded(encoded)
            keep = self.codebook_mask(codebooks, encoded.codes.shape[1])
            return self._decode(encoded, lambda codes: self.quantizer.decode(codes, keep))
        return self._decode(self._as_encoded(encoded), self.quantizer.decode)

    @staticmethod
    def codebook_mask(codebooks: Sequence[int], k: int) -> list[bool]:
        """Which of ``k`` codebooks ``codebooks`` (indices) selects; ValueError on a bad index."""
        chosen = sorted(set(int(c) for c in codebooks))
        if not chosen:
            raise ValueError("codebooks must name at least one codebook")
        if chosen[0] < 0 or chosen[-1] >= k:
            raise ValueError(f"codebooks {list(codebooks)} out of range: the codes hold codebooks 0..{k - 1}")
        return [i in chosen for i in range(k)]

    def _as_encoded(self, encoded: EncodedAudio | Tensor) -> EncodedAudio:
        if isinstance(encoded, Tensor):
            if self.segment_length is not None:
                raise ValueError(
                    "a segmented codec (segment_seconds set) decodes EncodedAudio, not bare codes: "
                    "the segment layout follows from its length"
                )
            encoded = EncodedAudio(codes=encoded, scale=None, length=encoded.shape[-1] * self.hop_length)
        return encoded

    def _decode(self, encoded: EncodedAudio, to_latent: Callable[[Tensor], Tensor]) -> Tensor:
        segments = self.segments(encoded.length)
        frames = [math.ceil(size / self.hop_length) for _, size in segments]
        if sum(frames) != encoded.codes.shape[-1]:
            raise ValueError(
                f"codes have {encoded.codes.shape[-1]} frames, {len(segments)} segment(s) of "
                f"{encoded.length} samples need {sum(frames)}"
            )
        if encoded.scale is not None and encoded.scale.shape[1] != len(segments):
            raise ValueError(f"scale has {encoded.scale.shape[1]} entries for {len(segments)} segment(s)")
        outputs: list[Tensor] = []
        for s, codes in enumerate(encoded.codes.split(frames, dim=-1)):
            x_hat = self.decoder(to_latent(codes))  # (B, C, frames_s * hop)
            if encoded.scale is not None:
                x_hat = x_hat * encoded.scale[:, s : s + 1]
            outputs.append(x_hat)
        if self.segment_stride is None:
            return outputs[0][..., : encoded.length]
        return linear_overlap_add(outputs, self.segment_stride)[..., : encoded.length]

    # -- chunked file coding ---------------------------------------------------------------------
    # How a long signal is cut so that chunked coding equals whole-signal coding as far as possible:
    # * segmented codecs (``segment_seconds``, EnCodec 48 kHz): the codec's own segments are the
    #   chunks; decoded segments are overlap-added incrementally with the same triangular weights:
    #   equal to ``encode``/``decode`` on the whole.
    # * streamable codecs (causal convolutions, EnCodec 24 kHz): encoder and decoder stream
    #   (:mod:`codecplatform.nn.streaming`), carrying their state across chunks; equal to whole-signal
    #   coding except the last frame, whose missing samples are zeros here (the whole signal pads
    #   them by reflection inside each convolution).
    # * other codecs (DAC): each chunk is coded with ``context_frames`` of neighbouring frames on
    #   both sides, which are dropped; equal to whole-signal coding once the context covers the
    #   networks' receptive field.
    # Signals no longer than one chunk are coded whole. Codecs that normalize without segments get
    # their scale from a first pass over the signal.
    _PROBE_FRAMES = 64  # streaming probes: longer than any layer's start-up need (reflect padding)

    @_grad_off
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
        ``encode`` gives on the whole signal (see the comment above for how chunks join).
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

    @_grad_off_generator
    def decode_chunked(
        self,
        encoded: EncodedAudio,
        chunk_frames: int,
        context_frames: int,
        device: torch.device | str = "cpu",
        codebooks: Sequence[int] | None = None,
    ) -> Iterator[Tensor]:
        """Decode EncodedAudio (codes (1, K, T')) chunk by chunk: yields consecutive (C, n) CPU
        blocks that join into ``decode(encoded, codebooks)[0]`` (see the comment above)."""
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

    # -- inference speed and streaming -----------------------------------------------------------
    def prepare_for_inference(self) -> Codec:
        """Eval mode, no gradients, weight norm folded into plain weights (one fewer weight
        computation per convolution call; the state dict then holds ``weight`` instead of
        ``parametrizations.weight.original0/1``); returns ``self``. See
        :meth:`AudioCodec.prepare_for_inference`."""
        fold_weight_norm(self)
        _activations_in_place(self)
        return super().prepare_for_inference()

    @property
    def can_stream(self) -> bool:
        """Whether encoder and decoder stream (causal convolutions, no whole-signal statistics)
        and the codec needs no whole-signal normalization or segments."""
        if self.normalize or self.segment_length is not None:
            return False
        for part in (self.encoder, self.decoder):
            subs = [m for m in part.modules() if isinstance(m, StreamingModule)]
            if not subs:
                return False
            try:
                for sub in subs:
                    sub.check_streamable()
            except RuntimeError:
                return False
        return True

    @property
    def stream_latency_seconds(self) -> float:
        """Architectural latency of :meth:`stream`: one frame (the encoder needs a whole hop),
        the encoder's look-ahead samples and the decoder's look-ahead frames (EnCodec 24 kHz:
        320 samples = 13.3 ms; SpectroStream 48 kHz: 2 embeddings + the STFT's 480 = 90 ms)."""
        samples = self.hop_length * (1 + self.decoder_lookahead) + self.encoder_lookahead
        return samples / self.sample_rate

    @contextlib.contextmanager
    def stream(self, bandwidth: float | None = None, n_q: int | None = None) -> Iterator[CodecStream]:
        """Chunk-by-chunk coding with carried state (see :meth:`AudioCodec.stream`), equal to
        ``encode``/``decode`` of the whole signal (length a multiple of the hop) once flushed.
        RuntimeError when the codec cannot stream (:attr:`can_stream`)."""
        if not self.can_stream:
            raise RuntimeError(
                f"this {type(self.encoder).__name__} codec cannot stream: it needs causal convolutions "
                "without time_layer_norm, normalize=False and no segment_seconds"
            )
        n_q = self.resolve_n_q(bandwidth, n_q)
        with streaming(self.encoder), streaming(self.decoder):
            yield CodecStream(self, n_q)

    @property
    def encoder_lookahead(self) -> int:
        """Samples of zeros a streaming encoder needs after the signal to give its last frames
        (SpectroStream's reverse-causal STFT: ``stream_flush_samples``); 0 for most encoders."""
        return int(self.encoder.stream_flush_samples)

    @property
    def decoder_lookahead(self) -> int:
        """Zero latent frames a streaming decoder needs after the codes to give its last samples
        (SpectroStream: ``stream_flush_frames`` = 1 embedding); 0 for most decoders."""
        return int(self.decoder.stream_flush_frames)

    def bitstream_layout(self) -> dict[str, Any]:
        return {
            "sample rate": self.sample_rate,
            "channels": self.channels,
            "hop length": self.hop_length,
            "segment length": self.segment_length,
            "segment stride": self.segment_stride,
            "normalize": bool(self.normalize),
        }

    def describe(self) -> dict[str, str]:
        return {
            **super().describe(),
            "family": type(self.encoder).__name__.removesuffix("Encoder"),
            "encoder": type(self.encoder).__name__,
            "quantizer": type(self.quantizer).__name__,
            "decoder": type(self.decoder).__name__,
        }

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the parts (for READMEs and logs)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {
            "encoder": count(self.encoder),
            "quantizer": count(self.quantizer),
            "decoder": count(self.decoder),
            "total": count(self),
        }


def _activations_in_place(module: torch.nn.Module) -> int:
    """Set ``inplace=True`` on the ELU/ReLU/LeakyReLU layers of every ``nn.Sequential`` inside
    ``module`` that follow another computing layer there (their input is a fresh tensor nobody
    else reads; the first layer's input is the caller's and is left alone); returns the count.
    Inference only: saves one allocation and one pass over memory per activation."""
    activations = (torch.nn.ELU, torch.nn.ReLU, torch.nn.LeakyReLU)
    changed = 0
    for seq in module.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        layers = list(seq)
        for previous, layer in zip(layers, layers[1:]):
            if isinstance(layer, activations) and not isinstance(previous, (torch.nn.Identity, *activations)):
                layer.inplace = True
                changed += 1
    return changed


class CodecStream:
    """The stream of :meth:`Codec.stream`: ``encode`` audio chunks of any length to the code
    frames they complete, ``decode`` code frames to their audio, ``flush_*`` at the end (the
    look-ahead of the encoder / decoder, zeros). Encoder and decoder streams are independent
    (a sender and a receiver). Every call runs in ``codec.grad_off()``."""

    def __init__(self, codec: Codec, n_q: int) -> None:
        self.codec, self.n_q = codec, n_q
        self.samples_in = 0  # audio samples given to encode
        self.frames_in = 0  # code frames given to decode

    def encode(self, chunk: Tensor) -> Tensor:
        """(B, C, n) audio -> (B, K, m) codes of the frames this chunk completes (m may be 0)."""
        codec = self.codec
        with codec.grad_off():
            self.samples_in += chunk.shape[-1]
            z = codec.encoder(chunk)
            if not z.shape[-1]:
                return torch.zeros(chunk.shape[0], self.n_q, 0, dtype=torch.long, device=chunk.device)
            return codec.quantizer.encode(z, self.n_q)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, K, m) codes -> (B, C, samples) audio that these frames complete."""
        codec = self.codec
        with codec.grad_off():
            self.frames_in += codes.shape[-1]
            if not codes.shape[-1]:
                return torch.zeros(codes.shape[0], codec.channels, 0, device=codes.device)
            return codec.decoder(codec.quantizer.decode(codes))

    def flush_encoder(self, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Complete the last frame and the encoder's look-ahead with zeros -> the last codes."""
        pad = -self.samples_in % self.codec.hop_length + self.codec.encoder_lookahead
        return self.encode(torch.zeros(batch, self.codec.channels, pad, device=device))

    def flush_decoder(self, batch: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Feed the decoder's look-ahead (zero latent frames) -> the last samples."""
        codec = self.codec
        flush = codec.decoder_lookahead
        with codec.grad_off():
            if not flush:
                return torch.zeros(batch, codec.channels, 0, device=device)
            return codec.decoder(torch.zeros(batch, codec.quantizer.dimension, flush, device=device))


def load_codec_state(
    path: str | Path, map_location: str | torch.device = "cpu", weights: str = "auto"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(codec config, codec state dict) of a training checkpoint or an imported one.

    Both hold ``codec_config`` (``{class_path, init_args}``) and a ``state_dict`` whose
    ``codec.`` entries are the codec's trained (raw) weights. A training run with generator EMA
    (``GANCodecModule(generator_ema=...)``) also stores ``codec_ema.`` entries (the EMA of every
    weight and codebook) and ``ema_updates`` (how many updates they average). ``weights`` picks:

    - ``"auto"``: the EMA weights when present and updated at least once (what that run
      validated and tested with), else the raw ones;
    - ``"raw"``: the ``codec.`` entries;
    - ``"ema"``: the ``codec_ema.`` entries, or ValueError when the checkpoint has none.

    The prefix is removed here.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain data only, so a
    file that would build other objects (and could run code while unpickling) is refused, not
    run. Checkpoints of ``codecplatform fit`` (hyperparameters as plain config data, callback,
    optimizer, scheduler, loop and data-module states) and of ``import-checkpoint`` need nothing
    beyond that. ValueError ``"<path> is not a codec checkpoint: ..."`` for a file torch cannot
    read or refuses.
    """
    if weights not in ("auto", "raw", "ema"):
        raise ValueError(f"weights must be 'auto', 'raw' or 'ema', got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as error:  # weights_only refused an object, or not a pickle at all
        raise ValueError(
            f"{path} is not a codec checkpoint: torch.load(weights_only=True) refuses it "
            f"({_load_error_detail(error)}): it is not tensors and plain data only, so it is not loaded"
        ) from error
    except Exception as error:  # noqa: BLE001  (text, empty, truncated, a zip of something else: any failure)
        raise ValueError(
            f"{path} is not a codec checkpoint: torch.load cannot read it "
            f"({type(error).__name__}: {_load_error_detail(error)})"
        ) from error
    config = checkpoint.get("codec_config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds no codec config ('codec_config'): was it written by `codecplatform fit` "
            "or `codecplatform import-checkpoint`?"
        )
    full = checkpoint.get("state_dict")
    if not isinstance(full, dict):
        raise ValueError(f"{path} holds no state dict ('state_dict') of tensors")
    has_ema = any(k.startswith("codec_ema.") for k in full)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{path} holds no generator EMA weights ('codec_ema.'): load weights='raw'")
    updates = full.get("ema_updates")
    updated = updates is None or int(updates) > 0
    prefix = "codec_ema." if weights == "ema" or (weights == "auto" and has_ema and updated) else "codec."
    state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    return config, state


def _load_error_detail(error: BaseException, limit: int = 200) -> str:
    """The informative part of a ``torch.load`` error on one line (its boilerplate dropped)."""
    boilerplate = ("Weights only load failed", "Check the documentation of torch.load")
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in lines if not line.startswith(boilerplate)]
    lines = [line for line in lines if line and not line.startswith("Please file an issue")]
    detail = " ".join(" ".join(lines).split()) or ("unexpected end of file" if isinstance(error, EOFError) else "")
    detail = detail or type(error).__name__
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


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
    ``_linear_overlap_add``.)
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


def key_list(keys: list[str], limit: int = 12) -> str:
    """The first ``limit`` of ``keys``, comma-separated, and how many more (for error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_codec_state(codec: torch.nn.Module, state: dict[str, Tensor], what: str = "state dict") -> None:
    """Raise ValueError naming missing and unexpected keys and shape mismatches of ``state``
    against ``codec``'s own state dict (what a strict ``load_state_dict`` would refuse)."""
    own = codec.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {key_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {key_list(shapes)}")
    if problems:
        raise ValueError(f"the {what} does not fit this codec (different architecture): " + "; ".join(problems))
