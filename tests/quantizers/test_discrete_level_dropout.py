"""SpectroStream's quantizer training: DiscreteLevelDropout (the official target_num_quantizers set,
uniform, plus full bypass) and the EMA residual quantizer with bypassed examples (n_q = 0)."""

import pytest
import torch

from codecplatform.quantizers.dropout import SPECTROSTREAM_LEVELS, DiscreteLevelDropout
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

ALL_64 = list(range(1, 65))
N = 32_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_official_levels():
    expected = list(range(1, 17)) + list(range(18, 33, 2)) + list(range(36, 65, 4))
    assert list(SPECTROSTREAM_LEVELS) == expected and len(expected) == 32
    assert DiscreteLevelDropout().levels.tolist() == expected
    assert not {17, 19, 33, 34, 35, 63} & set(expected)


def test_levels_are_uniform_and_bypass_is_half():
    n_q = DiscreteLevelDropout(bypass_rate=0.5).sample(N, ALL_64, gen())
    bypassed = (n_q == 0).float().mean().item()
    assert abs(bypassed - 0.5) < 0.02
    drawn = n_q[n_q > 0]
    assert set(drawn.unique().tolist()) == set(SPECTROSTREAM_LEVELS)
    freq = torch.bincount(drawn, minlength=65).double() / drawn.numel()
    assert (freq[list(SPECTROSTREAM_LEVELS)] - 1 / 32).abs().max() < 0.006
    # per unit of count: density 4:2:1 over 1-16, 17-32, 33-64 -> ranges 1/2, 1/4, 1/4 of the draws
    ranges = [((drawn >= lo) & (drawn <= hi)).float().mean().item() for lo, hi in [(1, 16), (17, 32), (33, 64)]]
    assert all(abs(r - e) < 0.02 for r, e in zip(ranges, [0.5, 0.25, 0.25]))


def test_deterministic_given_a_generator():
    policy = DiscreteLevelDropout(bypass_rate=0.5)
    assert torch.equal(policy.sample(64, ALL_64, gen(3)), policy.sample(64, ALL_64, gen(3)))
    assert policy.sample(0, ALL_64).shape == (0,)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(levels=[]), "levels"),
        (dict(levels=[0, 1]), "levels"),
        (dict(levels=[2, 2]), "levels"),
        (dict(bypass_rate=1.5), "bypass_rate"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiscreteLevelDropout(**kwargs)


def test_levels_above_the_allowed_counts_are_refused():
    with pytest.raises(ValueError, match="64"):
        DiscreteLevelDropout().sample(4, [16, 32])


def test_bypassed_examples_pass_through_without_codes_or_commitment():
    """n_q = 0: z_q = z, no codes used, and no commitment loss from that example."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(
        dimension=8,
        n_q=4,
        codebook_size=16,
        kmeans_iters=2,
        dropout=DiscreteLevelDropout(levels=[1, 2, 4], bypass_rate=0.5),
    ).train()
    z = torch.randn(4, 8, 10, requires_grad=True)
    n_q = torch.tensor([0, 1, 4, 0])
    out = rvq(z, n_q)
    assert torch.equal(out.z_q[0], z[0]) and torch.equal(out.z_q[3], z[3])
    assert out.codes.shape == (4, 4, 10)
    alone = ResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, kmeans_iters=2).train()
    alone.load_state_dict(rvq.state_dict())
    all_bypassed = alone(z.detach(), torch.zeros(4, dtype=torch.long))
    assert all_bypassed.codes.shape == (4, 0, 10) and float(all_bypassed.losses["commit"]) == 0.0
    out.z_q.sum().backward()  # straight-through: identity gradient, bypassed or not
    assert torch.allclose(z.grad, torch.ones_like(z))
    assert rvq.sample_n_q(6, None, gen()).max() <= 4
