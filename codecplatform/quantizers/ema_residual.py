"""Residual vector quantization: a stack of codebooks, each quantizing what the previous left."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.quantizers.dropout import QuantizerDropout
from codecplatform.quantizers.ema_codebook import EMACodebook
from codecplatform.quantizers.residual import ResidualQuantizer, StageHook, residual_stack
from codecplatform.types import QuantizerOutput


class ResidualVectorQuantizer(ResidualQuantizer):
    """RVQ with EMA codebooks (EnCodec): (B, D, T') -> QuantizerOutput, codes (B, K, T').

    Args:
        dimension: latent size D.
        n_q: number of codebooks (EnCodec: 32 at 24 kHz, 16 at 48 kHz).
        codebook_size: entries per codebook.
        decay, epsilon, kmeans_init, kmeans_iters, threshold_ema_dead_code: see ``EMACodebook``.
        dropout: how many codebooks each training example uses (``None``: all of them).
        stage_hook: transforms the residual before each stage, in training and ``encode``
            alike (``None``: identity; MUFFIN: ``quantizers.band_limit.BandLimit``).
        search_dropout: training-only dropout in each codebook's nearest-neighbour search (see
            ``EMACodebook``; MUFFIN: 0.1; default 0, EnCodec).

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
        stage_hook: StageHook | None = None,
        search_dropout: float = 0.0,
    ):
        super().__init__()
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        self.dimension = dimension
        self.n_q = n_q
        self.codebook_sizes = [codebook_size] * n_q
        self.dropout = dropout if dropout is not None else QuantizerDropout()
        self.stage_hook = stage_hook
        self.layers = nn.ModuleList(
            EMACodebook(
                dimension,
                codebook_size,
                decay,
                epsilon,
                kmeans_init,
                kmeans_iters,
                threshold_ema_dead_code,
                search_dropout,
            )
            for _ in range(n_q)
        )

    def forward(self, z: Tensor, n_q: int | Tensor | None = None) -> QuantizerOutput:
        self._check_latent(z)
        n_q = self._resolve_n_q(z, n_q)  # (B,)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            run = residual_stack(self.layers, z, n_q, detach_outputs=True, hook=self.stage_hook)
            z_q = z + (run.z_q - z).detach()  # straight-through for the whole stack
            commits = [losses["commit"] for losses in run.losses]
            commit = torch.stack(commits).mean() if commits else z.sum() * 0.0
        return QuantizerOutput(z_q=z_q, codes=run.codes, losses={"commit": commit}, n_q=n_q)
