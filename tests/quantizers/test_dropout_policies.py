"""BiasedRangeDropout (SpectroStream): per-level weights by range, bypass as n_q = 0,
determinism given a generator, argument validation."""

import pytest
import torch

from codecplatform.quantizers.dropout import BiasedRangeDropout, PerBatchChoice, PerExampleDropout

SPECTROSTREAM = dict(ranges=[(1, 16), (17, 32), (33, 64)], weights=[4.0, 2.0, 1.0])
ALL_64 = list(range(1, 65))
N = 20_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_deterministic_given_a_generator():
    policy = BiasedRangeDropout(**SPECTROSTREAM, bypass_rate=0.5)
    a = policy.sample(64, ALL_64, gen(7))
    assert torch.equal(a, policy.sample(64, ALL_64, gen(7)))
    assert not torch.equal(a, policy.sample(64, ALL_64, gen(8)))
    assert a.dtype == torch.long and a.shape == (64,)


@pytest.mark.parametrize("policy", [PerBatchChoice(), PerExampleDropout(p=0.5)], ids=type)
def test_every_policy_draws_from_its_generator_only(policy):
    """Every DDP rank seeds the same generator from the batch index: the draw must not depend on the
    global random state, or ranks train different codebook counts."""
    choices = [1, 2, 4, 8]
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        draws.append([policy.sample(16, choices, gen(seed)) for seed in range(8)])
    for a, b in zip(*draws):
        assert torch.equal(a, b)
    assert len({tuple(d.tolist()) for d in draws[0]}) > 1  # the seed matters


def test_levels_follow_the_per_level_weights():
    policy = BiasedRangeDropout(**SPECTROSTREAM)
    n_q = policy.sample(N, ALL_64, gen())
    assert int(n_q.min()) >= 1 and int(n_q.max()) <= 64
    # per level 4:2:1 on 16/16/32 levels -> ranges 64/128, 32/128, 32/128
    freq = [((n_q >= lo) & (n_q <= hi)).float().mean().item() for lo, hi in SPECTROSTREAM["ranges"]]
    print(f"range frequencies over {N} draws: {[round(f, 4) for f in freq]} (expected 0.5, 0.25, 0.25)")
    for observed, expected in zip(freq, [0.5, 0.25, 0.25]):
        assert abs(observed - expected) < 0.02
    # uniform inside each range: level probability = its range weight / 128
    counts = torch.bincount(n_q, minlength=65)[1:].double() / N
    expected = torch.tensor([4.0] * 16 + [2.0] * 16 + [1.0] * 32, dtype=torch.float64) / 128
    assert (counts - expected).abs().max() < 0.01


def test_bypass_fraction_and_weights_among_the_rest():
    policy = BiasedRangeDropout(**SPECTROSTREAM, bypass_rate=0.5)
    n_q = policy.sample(N, ALL_64, gen(1))
    bypass = (n_q == 0).float().mean().item()
    print(f"bypass fraction over {N} draws: {bypass:.4f} (expected 0.5)")
    assert abs(bypass - 0.5) < 0.02
    kept = n_q[n_q > 0]
    assert abs((kept <= 16).float().mean().item() - 0.5) < 0.02
    assert BiasedRangeDropout(**SPECTROSTREAM, bypass_rate=1.0).sample(10, ALL_64, gen()).eq(0).all()
    assert BiasedRangeDropout(**SPECTROSTREAM, bypass_rate=0.0).sample(N, ALL_64, gen()).gt(0).all()


def test_zero_weight_range_is_never_drawn_and_unsorted_ranges_work():
    policy = BiasedRangeDropout(ranges=[(5, 8), (1, 4)], weights=[0.0, 1.0])
    n_q = policy.sample(1000, list(range(1, 9)), gen())
    assert set(n_q.tolist()) == {1, 2, 3, 4}
    assert policy.sample(0, [8], gen()).shape == (0,)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(ranges=[], weights=[]), "ranges"),
        (dict(ranges=[(0, 4)], weights=[1.0]), "ranges"),
        (dict(ranges=[(5, 4)], weights=[1.0]), "ranges"),
        (dict(ranges=[(1, 4), (4, 8)], weights=[1.0, 1.0]), "ranges"),
        (dict(ranges=[(1, 4), (5, 8)], weights=[1.0]), "weights"),
        (dict(ranges=[(1, 4)], weights=[-1.0]), "weights"),
        (dict(ranges=[(1, 4), (5, 8)], weights=[0.0, 0.0]), "weights"),
        (dict(ranges=[(1, 4)], weights=[float("nan")]), "weights"),
        (dict(ranges=[(1, 4)], weights=[1.0], bypass_rate=1.5), "bypass_rate"),
        (dict(ranges=[(1, 4)], weights=[1.0], bypass_rate=-0.1), "bypass_rate"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BiasedRangeDropout(**kwargs)


def test_ranges_above_the_allowed_counts_are_refused():
    policy = BiasedRangeDropout(**SPECTROSTREAM)
    with pytest.raises(ValueError, match="ranges"):
        policy.sample(4, list(range(1, 33)), gen())
