"""Codec = encoder -> quantizer -> decoder, usable without Lightning (notebooks, inference).

Chunked file coding is mixed in from :mod:`codecplatform.models.chunking`, streaming state lives in
:mod:`codecplatform.models.stream`, checkpoint reading in :mod:`codecplatform.checkpoints.io`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.models.base import AudioCodec, grad_off_method
from codecplatform.models.batching import check_lengths, decode_batch, encode_batch
from codecplatform.models.chunking import ChunkedCoding, linear_overlap_add
from codecplatform.models.stream import CodecStream, StreamBatch
from codecplatform.nn.conv import fold_weight_norm
from codecplatform.nn.streaming import StreamingModule, streaming
from codecplatform.quantizers.base import Quantizer
from codecplatform.types import CodecOutput, EncodedAudio, check_audio


class Codec(ChunkedCoding, AudioCodec):
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

    @grad_off_method
    def encode(
        self,
        x: Tensor,
        bandwidth: float | None = None,
        n_q: int | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> EncodedAudio:
        """(B, C, T) audio -> EncodedAudio, K codebooks from ``bandwidth`` (kbps) or ``n_q``
        (default: all codebooks).

        With S = ``len(self.segments(T))`` segments (S = 1 unless ``segment_seconds``), the
        segments' codes are concatenated along time: codes (B, K, sum_s ceil(T_s / hop)), and
        ``scale`` is (B, S, 1), the per-segment input scale (None unless ``normalize``).

        ``lengths`` (B,): a padded batch; item b is ``x[b, :, :lengths[b]]`` and gets exactly the
        codes (and scales) of encoding it alone, in its first frames; later frames hold -1 (and
        scale 1.0). Decode with the same ``lengths``. See :mod:`codecplatform.models.batching`
        for which items share a network call.
        """
        if bandwidth is not None and n_q is not None:
            raise ValueError("give bandwidth or n_q, not both")
        check_audio(x, self.channels)
        if bandwidth is not None:
            n_q = self.n_q_for_bandwidth(bandwidth)
        if lengths is not None:
            return encode_batch(self, x, check_lengths(lengths, x.shape[0], x.shape[-1]), n_q)
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

    @grad_off_method
    def decode(
        self,
        encoded: EncodedAudio | Tensor,
        codebooks: Sequence[int] | None = None,
        lengths: Tensor | Sequence[int] | None = None,
    ) -> Tensor:
        """EncodedAudio (or bare codes (B, K, T') of an unsegmented codec) -> audio (B, C, T).

        ``codebooks``: decode from these codebook indices only (0-based, each < K; codebook
        ablation: "what does codebook 1 carry?"); the others contribute nothing to the latent.
        Default: all K. Segmented codes are decoded segment by segment, each multiplied by its
        scale, and overlap-added with EnCodec's triangular weights (:func:`linear_overlap_add`).

        ``lengths`` (B,): the samples of each item of a batch encoded with ``lengths``; gives
        (B, C, max(lengths)), item b's audio (as decoded alone) in its first ``lengths[b]``
        samples and zeros after.
        """
        keep = None
        if codebooks is not None:
            encoded = self._as_encoded(encoded)
            keep = self.codebook_mask(codebooks, encoded.codes.shape[1])
        to_latent = lambda codes: self.quantizer.decode(codes, keep)  # noqa: E731
        if lengths is not None:
            if isinstance(encoded, Tensor):
                encoded = EncodedAudio(codes=encoded, scale=None, length=0)
            total = max(int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths))
            return decode_batch(self, encoded, check_lengths(lengths, encoded.codes.shape[0], total), to_latent)
        if bool((encoded if isinstance(encoded, Tensor) else encoded.codes).lt(0).any()):
            raise ValueError("the codes hold -1 (padding of a batch encoded with lengths): pass the same lengths")
        return self._decode(self._as_encoded(encoded), to_latent)

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
    def stream(
        self, bandwidth: float | None = None, n_q: int | None = None, batch: int | None = None
    ) -> Iterator[CodecStream | StreamBatch]:
        """Chunk-by-chunk coding with carried state (see :meth:`AudioCodec.stream`), equal to
        ``encode``/``decode`` of the whole signal (length a multiple of the hop) once flushed.
        ``batch=N``: N independent streams in one batch (:class:`StreamBatch`: per-stream inputs
        and outputs, streams start (``reset``) and stop at any call), each equal to its own stream.
        RuntimeError when the codec cannot stream (:attr:`can_stream`)."""
        if not self.can_stream:
            raise RuntimeError(
                f"this {type(self.encoder).__name__} codec cannot stream: it needs causal convolutions "
                "without time_layer_norm, normalize=False and no segment_seconds"
            )
        n_q = self.resolve_n_q(bandwidth, n_q)
        with streaming(self.encoder), streaming(self.decoder):
            yield CodecStream(self, n_q) if batch is None else StreamBatch(self, n_q, batch)

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
