"""Global Response Normalization over channels for 1D features, as MUFFIN uses it.

MUFFIN (official ``muffin/modules/utils.py``, adapted from ConvNeXt V2) applies GRN to
(B, C, T) features with the roles of the axes as follows::

    Gx = ||x||_2 over channels            (B, 1, T)
    Nx = Gx / (mean_t Gx + 1e-8)          (B, 1, T)
    y  = gamma * (x * Nx) + beta + x      (B, C, T)

``gamma`` and ``beta`` are per-channel parameters (1, C, 1) initialised to zero, so the layer
starts as the identity. (ConvNeXt V2's GRN takes the norm over the spatial axes and divides by
its mean over channels; MUFFIN's 1D version swaps the two, as written above.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.nn.conv import steps_in_use


def grn(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-8, keep: Tensor | None = None) -> Tensor:
    """GRN of ``x`` (B, C, T) with ``gamma``, ``beta`` broadcastable to it -> (B, C, T).
    ``keep`` (B, 1, T) bool: the mean over time covers only these steps (items of a padded batch,
    zero beyond their lengths).

    Computed in at least float32, returned in ``x``'s dtype.
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dtype)
    # ||x|| over channels as sqrt(sum x^2): linalg.vector_norm over dim 1 of (B, C, T) is ~30x slower on CPU
    # (benchmarks/RESULTS.md). Where sum x^2 is 0 the norm is 0 with gradient 0, as vector_norm's.
    sq = xf.square().sum(dim=1, keepdim=True)  # (B, C, T) -> (B, 1, T)
    gx = sq.clamp_min(torch.finfo(dtype).tiny).sqrt() * (sq > 0)
    if keep is None:
        mean = gx.mean(dim=-1, keepdim=True)
    else:
        mean = gx.sum(dim=-1, keepdim=True) / keep.sum(dim=-1, keepdim=True)  # (B, 1, 1)
    nx = gx / (mean + eps)  # (B, 1, T)
    return (gamma.to(dtype) * (xf * nx) + beta.to(dtype) + xf).to(x.dtype)


class GRN(nn.Module):
    """Global Response Normalization (MUFFIN's 1D form): (B, C, T) -> (B, C, T).

    ``gamma``, ``beta``: parameters of shape (1, C, 1), zero at init (identity at init).
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T), same dtype as ``x``. Inside
        :func:`~codecplatform.nn.conv.item_lengths` the mean over time of each item covers its own
        steps only."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"GRN expects (batch, {self.channels}, time), got shape {tuple(x.shape)}")
        keep = steps_in_use(x.shape[-1], x.device)
        if keep is not None:
            return grn(x * keep, self.gamma, self.beta, self.eps, keep)
        return grn(x, self.gamma, self.beta, self.eps)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
