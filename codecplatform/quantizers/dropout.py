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


class BiasedRangeDropout(QuantizerDropout):
    """Levels drawn from ranges with per-level weights, plus a full bypass (SpectroStream).

    Args:
        ranges: inclusive (first, last) codebook counts, non-overlapping, each first >= 1
            (SpectroStream: [(1, 16), (17, 32), (33, 64)]).
        weights: relative weight of *each level* of the matching range (SpectroStream:
            [4, 2, 1]); level n in range r has probability weights[r] / sum over all levels
            of their weights, so ranges are uniform inside and a range's total probability
            grows with its length (4:2:1 on 16/16/32 levels -> 1/2, 1/4, 1/4).
        bypass_rate: probability that an example bypasses the quantizer altogether
            (SpectroStream's ``full_quantizer_dropout_rate``, 0.5).

    A bypassed example gets the count **0**: the quantizer passes its latent through unchanged
    (z_q = z), uses no codes and adds no loss. The residual quantizers
    (``FactorizedResidualVectorQuantizer``, ``ResidualVectorQuantizer``) accept n_q = 0 through
    the base class's ``_resolve_n_q``.

    The levels come from ``ranges``, not from the allowed counts passed to ``sample``; those
    only bound them: a range reaching above max(n_q_choices) is an error.
    """

    def __init__(self, ranges: list[tuple[int, int]], weights: list[float], bypass_rate: float = 0.0):
        ranges = [tuple(r) for r in ranges]
        if not ranges:
            raise ValueError("ranges must hold at least one (first, last) range of codebook counts")
        for r in ranges:
            if len(r) != 2 or not all(isinstance(v, int) for v in r) or not 1 <= r[0] <= r[1]:
                raise ValueError(f"ranges entries must be integer (first, last) with 1 <= first <= last, got {r}")
        ordered = sorted(ranges)
        for (_, last), (first, _) in zip(ordered, ordered[1:]):
            if first <= last:
                raise ValueError(f"ranges must not overlap, got {ranges}")
        weights = [float(w) for w in weights]
        if len(weights) != len(ranges):
            raise ValueError(f"weights must have one entry per range ({len(ranges)}), got {len(weights)}")
        if any(not (w >= 0.0 and w != float("inf")) for w in weights) or sum(weights) <= 0.0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {weights}")
        if not 0.0 <= bypass_rate <= 1.0:
            raise ValueError(
                f"bypass_rate (fraction of examples bypassing the quantizer) must be in [0, 1], got {bypass_rate}"
            )
        self.ranges = ranges
        self.weights = weights
        self.bypass_rate = bypass_rate
        levels, probs = [], []
        for (first, last), w in zip(ranges, weights):
            levels += list(range(first, last + 1))
            probs += [w] * (last - first + 1)
        self.levels = torch.tensor(levels, dtype=torch.long)
        self.probs = torch.tensor(probs, dtype=torch.float64) / sum(probs)

    def sample(self, batch_size: int, n_q_choices: list[int], generator: torch.Generator | None = None) -> Tensor:
        """-> (B,) int64: a level from the ranges per example, 0 for bypassed examples."""
        top = int(self.levels.max())
        if top > max(n_q_choices):
            raise ValueError(f"ranges reach {top} codebooks but at most {max(n_q_choices)} are allowed")
        if batch_size == 0:
            return torch.zeros(0, dtype=torch.long)
        drawn = self.levels[torch.multinomial(self.probs, batch_size, replacement=True, generator=generator)]
        bypass = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.bypass_rate
        return torch.where(bypass, torch.zeros_like(drawn), drawn)


# SpectroStream's official truncation targets (magenta/magenta-realtime, config
# ``stft_spectrostream_40ms_generic_48khz_stereo_config``: ``target_num_quantizers``, "Low RVQ biased").
SPECTROSTREAM_LEVELS: tuple[int, ...] = (*range(1, 17), *range(18, 33, 2), *range(36, 65, 4))


class DiscreteLevelDropout(QuantizerDropout):
    """A count drawn uniformly from a fixed set of levels per example, plus a full bypass
    (SpectroStream's official ``target_num_quantizers`` + ``full_quantizer_dropout_rate``).

    Args:
        levels: the codebook counts an example may use, each >= 1, distinct (default
            :data:`SPECTROSTREAM_LEVELS`: 1..16, 18, 20, ..., 32, 36, 40, ..., 64, i.e. 32 levels:
            per unit of count a 4:2:1 density over 1-16, 17-32, 33-64; 17, 19, 33-35, ... are never
            drawn).
        bypass_rate: probability that an example bypasses the quantizer (count **0**: z_q = z, no
            codes, no commitment loss; SpectroStream 0.5).

    As :class:`BiasedRangeDropout`, the levels do not come from the allowed counts passed to
    ``sample`` (the codec's bandwidths); those only bound them: a level above max(n_q_choices)
    is an error.
    """

    def __init__(self, levels: list[int] | None = None, bypass_rate: float = 0.0):
        levels = list(SPECTROSTREAM_LEVELS) if levels is None else list(levels)
        if not levels:
            raise ValueError("levels must hold at least one codebook count")
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in levels):
            raise ValueError(f"levels must be integer codebook counts >= 1, got {levels}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels must be distinct, got {levels}")
        if not 0.0 <= bypass_rate <= 1.0:
            raise ValueError(
                f"bypass_rate (fraction of examples bypassing the quantizer) must be in [0, 1], got {bypass_rate}"
            )
        self.levels = torch.tensor(sorted(levels), dtype=torch.long)
        self.bypass_rate = bypass_rate

    def sample(self, batch_size: int, n_q_choices: list[int], generator: torch.Generator | None = None) -> Tensor:
        """-> (B,) int64: a level per example (uniform over ``levels``), 0 for bypassed examples."""
        top = int(self.levels.max())
        if top > max(n_q_choices):
            raise ValueError(f"levels reach {top} codebooks but at most {max(n_q_choices)} are allowed")
        if batch_size == 0:
            return torch.zeros(0, dtype=torch.long)
        drawn = self.levels[torch.randint(len(self.levels), (batch_size,), generator=generator)]
        bypass = torch.rand(batch_size, generator=generator, dtype=torch.float64) < self.bypass_rate
        return torch.where(bypass, torch.zeros_like(drawn), drawn)
