"""Signal level: DC removal and peak normalization (pure functions)."""

from __future__ import annotations

from torch import Tensor


def remove_dc_and_normalize_peak(x: Tensor, peak: float = 0.8, eps: float = 1e-9) -> Tensor:
    """DAC's discriminator input preprocessing, per row of the last axis: (..., T) -> (..., T).

    Subtracts the mean over time (DC offset), then scales so that max |x| = ``peak``:
    ``peak * (x - mean) / (max|x - mean| + eps)``. The official ``Discriminator.preprocess``
    applies this (peak 0.8, eps 1e-9) to real and generated audio before every sub-discriminator.
    """
    x = x - x.mean(dim=-1, keepdim=True)
    return peak * x / (x.abs().amax(dim=-1, keepdim=True) + eps)
