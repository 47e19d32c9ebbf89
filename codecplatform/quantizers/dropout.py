"""Quantizer dropout policies: how many codebooks each training example uses.

A policy is one reusable quantizer option (EnCodec's per-batch bandwidth choice, DAC's
per-example dropout, ...). ``sample`` receives the allowed codebook counts (from the codec's
configured bandwidths, or 1..n_q) and a ``torch.Generator``: the training module seeds that
generator from the batch index, so every DDP rank draws the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor


class QuantizerDropout:
    """Base policy: every example uses all allowed codebooks (no dropout)."""

    def sample(self, batch_size: int, n_q_choices: list[int], generator: torch.Generator | None = None) -> Tensor:
        """-> (B,) int64 number of codebooks per example."""
        return torch.full((batch_size,), max(n_q_choices), dtype=torch.long)


class PerBatchChoice(QuantizerDropout):
    """One count for the whole batch, drawn uniformly from the allowed counts (EnCodec's
    multi-bandwidth training: the bandwidth is chosen per batch).
    """

    def sample(self, batch_size: int, n_q_choices: list[int], generator: torch.Generator | None = None) -> Tensor:
        pick = int(torch.randint(len(n_q_choices), (1,), generator=generator))
        return torch.full((batch_size,), n_q_choices[pick], dtype=torch.long)


class PerExampleDropout(QuantizerDropout):
    """A fraction ``p`` of the examples use a count drawn uniformly from the allowed counts,
    the rest use all codebooks (DAC's quantizer dropout, p = 0.5).
    """

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p (fraction of the batch with quantizer dropout) must be in [0, 1], got {p}")
        self.p = p

    def sample(self, batch_size: int, n_q_choices: list[int], generator: torch.Generator | None = None) -> Tensor:
        choices = torch.tensor(n_q_choices, dtype=torch.long)
        drawn = choices[torch.randint(len(n_q_choices), (batch_size,), generator=generator)]
        dropped = torch.rand(batch_size, generator=generator) < self.p
        return torch.where(dropped, drawn, torch.full_like(drawn, max(n_q_choices)))
