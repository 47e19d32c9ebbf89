"""Base class of quantizers: continuous latents (B, D, T') -> QuantizerOutput."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from codecplatform.quantizers.dropout import QuantizerDropout
from codecplatform.types import QuantizerOutput


class Quantizer(nn.Module):
    """A (residual) quantizer over latent frames.

    Subclasses set ``dimension`` (D), ``n_q`` (the maximum number of codebooks) and
    ``codebook_sizes`` (entries per codebook, one per codebook).

    ``forward(z, n_q)`` quantizes for training and evaluation: ``n_q`` is None (all codebooks),
    an int (the same for the whole batch) or a (B,) tensor (per example, quantizer dropout);
    0 bypasses quantization for that example (z_q = z).
    ``encode``/``decode`` are the inference path: codes (B, K, T') <-> z_q (B, D, T').
    """

    dimension: int
    n_q: int
    codebook_sizes: list[int]
    dropout: QuantizerDropout = QuantizerDropout()
    #: the names of ``QuantizerOutput.losses`` (weight keys of the training modules)
    loss_names: tuple[str, ...] = ("commit",)

    def forward(self, z: Tensor, n_q: int | Tensor | None = None) -> QuantizerOutput:  # pragma: no cover
        raise NotImplementedError

    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, codes: Tensor, keep: list[bool] | None = None) -> Tensor:  # pragma: no cover
        """codes (B, K, T') -> z_q (B, D, T'); ``keep``: only the codebooks marked True."""
        raise NotImplementedError

    def sample_n_q(
        self, batch_size: int, n_q_choices: list[int] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training-time codebook counts per example (B,), from the dropout policy.

        ``n_q_choices`` are the allowed counts (the codec's bandwidths); default 1..n_q.
        """
        return self.dropout.sample(batch_size, n_q_choices or list(range(1, self.n_q + 1)), generator)

    @property
    def bits_per_frame(self) -> list[float]:
        """Bits each codebook adds per latent frame: log2 of its size."""
        return [math.log2(size) for size in self.codebook_sizes]

    def n_q_for_bits(self, bits_per_frame: float) -> int:
        """Largest number of codebooks whose codes fit in ``bits_per_frame`` bits (at least 1)."""
        total, n = 0.0, 0
        for bits in self.bits_per_frame:
            if total + bits > bits_per_frame + 1e-6:
                break
            total, n = total + bits, n + 1
        return max(1, n)

    def _resolve_n_q(self, z: Tensor, n_q: int | Tensor | None) -> Tensor:
        """n_q argument -> (B,) int64 tensor on z's device, each in [0, self.n_q] (0: bypass)."""
        batch = z.shape[0]
        if n_q is None:
            n_q = self.n_q
        if isinstance(n_q, int):
            if not 0 <= n_q <= self.n_q:
                raise ValueError(f"n_q={n_q} is out of range: this quantizer has 1..{self.n_q} codebooks (0: bypass)")
            return torch.full((batch,), n_q, dtype=torch.long, device=z.device)
        n_q = n_q.to(device=z.device, dtype=torch.long)
        if n_q.shape != (batch,):
            raise ValueError(f"n_q must be an int or a ({batch},) tensor, got shape {tuple(n_q.shape)}")
        if int(n_q.min()) < 0 or int(n_q.max()) > self.n_q:
            raise ValueError(f"n_q values must lie in 0..{self.n_q} (0: bypass), got {n_q.tolist()}")
        return n_q
