"""Real-time coding with carried state: the stream object of :meth:`Codec.stream
<codecplatform.models.codec.Codec.stream>`, chunks of audio in, the code frames they complete out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from codecplatform.models.codec import Codec


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
