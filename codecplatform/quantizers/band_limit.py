"""MUFFIN's multi-band spectral RVQ (MBS-RVQ) band filter, as a stage hook of the residual loop.

Before residual stage k, the residual latent (B, D, T') is low-passed along time to 1/s_k of the
latent Nyquist frequency (Ng et al. 2024; dianwen-ng/MUFFIN
``ResidualVectorQuantization.fft_bandfilter``)::

    X = rfft(residual, dim=time)                       (B, D, T'//2 + 1) complex, "bins" = T'//2 + 1
    X[..., floor(bins / s_k) + 1 :] = 0                bins 0..floor(bins / s_k) are kept
    stage input = irfft(X, n=T')                       (B, D, T')

s_k = 1 leaves the residual untouched (no FFT at all, as officially). Stage k's codebook
quantizes the filtered residual; its output is subtracted from the *unfiltered* residual
(official: ``residual = residual - quantized.detach()``), which :func:`residual_stack` does.
Official scales: [4, 2, 1, 1] at 75 Hz (4 codebooks), [4, 4, 2, 2, 1, 1, 1, 1] at 12.5 and
6.25 Hz (8 codebooks). The cut is a fixed fraction of the latent Nyquist frequency whatever T'
(up to the rounding of floor(bins / s)), though the filter is circular over the T' frames that
are quantized together. It runs in training and in ``encode`` alike: the official ``encode``
skips the filter, ours does not, so inference codes are the codes training produced.

Use: ``ResidualVectorQuantizer(stage_hook=BandLimit(scales=[4, 2, 1, 1]), ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from codecplatform.quantizers.residual import StageHook


def band_limit(x: Tensor, scale: int) -> Tensor:
    """Low-pass (B, D, T') along time to 1/``scale`` of the Nyquist frequency -> (B, D, T').

    Keeps rfft bins 0..floor(bins / scale) with bins = T' // 2 + 1 and zeroes the rest; computed
    in float32 (at least), returned in ``x``'s dtype. ``scale`` 1 returns ``x`` itself.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return x
    length = x.shape[-1]
    spectrum = torch.fft.rfft(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)  # (B, D, T'//2+1)
    keep = spectrum.shape[-1] // scale + 1  # bins 0..floor(bins / scale)
    spectrum = torch.cat([spectrum[..., :keep], torch.zeros_like(spectrum[..., keep:])], dim=-1)
    return torch.fft.irfft(spectrum, n=length, dim=-1).to(x.dtype)


class BandLimit(StageHook):
    """MBS-RVQ stage hook: before stage k, low-pass the residual to 1/``scales[k]`` of the latent
    Nyquist frequency: (B, D, T'), k -> (B, D, T'). See the module docstring.

    Args:
        scales: one integer >= 1 per residual stage (its codebook); its length must equal the
            quantizer's ``n_q`` (checked when the hook meets a stage it has no scale for).
    """

    def __init__(self, scales: Sequence[int] = (4, 2, 1, 1)) -> None:
        super().__init__()
        scales = [int(s) for s in scales]
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"scales must be a non-empty list of integers >= 1, got {scales}")
        self.scales = scales

    def forward(self, residual: Tensor, stage: int) -> Tensor:
        """(B, D, T'), stage k -> the residual low-passed to 1/scales[k] of Nyquist, (B, D, T')."""
        if not 0 <= stage < len(self.scales):
            raise ValueError(f"stage {stage} has no band scale: scales {self.scales} cover {len(self.scales)} stages")
        return band_limit(residual, self.scales[stage])

    def extra_repr(self) -> str:
        return f"scales={self.scales}"
