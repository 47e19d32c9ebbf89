"""Codec = encoder -> quantizer -> decoder, usable without Lightning (notebooks, inference)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.models.base import AudioCodec
from codecplatform.quantizers.base import Quantizer
from codecplatform.types import CodecOutput, EncodedAudio, check_audio


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

    @torch.no_grad()
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

    @torch.no_grad()
    def decode(self, encoded: EncodedAudio | Tensor) -> Tensor:
        """EncodedAudio (or bare codes (B, K, T') of an unsegmented codec) -> audio (B, C, T).

        Segmented codes are decoded segment by segment, each multiplied by its scale, and
        overlap-added with EnCodec's triangular weights (:func:`linear_overlap_add`).
        """
        if isinstance(encoded, Tensor):
            if self.segment_length is not None:
                raise ValueError(
                    "a segmented codec (segment_seconds set) decodes EncodedAudio, not bare codes: "
                    "the segment layout follows from its length"
                )
            encoded = EncodedAudio(codes=encoded, scale=None, length=encoded.shape[-1] * self.hop_length)
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
            x_hat = self.decoder(self.quantizer.decode(codes))  # (B, C, frames_s * hop)
            if encoded.scale is not None:
                x_hat = x_hat * encoded.scale[:, s : s + 1]
            outputs.append(x_hat)
        if self.segment_stride is None:
            return outputs[0][..., : encoded.length]
        return linear_overlap_add(outputs, self.segment_stride)[..., : encoded.length]

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        """Build a codec from its ``{class_path, init_args}`` config (as in experiment YAMLs)."""
        from codecplatform.config import instantiate

        codec = instantiate(config, cls)
        if not isinstance(codec, Codec):
            raise TypeError(f"config builds a {type(codec).__name__}, not a Codec")
        return codec

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, map_location: str | torch.device = "cpu", weights: str = "auto"
    ) -> Codec:
        """Load the codec of a training checkpoint (from ``codecplatform fit``) without Lightning.

        The checkpoint carries the codec's config (``codec_config``) and the training module's
        state dict, whose ``codec.`` entries are the codec's trained weights and codebooks and, with
        ``generator_ema``, whose ``codec_ema.`` entries are their exponential moving average (see
        :func:`load_codec_state`; imported official weights have the ``codec.`` layout).
        ``weights``: ``"auto"`` (default) the EMA weights when the checkpoint has them (as the
        training run evaluated), else the trained ones; ``"raw"`` the trained ones; ``"ema"``
        the EMA weights or an error.
        """
        config, state = load_codec_state(path, map_location, weights)
        codec = cls.from_config(config)
        codec.load_state_dict(state)
        return codec.eval()

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the parts (for READMEs and logs)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {
            "encoder": count(self.encoder),
            "quantizer": count(self.quantizer),
            "decoder": count(self.decoder),
            "total": count(self),
        }


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
    """
    if weights not in ("auto", "raw", "ema"):
        raise ValueError(f"weights must be 'auto', 'raw' or 'ema', got {weights!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    config = checkpoint.get("codec_config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds no codec config ('codec_config'): was it written by `codecplatform fit` "
            "or `codecplatform import-checkpoint`?"
        )
    full = checkpoint["state_dict"]
    has_ema = any(k.startswith("codec_ema.") for k in full)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{path} holds no generator EMA weights ('codec_ema.'): load weights='raw'")
    updates = full.get("ema_updates")
    updated = updates is None or int(updates) > 0
    prefix = "codec_ema." if weights == "ema" or (weights == "auto" and has_ema and updated) else "codec."
    state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    return config, state


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
