"""Base classes for codec encoders and decoders (the generator's two halves)."""

from __future__ import annotations

from torch import Tensor, nn


class Encoder(nn.Module):
    """Audio to continuous latents: (B, C, T) -> (B, D, T'), T' = ceil(T / hop_length).

    Subclasses set ``channels`` (audio channels C), ``dimension`` (latent size D) and
    ``hop_length`` (samples per latent frame). ``stream_flush_samples``: zeros a stream must be
    fed after the signal to give its last frames (a look-ahead; SpectroStream's STFT), 0 by default.
    """

    channels: int
    dimension: int
    hop_length: int
    stream_flush_samples: int = 0

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Decoder(nn.Module):
    """Latents to audio: (B, D, T') -> (B, C, T' * hop_length).

    ``stream_flush_frames``: zero latent frames a stream must be fed after the latents to give its
    last samples (a look-ahead; SpectroStream: 1), 0 by default.
    """

    channels: int
    dimension: int
    hop_length: int
    stream_flush_frames: int = 0

    def forward(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
