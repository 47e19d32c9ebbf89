"""Dataclasses that cross module borders.

Shape names used everywhere in the platform:
    x, x_hat   audio             (B, C, T)      C audio channels, T samples
    z, z_q     latents           (B, D, T')     D latent dim, T' frames
    codes      discrete tokens   (B, K, T')     K codebooks (residual levels)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class QuantizerOutput:
    """What a quantizer (one codebook or a residual stack) returns.

    z_q:     quantized latents (B, D, T'), with the straight-through gradient to the input.
    codes:   code indices (B, K, T') int64; K = number of codebooks that were run.
    losses:  named auxiliary losses ("commit", "codebook"), already averaged; their names are
             keys of the training ``loss_weights`` dict.
    n_q:     codebooks used per example (B,) int64 (differs per example under quantizer dropout).
    metrics: detached scalars for logging (e.g. "perplexity/0").
    """

    z_q: Tensor
    codes: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    n_q: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class CodecOutput:
    """What ``Codec.forward`` returns: reconstruction plus everything needed for losses."""

    x_hat: Tensor  # (B, C, T)
    z: Tensor  # (B, D, T') encoder output before quantization
    quantized: QuantizerOutput


@dataclass
class DiscriminatorOutput:
    """Logits and intermediate feature maps of one or more (sub-)discriminators.

    logits:   one tensor per sub-discriminator (any shape with batch first).
    features: per sub-discriminator, the list of its layer activations (for feature matching).
    names:    per sub-discriminator, a short name used in log keys (e.g. "msstft_2048").
    """

    logits: list[Tensor]
    features: list[list[Tensor]]
    names: list[str]

    def __add__(self, other: DiscriminatorOutput) -> DiscriminatorOutput:
        return DiscriminatorOutput(self.logits + other.logits, self.features + other.features, self.names + other.names)

    @staticmethod
    def concat(outputs: list[DiscriminatorOutput]) -> DiscriminatorOutput:
        merged = DiscriminatorOutput([], [], [])
        for out in outputs:
            merged = merged + out
        return merged


def check_audio(x: Tensor, channels: int | None = None, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is (B, C, T) floating audio with finite values."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be (batch, channels, samples), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels, the model expects {channels}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")


@dataclass
class EncodedAudio:
    """What ``Codec.encode`` returns and ``Codec.decode`` takes.

    codes:  (B, K, T') int64 code indices; with segmented inference (``Codec.segment_seconds``)
            the segments' frames are joined along time.
    scale:  (B, S, 1) input scale per example and segment (S = 1 without segments) when the
            codec normalizes its input, else None.
    length: number of audio samples of the original signal (decode trims to it).
    """

    codes: Tensor
    scale: Tensor | None
    length: int

    def to(self, device: torch.device | str) -> EncodedAudio:
        """The same codes and scale on ``device``."""
        scale = None if self.scale is None else self.scale.to(device)
        return EncodedAudio(codes=self.codes.to(device), scale=scale, length=self.length)
