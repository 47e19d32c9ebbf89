"""Residual vector quantization: a stack of codebooks, each quantizing what the previous left."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.quantizers.base import Quantizer
from codecplatform.quantizers.dropout import QuantizerDropout
from codecplatform.quantizers.residual import residual_stack
from codecplatform.quantizers.vq import EMACodebook
from codecplatform.types import QuantizerOutput


class ResidualVectorQuantizer(Quantizer):
    """RVQ with EMA codebooks (EnCodec): (B, D, T') -> QuantizerOutput, codes (B, K, T').

    Args:
        dimension: latent size D.
        n_q: number of codebooks (EnCodec: 32 at 24 kHz, 16 at 48 kHz).
        codebook_size: entries per codebook.
        decay, epsilon, kmeans_init, kmeans_iters, threshold_ema_dead_code: see ``EMACodebook``.
        dropout: how many codebooks each training example uses (``None``: all of them).

    With per-example counts, every codebook up to the largest count runs on the whole batch,
    and example b only adds (and trains) codebooks 0..n_q[b]-1; n_q[b] = 0 bypasses quantization
    (z_q = z). The straight-through estimator is applied once to the sum, so d z_q / d z is the
    identity whatever n_q is.
    """

    def __init__(
        self,
        dimension: int = 128,
        n_q: int = 32,
        codebook_size: int = 1024,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 50,
        threshold_ema_dead_code: float = 2.0,
        dropout: QuantizerDropout | None = None,
    ):
        super().__init__()
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        self.dimension = dimension
        self.n_q = n_q
        self.codebook_sizes = [codebook_size] * n_q
        self.dropout = dropout if dropout is not None else QuantizerDropout()
        self.layers = nn.ModuleList(
            EMACodebook(dimension, codebook_size, decay, epsilon, kmeans_init, kmeans_iters, threshold_ema_dead_code)
            for _ in range(n_q)
        )

    def forward(self, z: Tensor, n_q: int | Tensor | None = None) -> QuantizerOutput:
        n_q = self._resolve_n_q(z, n_q)  # (B,)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            run = residual_stack(self.layers, z, n_q, detach_outputs=True)
            z_q = z + (run.z_q - z).detach()  # straight-through for the whole stack
            commits = [losses["commit"] for losses in run.losses]
            commit = torch.stack(commits).mean() if commits else z.sum() * 0.0
        return QuantizerOutput(z_q=z_q, codes=run.codes, losses={"commit": commit}, n_q=n_q)

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """(B, D, T') -> codes (B, n_q, T') int64."""
        n = self.n_q if n_q is None else n_q
        if not 1 <= n <= self.n_q:
            raise ValueError(f"n_q={n} is out of range: this quantizer has 1..{self.n_q} codebooks")
        residual = z.float()
        codes = []
        for layer in self.layers[:n]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, K, T') -> z_q (B, D, T'), K <= n_q."""
        if codes.dim() != 3 or codes.shape[1] > self.n_q:
            raise ValueError(f"codes must be (B, K<= {self.n_q}, T'), got shape {tuple(codes.shape)}")
        z_q = 0.0
        for k in range(codes.shape[1]):
            z_q = z_q + self.layers[k].decode(codes[:, k])
        return z_q
