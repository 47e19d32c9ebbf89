"""Residual vector quantization: a stack of codebooks, each quantizing what the previous left."""

from __future__ import annotations

from typing import Literal

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
        dropout_mode: how per-example counts act (see ``residual_stack``'s ``mask_residual``).
            ``"mask_sum"`` (default; SpectroStream's official RVQ): every codebook up to the batch's
            largest count quantizes the unmasked residual of every example and updates its EMA
            statistics from every frame; example b adds codebooks 0..n_q[b]-1 to its sum; the
            commitment loss counts every stage run on the examples not bypassed.
            ``"mask_residual"``: example b also subtracts, trains and counts in the commitment loss
            only codebooks 0..n_q[b]-1 (a stage above most examples' counts learns from few frames).
            With one count per batch (EnCodec) the two are the same.
        straight_through: ``"stack"`` (default; audiocraft's EnCodec): once for the sum,
            ``z + (z_q - z).detach()``, so d z_q / d z is the identity (and z_q = z for n_q = 0).
            ``"per_stage"`` (MUFFIN's official ``specEMAQuantizeModules.py``): each stage adds
            ``input + (output - input).detach()`` with its (band-limited) input, so d z_q / d z is
            the sum of the used stages' band filters (n_q x the identity without a stage hook).

    n_q[b] = 0 bypasses quantization (z_q = z).
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
        dropout_mode: Literal["mask_sum", "mask_residual"] = "mask_sum",
        straight_through: Literal["stack", "per_stage"] = "stack",
    ):
        super().__init__()
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        if dropout_mode not in ("mask_sum", "mask_residual"):
            raise ValueError(f"dropout_mode must be 'mask_sum' or 'mask_residual', got {dropout_mode!r}")
        if straight_through not in ("stack", "per_stage"):
            raise ValueError(f"straight_through must be 'stack' or 'per_stage', got {straight_through!r}")
        self.dropout_mode = dropout_mode
        self.straight_through = straight_through
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
            per_stage = self.straight_through == "per_stage"
            run = residual_stack(
                self.layers,
                z,
                n_q,
                detach_outputs=True,
                hook=self.stage_hook,
                mask_residual=self.dropout_mode == "mask_residual",
                straight_through=per_stage,
            )
            if per_stage:
                z_q = run.z_q  # each stage applied its own straight-through
            else:
                z_q = z + (run.z_q - z).detach()  # straight-through for the whole stack
            commits = [losses["commit"] for losses in run.losses]
            commit = torch.stack(commits).mean() if commits else z.sum() * 0.0
        return QuantizerOutput(z_q=z_q, codes=run.codes, losses={"commit": commit}, n_q=n_q)
