"""Base classes for codec encoders and decoders (the generator's two halves)."""

from __future__ import annotations

from torch import Tensor, nn


class Encoder(nn.Module):
    """Audio to continuous latents: (B, C, T) -> (B, D, T'), T' = ceil(T / hop_length).

    Subclasses set ``channels`` (audio channels C), ``dimension`` (latent size D) and
    ``hop_length`` (samples per latent frame).
    """

    channels: int
    dimension: int
    hop_length: int

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Decoder(nn.Module):
    """Latents to audio: (B, D, T') -> (B, C, T' * hop_length)."""

    channels: int
    dimension: int
    hop_length: int

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
