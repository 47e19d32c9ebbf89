"""Codebook statistics: hand-computed entropies, extremes, dead codes, n_q masking, DDP-style merging."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from codecplatform.metrics.codebook import CodebookUsage, codebook_statistics


def test_hand_computed_entropy_perplexity_and_efficiency():
    counts = torch.tensor([[2, 1, 1, 0], [4, 0, 0, 0]])  # p = (1/2, 1/4, 1/4, 0) -> 1.5 bits; one-hot -> 0
    stats = codebook_statistics(counts)
    assert torch.allclose(stats["usage"][0], torch.tensor([0.5, 0.25, 0.25, 0.0]))
    assert torch.allclose(stats["entropy"], torch.tensor([1.5, 0.0]))
    assert not torch.signbit(stats["entropy"][1])  # a one-hot codebook prints 0.0, not -0.0
    assert torch.allclose(stats["perplexity"], torch.tensor([2**1.5, 1.0]))
    assert stats["dead_codes"].tolist() == [1, 3]
    assert stats["dead_codes"].dtype == torch.long
    assert stats["efficiency"].shape == ()
    assert stats["efficiency"].item() == pytest.approx(1.5 / (2 * math.log2(4)))


def test_uniform_gives_log2_n_and_full_efficiency():
    stats = codebook_statistics(torch.full((3, 16), 7))
    assert torch.allclose(stats["entropy"], torch.full((3,), 4.0))
    assert torch.allclose(stats["perplexity"], torch.full((3,), 16.0))
    assert stats["dead_codes"].tolist() == [0, 0, 0]
    assert stats["efficiency"].item() == pytest.approx(1.0)


def test_unused_codebook_has_zero_entropy_not_nan():
    stats = codebook_statistics(torch.zeros(2, 8, dtype=torch.long))
    for key in ("usage", "entropy", "perplexity", "efficiency"):
        assert torch.isfinite(stats[key]).all(), key
    assert stats["entropy"].tolist() == [0.0, 0.0]
    assert stats["dead_codes"].tolist() == [8, 8]
    assert stats["efficiency"].item() == 0.0


def test_update_counts_codes_and_masks_by_n_q():
    metric = CodebookUsage(num_codebooks=3, codebook_size=4)
    codes = torch.tensor(
        [
            [[0, 1, 2, 3], [0, 0, 0, 0], [1, 1, 1, 1]],  # n_q = 1: only codebook 0 counts
            [[0, 0, 1, 1], [2, 2, 3, 3], [3, 3, 3, 3]],  # n_q = 3: all count
        ]
    )
    metric.update(codes, n_q=torch.tensor([1, 3]))
    out = metric.compute()
    assert out["counts"].tolist() == [[3, 3, 1, 1], [0, 0, 2, 2], [0, 0, 0, 4]]
    assert out["dead_codes"].tolist() == [0, 2, 3]
    p0 = torch.tensor([3, 3, 1, 1]) / 8
    assert out["entropy"][0].item() == pytest.approx(float(-(p0 * p0.log2()).sum()), abs=1e-6)
    assert out["entropy"][1].item() == pytest.approx(1.0)
    assert out["entropy"][2].item() == pytest.approx(0.0)


def test_fewer_codebooks_than_configured_leaves_the_rest_empty():
    metric = CodebookUsage(num_codebooks=4, codebook_size=2)
    metric.update(torch.tensor([[[0, 1], [1, 1]]]))  # K' = 2 of 4
    out = metric.compute()
    assert out["counts"].tolist() == [[1, 1], [0, 2], [0, 0], [0, 0]]
    assert out["entropy"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_merged_states_equal_one_metric_over_all_data():
    """DDP sums the ``counts`` states of all ranks; merge_state applies the same reduction."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 8, (3, 2, 10), generator=gen)
    b = torch.randint(0, 8, (5, 2, 10), generator=gen)
    rank0, rank1, whole = (CodebookUsage(2, 8) for _ in range(3))
    rank0.update(a)
    rank1.update(b)
    whole.update(torch.cat([a, b]))
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    assert torch.equal(merged["counts"], expected["counts"])
    assert torch.allclose(merged["entropy"], expected["entropy"])
    assert CodebookUsage(2, 8)._reductions["counts"] is dim_zero_sum  # what DDP sync applies to the gathered states


def test_bad_input_is_refused_clearly():
    metric = CodebookUsage(num_codebooks=2, codebook_size=4)
    with pytest.raises(ValueError, match="codebooks"):
        metric.update(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        metric.update(torch.full((1, 2, 5), 4))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="counts must be"):
        codebook_statistics(torch.zeros(4))
