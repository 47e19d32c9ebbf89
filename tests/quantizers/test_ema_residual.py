"""RVQ with EMA codebooks: EMA moves codes, dead codes are replaced, k-means runs once,
straight-through is the identity, bandwidth -> n_q, codes round-trip through decode."""

import math

import pytest
import torch

from codecplatform.quantizers.dropout import PerBatchChoice, PerExampleDropout, QuantizerDropout
from codecplatform.quantizers.ema_codebook import EMACodebook, kmeans
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer


def test_kmeans_recovers_separated_clusters():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centers])
    found, sizes = kmeans(x, 3, iters=20)
    matched = torch.cdist(centers, found).min(dim=1).values
    assert matched.max() < 0.2
    assert sizes.sum() == 150


def test_kmeans_init_happens_once_on_first_training_batch():
    torch.manual_seed(0)
    cb = EMACodebook(dimension=4, codebook_size=8, kmeans_iters=5)
    assert not bool(cb.initialized) and cb.embed.abs().sum() == 0
    z = torch.randn(2, 4, 50)
    cb.train()
    cb(z)
    assert bool(cb.initialized)
    # the codebook now lies inside the data's range (k-means centroids of z)
    assert cb.embed.abs().max() <= z.abs().max() + 1e-6
    calls = []
    import codecplatform.quantizers.ema_codebook as vq

    original = vq.kmeans
    vq.kmeans = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        cb(torch.randn(2, 4, 50))
    finally:
        vq.kmeans = original
    assert calls == []  # no second initialisation


def test_ema_update_moves_used_codes_toward_inputs():
    cb = EMACodebook(dimension=2, codebook_size=2, kmeans_init=False, decay=0.9, threshold_ema_dead_code=0)
    with torch.no_grad():
        cb.embed.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0]]))
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(1.0)
    target = torch.tensor([1.0, 1.0])
    z = target.view(1, 2, 1).expand(1, 2, 10).contiguous()  # every vector is (1, 1): nearest code 0
    cb.train()
    before = cb.embed.clone()
    for _ in range(20):
        cb(z)
    moved = (cb.embed[0] - target).norm()
    assert moved < (before[0] - target).norm() * 0.5
    assert torch.allclose(cb.embed[1], before[1], atol=1e-2)  # unused code barely moves


def test_dead_code_is_replaced_by_a_batch_vector():
    cb = EMACodebook(dimension=2, codebook_size=4, kmeans_init=False, decay=0.5, threshold_ema_dead_code=1.0)
    with torch.no_grad():
        cb.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [100.0, -100.0]]))
        cb.embed_avg.copy_(cb.embed)
        cb.cluster_size.fill_(5.0)
    z = torch.randn(1, 2, 64) * 0.1  # all near code 0: codes 1..3 are never used
    cb.train()
    for _ in range(5):
        cb(z)
    vectors = z[0].t()
    for k in (1, 2, 3):
        distance = (vectors - cb.embed[k]).norm(dim=1).min()
        assert distance < 1.0, f"dead code {k} was not replaced by a batch vector"


def test_eval_does_not_update_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=4, n_q=2, codebook_size=8, kmeans_iters=2)
    rvq.train()
    rvq(torch.randn(2, 4, 20))
    state = {k: v.clone() for k, v in rvq.state_dict().items()}
    rvq.eval()
    rvq(torch.randn(2, 4, 20))
    for k, v in rvq.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=4, n_q=3, codebook_size=8, kmeans_iters=2)
    rvq.train()
    z = torch.randn(2, 4, 10, requires_grad=True)
    out = rvq(z)
    upstream = torch.randn_like(out.z_q)
    (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z)
    assert torch.allclose(grad, upstream)
    # commitment loss reaches the encoder side only
    (commit_grad,) = torch.autograd.grad(out.losses["commit"], z)
    assert commit_grad.abs().sum() > 0


def test_residual_levels_reduce_error_and_codes_round_trip():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=4, n_q=4, codebook_size=16, kmeans_iters=10)
    rvq.train()
    z = torch.randn(4, 4, 64)
    for _ in range(3):
        rvq(z)
    rvq.eval()
    errors = []
    for n in range(1, 5):
        codes = rvq.encode(z, n_q=n)
        assert codes.shape == (4, n, 64) and codes.dtype == torch.long
        z_q = rvq.decode(codes)
        out = rvq(z, n_q=n)
        assert torch.allclose(out.z_q, z_q, atol=1e-5)  # forward and encode/decode agree
        assert torch.equal(out.codes, codes)
        errors.append((z - z_q).pow(2).mean().item())
    assert errors == sorted(errors, reverse=True)


def test_per_example_n_q_masks_later_codebooks():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dimension=4, n_q=3, codebook_size=8, kmeans_iters=2)
    rvq.train()
    z = torch.randn(3, 4, 16)
    rvq(z)
    rvq.eval()
    out = rvq(z, n_q=torch.tensor([1, 2, 3]))
    for b, n in enumerate([1, 2, 3]):
        single = rvq(z[b : b + 1], n_q=n)
        assert torch.allclose(out.z_q[b : b + 1], single.z_q, atol=1e-5)
    with pytest.raises(ValueError, match="n_q"):
        rvq(z, n_q=4)


def test_dropout_policies_are_deterministic_given_a_generator():
    choices = [2, 4, 8]
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(PerBatchChoice().sample(5, choices, g()), PerBatchChoice().sample(5, choices, g()))
    batch = PerBatchChoice().sample(5, choices, g())
    assert len(set(batch.tolist())) == 1 and batch[0].item() in choices
    per_example = PerExampleDropout(p=1.0).sample(200, choices, g())
    assert set(per_example.tolist()) == set(choices)
    assert PerExampleDropout(p=0.0).sample(10, choices, g()).eq(8).all()
    assert QuantizerDropout().sample(3, choices).eq(8).all()
    with pytest.raises(ValueError, match="p"):
        PerExampleDropout(p=1.5)


def test_bits_to_n_q():
    rvq = ResidualVectorQuantizer(dimension=4, n_q=32, codebook_size=1024, kmeans_init=False)
    assert rvq.bits_per_frame[0] == pytest.approx(10.0)
    frame_rate = 75.0
    expected = {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}
    for kbps, n_q in expected.items():
        assert rvq.n_q_for_bits(kbps * 1000 / frame_rate) == n_q
    assert math.isclose(sum(rvq.bits_per_frame), 320.0)
