"""The EMA residual stack as the official code runs it: SpectroStream's RVQ (magenta-realtime
``magenta_rt/jax/spectrostream.py``: every stage quantizes the unmasked residual, only the sum is
masked) and MUFFIN's per-stage straight-through on the band-limited input (dianwen-ng/MUFFIN
``specEMAQuantizeModules.py``), each against its named alternative."""

import pytest
import torch

from codecplatform.quantizers.band_limit import BandLimit, band_limit
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

N_Q = torch.tensor([1, 3, 0, 2])  # per example; 0: bypass


def spectro_rvq(mode: str) -> ResidualVectorQuantizer:
    torch.manual_seed(0)
    # random entries (no k-means), no dead-code replacement: one step's EMA update is exact arithmetic
    return ResidualVectorQuantizer(
        dimension=4,
        n_q=3,
        codebook_size=8,
        decay=0.5,
        kmeans_init=False,
        threshold_ema_dead_code=0.0,
        dropout_mode=mode,
    )


def full_residual_codes(rvq: ResidualVectorQuantizer, z: torch.Tensor) -> list[torch.Tensor]:
    """Codes of every stage on the unmasked residual, (B, T') each, from the current codebooks."""
    codes, residual = [], z
    for layer in rvq.layers:
        c = layer.encode(residual)
        codes.append(c)
        residual = residual - layer.decode(c)
    return codes


def test_mask_sum_stage_updates_its_ema_from_every_frame():
    rvq = spectro_rvq("mask_sum").train()
    z = torch.randn(4, 4, 10)
    before = {k: v.clone() for k, v in rvq.state_dict().items()}
    codes = full_residual_codes(rvq, z)
    out = rvq(z, N_Q)
    for k in range(3):  # stage 2 is used by one example of four, and learns from all 40 frames
        counts = torch.bincount(codes[k].reshape(-1), minlength=8).float()
        expected = 0.5 * before[f"layers.{k}.cluster_size"] + 0.5 * counts
        torch.testing.assert_close(rvq.layers[k].cluster_size, expected, rtol=0, atol=1e-6)
        assert float(rvq.layers[k].cluster_size.sum()) == pytest.approx(0.5 * 40)
        assert torch.equal(out.codes[:, k], codes[k])  # the codes of the unmasked residual, every example


def test_mask_residual_option_learns_only_from_the_examples_that_use_the_stage():
    rvq = spectro_rvq("mask_residual").train()
    rvq(torch.randn(4, 4, 10), N_Q)
    sums = [float(layer.cluster_size.sum()) for layer in rvq.layers]
    assert sums == pytest.approx([0.5 * 10 * n for n in (3, 2, 1)])  # examples with n_q > k


def test_mask_sum_output_is_the_sum_of_the_stages_masked():
    rvq = spectro_rvq("mask_sum").eval()
    z = torch.randn(4, 4, 10, requires_grad=True)
    codes = full_residual_codes(rvq, z.detach())
    out = rvq(z, N_Q)
    for b, n in enumerate(N_Q.tolist()):
        if n == 0:
            assert torch.equal(out.z_q[b], z[b])  # bypass
            continue
        expected = sum(rvq.layers[k].decode(codes[k][b : b + 1])[0] for k in range(n))
        torch.testing.assert_close(out.z_q[b], expected, rtol=0, atol=1e-6)
    # commitment: every stage run, averaged over the examples not bypassed, then over stages
    used = N_Q > 0
    residual, commits = z.detach(), []
    for k, layer in enumerate(rvq.layers):
        q = layer.decode(codes[k])
        commits.append((residual[used] - q[used]).pow(2).mean())
        residual = residual - q
    torch.testing.assert_close(out.losses["commit"], torch.stack(commits).mean())
    (grad,) = torch.autograd.grad(out.z_q.sum(), z)  # straight-through for the stack: identity
    assert torch.equal(grad, torch.ones_like(z))
    with pytest.raises(ValueError, match="dropout_mode"):
        ResidualVectorQuantizer(dimension=4, n_q=2, dropout_mode="mask")


@pytest.mark.parametrize("length", [30, 31])
def test_per_stage_gradient_is_the_sum_of_the_band_filters(length):
    scales = [4, 2, 1, 1]
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(
        dimension=6,
        n_q=4,
        codebook_size=16,
        kmeans_iters=3,
        stage_hook=BandLimit(scales),
        straight_through="per_stage",
    ).train()
    z = torch.randn(2, 6, length, requires_grad=True)
    out = rvq(z)
    upstream = torch.randn_like(out.z_q)
    (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z)
    expected = sum(band_limit(upstream, s) for s in scales)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-5)
    assert (grad - upstream).abs().max() > 0.5  # not the identity: stages 0 and 1 pass low bands only
    # the value is the sum of the stages' quantized vectors, as with the stack's straight-through
    rvq.eval()
    torch.testing.assert_close(rvq(z).z_q, rvq.decode(rvq.encode(z)), rtol=0, atol=1e-5)
    stack = ResidualVectorQuantizer(dimension=6, n_q=4, codebook_size=16, stage_hook=BandLimit(scales))
    stack.load_state_dict(rvq.state_dict())
    (grad,) = torch.autograd.grad((stack.train()(z).z_q * upstream).sum(), z)
    assert torch.equal(grad, upstream)  # the named option: one straight-through for the stack
    with pytest.raises(ValueError, match="straight_through"):
        ResidualVectorQuantizer(dimension=4, n_q=2, straight_through="none")
