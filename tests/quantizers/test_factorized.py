"""DAC's factorized, L2-normalized RVQ: cosine lookup, which side each loss trains, the
straight-through gradient of the stack, official loss reduction, per-example counts and bypass
(n_q = 0), codes round-trip, learning on fixed data, the shared residual loop, parameter count;
training steps (values, codes, losses, gradients, quantizer dropout) against the installed
official ``dac.nn.quantize.ResidualVectorQuantize`` with the same weights."""

import pytest
import torch
import torch.nn.functional as F

from codecplatform.quantizers.dropout import BiasedRangeDropout, PerExampleDropout
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer
from codecplatform.quantizers.factorized import (
    FactorizedCodebook,
    FactorizedResidualVectorQuantizer,
)
from codecplatform.quantizers.residual import residual_stack


def linear_part(layer: FactorizedCodebook) -> torch.Tensor:
    """P = W_out W_in (D x D) of one layer's two weight-normed 1x1 convs."""
    return layer.out_proj.weight[..., 0] @ layer.in_proj.weight[..., 0]


def grads(loss, params):
    return list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))


# -- one codebook ---------------------------------------------------------------------------
def test_lookup_is_by_cosine_not_euclidean_distance():
    layer = FactorizedCodebook(dimension=2, codebook_size=3, codebook_dim=2)
    with torch.no_grad():
        layer.in_proj.weight = torch.eye(2)[..., None]  # identity projection
        layer.in_proj.bias.zero_()
        layer.codebook.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    # (1, 0.1): Euclidean nearest is row 1 (distance 1.35 vs 9.0), cosine nearest is row 0
    # (0.2, 1.0): row 1 both ways; (-3, 0.5): row 2 by cosine, row 1 by Euclidean distance
    z = torch.tensor([[1.0, 0.2, -3.0], [0.1, 1.0, 0.5]])[None]  # (1, 2, 3)
    assert layer.encode(z).tolist() == [[0, 1, 2]]
    out = layer(z)
    assert out.codes.tolist() == [[[0, 1, 2]]]
    # the output is out_proj of the raw (unnormalized) codebook row
    assert torch.allclose(out.z_q, layer.decode(out.codes[:, 0]), atol=1e-6)
    assert torch.allclose(out.z_q, layer.out_proj(layer.codebook.weight[[0, 1, 2]].t()[None]), atol=1e-6)


def test_losses_are_official_mses_in_projected_space_and_train_their_own_side():
    torch.manual_seed(0)
    layer = FactorizedCodebook(dimension=6, codebook_size=5, codebook_dim=3)
    z = torch.randn(2, 6, 7, requires_grad=True)
    out = layer(z)
    z_e = layer.in_proj(z)
    e_k = layer.codebook.weight[out.codes[:, 0]].transpose(1, 2)  # raw rows, (B, M, T')
    expected = F.mse_loss(z_e, e_k)
    assert torch.allclose(out.losses["commit"], expected) and torch.allclose(out.losses["codebook"], expected)

    in_params = list(layer.in_proj.parameters())  # bias, g, v
    out_params = list(layer.out_proj.parameters())
    codebook = layer.codebook.weight
    everything = [z, codebook, *in_params, *out_params]

    g = grads(out.losses["codebook"], everything)
    assert g[1] is not None and g[1].abs().sum() > 0  # codebook moves toward the encodings
    assert all(x is None for x in [g[0], *g[2:]])  # nothing else

    g = grads(out.losses["commit"], everything)
    assert g[0] is not None and g[0].abs().sum() > 0  # encoder side
    assert all(x is not None and x.abs().sum() > 0 for x in g[2:5])  # in_proj
    assert g[1] is None and all(x is None for x in g[5:])  # not the codebook, not out_proj

    # the reconstruction path trains both projections, never the codebook
    g = grads(out.z_q.sum(), everything)
    assert g[1] is None
    assert all(x is not None for x in g[2:])


def test_single_layer_straight_through_is_w_out_w_in():
    torch.manual_seed(0)
    layer = FactorizedCodebook(dimension=5, codebook_size=4, codebook_dim=2)
    z = torch.randn(3, 5, 4, requires_grad=True)
    out = layer(z)
    upstream = torch.randn_like(out.z_q)
    (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z)
    expected = torch.einsum("ij,bit->bjt", linear_part(layer).detach(), upstream)  # P^T u
    assert torch.allclose(grad, expected, atol=1e-5)


def test_layer_losses_average_over_active_examples_only():
    torch.manual_seed(0)
    layer = FactorizedCodebook(dimension=4, codebook_size=8, codebook_dim=2)
    z = torch.randn(3, 4, 6)
    mask = torch.tensor([True, False, True])
    masked = layer(z, mask)
    subset = layer(z[mask])
    for name in ("commit", "codebook"):
        assert torch.allclose(masked.losses[name], subset.losses[name])
    none = layer(z, torch.zeros(3, dtype=torch.bool))
    assert none.losses["commit"].item() == 0.0 and none.losses["commit"].requires_grad


# -- the residual stack -----------------------------------------------------------------------
def test_parameter_count_of_dac_quantizer():
    rvq = FactorizedResidualVectorQuantizer(dimension=1024, n_q=9, codebook_size=1024, codebook_dim=8)
    count = sum(p.numel() for p in rvq.parameters())
    per_layer = (
        1024 * 8  # codebook
        + (8 * 1024 + 8 + 8)  # in_proj: v, g, bias
        + (1024 * 8 + 1024 + 1024)  # out_proj: v, g, bias
    )
    print(f"FactorizedResidualVectorQuantizer(1024, 9 x 1024 x 8): {count} parameters ({per_layer} per codebook)")
    assert count == 9 * per_layer == 239_760


def test_stack_gradient_is_identity_minus_product_of_residual_maps():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=6, n_q=3, codebook_size=8, codebook_dim=2)
    rvq.eval()
    z = torch.randn(2, 6, 5, requires_grad=True)
    for n in (1, 2, 3):
        out = rvq(z, n_q=n)
        upstream = torch.randn_like(out.z_q)
        (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z)
        eye = torch.eye(6)
        chain = eye
        for layer in rvq.layers[:n]:
            chain = (eye - linear_part(layer).detach()) @ chain  # (I - P_i) ... (I - P_0)
        jacobian = eye - chain
        expected = torch.einsum("ij,bit->bjt", jacobian, upstream)
        assert torch.allclose(grad, expected, atol=1e-5), n
        assert not torch.allclose(grad, upstream, atol=1e-3)  # not the EMA stack's identity


def test_losses_sum_over_codebooks_of_batch_means_as_official():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=6, n_q=3, codebook_size=8, codebook_dim=2)
    rvq.train()
    z = torch.randn(4, 6, 5)
    counts = [3, 1, 0, 2]
    out = rvq(z, n_q=torch.tensor(counts))
    # reference: (1/B) sum_b sum_{i < n_b} mse_{b,i}, each example run alone
    for name in ("commit", "codebook"):
        total = 0.0
        for b, n in enumerate(counts):
            residual = z[b : b + 1]
            for layer in rvq.layers[:n]:
                o = layer(residual)
                total += o.losses[name].item()
                residual = residual - o.z_q
        assert out.losses[name].item() == pytest.approx(total / len(counts), rel=1e-5), name


def test_codes_round_trip_and_forward_matches_encode_decode():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, codebook_dim=3)
    rvq.eval()
    z = torch.randn(3, 8, 20)
    for n in range(1, 5):
        codes = rvq.encode(z, n_q=n)
        assert codes.shape == (3, n, 20) and codes.dtype == torch.long
        out = rvq(z, n_q=n)
        assert torch.equal(out.codes, codes)
        assert torch.allclose(rvq.decode(codes), out.z_q, atol=1e-5)
    with pytest.raises(ValueError, match="n_q"):
        rvq.encode(z, n_q=0)
    with pytest.raises(ValueError, match="codes"):
        rvq.decode(torch.zeros(3, 5, 20, dtype=torch.long))


def test_per_example_n_q_masks_later_codebooks():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=3, codebook_size=16, codebook_dim=3)
    z = torch.randn(4, 8, 12)
    counts = [1, 2, 3, 0]
    for mode in ("train", "eval"):
        getattr(rvq, mode)()
        out = rvq(z, n_q=torch.tensor(counts))
        assert out.codes.shape == (4, 3, 12) and out.n_q.tolist() == counts
        rvq.eval()
        for b, n in enumerate(counts):
            single = rvq(z[b : b + 1], n_q=n)
            assert torch.allclose(out.z_q[b : b + 1], single.z_q, atol=1e-5), (mode, b)
            assert torch.equal(out.codes[b : b + 1, :n], single.codes[:, :n])
    with pytest.raises(ValueError, match="n_q"):
        rvq(z, n_q=4)
    with pytest.raises(ValueError, match="n_q"):
        rvq(z, n_q=torch.tensor([1, 2, -1, 0]))
    with pytest.raises(ValueError, match="z must be"):
        rvq(torch.randn(4, 7, 12))


def test_training_keeps_every_parameter_in_the_graph():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, codebook_dim=3)
    rvq.train()
    out = rvq(torch.randn(2, 8, 6), n_q=torch.tensor([1, 0]))  # codebooks 1..3 serve no one
    assert out.codes.shape == (2, 1, 6)
    (out.z_q.sum() + out.losses["commit"] + out.losses["codebook"]).backward()
    for name, p in rvq.named_parameters():
        assert p.grad is not None, name
    unused = rvq.layers[2]
    assert all(p.grad.abs().sum() == 0 for p in unused.parameters())


def test_n_q_zero_bypasses_the_quantizer():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=3, codebook_size=16, codebook_dim=3)
    rvq.train()
    z = torch.randn(3, 8, 10, requires_grad=True)
    out = rvq(z, n_q=torch.tensor([0, 3, 0]))
    assert torch.equal(out.z_q[0], z[0]) and torch.equal(out.z_q[2], z[2])
    assert not torch.allclose(out.z_q[1], z[1])
    upstream = torch.randn_like(out.z_q)
    (grad,) = torch.autograd.grad((out.z_q * upstream).sum(), z, retain_graph=True)
    assert torch.equal(grad[0], upstream[0]) and torch.equal(grad[2], upstream[2])
    # losses only from the quantized example, scaled by 1/B as in the official reduction
    alone = rvq(z[1:2], n_q=3)
    assert out.losses["commit"].item() == pytest.approx(alone.losses["commit"].item() / 3, rel=1e-5)
    (loss_grad,) = torch.autograd.grad(out.losses["commit"], z)
    assert loss_grad[0].abs().sum() == 0 and loss_grad[2].abs().sum() == 0

    for mode in ("train", "eval"):  # the whole batch bypassed
        getattr(rvq, mode)()
        out = rvq(z, n_q=0)
        assert torch.equal(out.z_q, z) and out.codes.shape == (3, 0, 10)
        assert out.losses["commit"].item() == 0.0 and out.losses["codebook"].item() == 0.0


def test_bypass_policy_drives_both_residual_stacks():
    policy = BiasedRangeDropout(ranges=[(1, 2), (3, 4)], weights=[2.0, 1.0], bypass_rate=0.5)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, codebook_dim=3, dropout=policy)
    n_q = rvq.sample_n_q(16, generator=torch.Generator().manual_seed(3))
    assert (n_q == 0).any() and (n_q > 0).any()
    z = torch.randn(16, 8, 5)
    out = rvq.train()(z, n_q)
    assert torch.equal(out.z_q[n_q == 0], z[n_q == 0])
    ema = ResidualVectorQuantizer(dimension=8, n_q=4, codebook_size=16, kmeans_iters=2, dropout=policy)
    out = ema.train()(z, n_q)
    assert torch.equal(out.z_q[n_q == 0], z[n_q == 0])
    assert not torch.equal(out.z_q[n_q > 0], z[n_q > 0])


def test_error_falls_with_more_codebooks_after_training():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(
        dimension=16, n_q=4, codebook_size=32, codebook_dim=4, dropout=PerExampleDropout(p=0.5)
    )
    z = torch.randn(8, 16, 32)
    optimizer = torch.optim.Adam(rvq.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    rvq.train()
    for _ in range(60):
        out = rvq(z, rvq.sample_n_q(z.shape[0], generator=generator))
        loss = F.mse_loss(out.z_q, z) + out.losses["codebook"] + 0.25 * out.losses["commit"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    rvq.eval()
    with torch.no_grad():
        errors = [F.mse_loss(rvq.decode(rvq.encode(z, n_q=n)), z).item() for n in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.9 * z.pow(2).mean().item(), errors


def test_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=16, codebook_dim=3)
    z = torch.randn(2, 8, 6).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = rvq(z)
    assert out.z_q.dtype == torch.float32 and out.losses["commit"].dtype == torch.float32


def test_codebook_dim_per_codebook():
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=16, codebook_dim=[2, 4])
    assert [layer.codebook.weight.shape[1] for layer in rvq.layers] == [2, 4]
    assert rvq(torch.randn(1, 8, 3)).codes.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="codebook_dim"):
        FactorizedResidualVectorQuantizer(dimension=8, n_q=3, codebook_dim=[2, 4])


# -- the shared residual loop -------------------------------------------------------------------
def test_residual_stack_reproduces_the_ema_stack_exactly():
    torch.manual_seed(0)
    ema = ResidualVectorQuantizer(dimension=4, n_q=3, codebook_size=8, kmeans_iters=2)
    ema.train()
    ema(torch.randn(2, 4, 20))  # k-means init
    ema.eval()
    z = torch.randn(3, 4, 16, requires_grad=True)
    n_q = torch.tensor([1, 3, 2])
    expected = ema(z, n_q)
    run = residual_stack(ema.layers, z, n_q, detach_outputs=True, mask_residual=False)  # the default "mask_sum"
    z_q = z + (run.z_q - z).detach()
    assert torch.equal(z_q, expected.z_q)
    assert torch.equal(run.codes, expected.codes)
    commit = torch.stack([losses["commit"] for losses in run.losses]).mean()
    assert torch.equal(commit, expected.losses["commit"])


# -- against the installed official code (descript-audio-codec, dac.nn.quantize) ----------------
def official_rvq(ours: FactorizedResidualVectorQuantizer, quantizer_dropout: float = 0.0):
    """dac.nn.quantize.ResidualVectorQuantize with ``ours``'s weights (weight norm's g and v, biases,
    codebooks) and (official, ours) parameter pairs."""
    from dac.nn.quantize import ResidualVectorQuantize

    dims = ours.codebook_dims
    official = ResidualVectorQuantize(
        input_dim=ours.dimension,
        n_codebooks=ours.n_q,
        codebook_size=ours.codebook_sizes[0],
        codebook_dim=list(dims),
        quantizer_dropout=quantizer_dropout,
    )
    pairs = []
    for theirs, mine in zip(official.quantizers, ours.layers):
        for proj in ("in_proj", "out_proj"):
            a, b = getattr(theirs, proj), getattr(mine, proj)
            pairs += [
                (a.weight_g, b.parametrizations.weight.original0),
                (a.weight_v, b.parametrizations.weight.original1),
                (a.bias, b.bias),
            ]
        pairs.append((theirs.codebook.weight, mine.codebook.weight))
    with torch.no_grad():
        for a, b in pairs:
            a.copy_(b)
    assert len(pairs) == len(list(official.parameters())) == len(list(ours.parameters()))
    return official, pairs


def assert_same_training_step(ours, official, pairs, z, n_q):
    """One training forward of each (ours with counts ``n_q``), then values and gradients."""
    z_ours = z.clone().requires_grad_(True)
    z_theirs = z.clone().requires_grad_(True)
    out = ours(z_ours, n_q)
    z_q, codes, _, commit, codebook = official(z_theirs)
    assert torch.allclose(out.z_q, z_q, atol=1e-6)
    assert torch.allclose(out.losses["commit"], commit, atol=1e-7)
    assert torch.allclose(out.losses["codebook"], codebook, atol=1e-7)
    assert out.losses["commit"] > 0 and out.losses["codebook"] > 0
    # codes: every code an example uses (official codes of dropped-out stages are never used)
    used = torch.arange(ours.n_q)[None, :] < n_q[:, None]  # (B, K)
    assert out.codes.shape[1] == int(n_q.max())
    assert torch.equal(out.codes[used[:, : out.codes.shape[1]]], codes[used])
    upstream = torch.randn_like(z)
    loss_ours = (out.z_q * upstream).sum() + 0.25 * out.losses["commit"] + out.losses["codebook"]
    loss_theirs = (z_q * upstream).sum() + 0.25 * commit + codebook
    mine = grads(loss_ours, [z_ours] + [b for _, b in pairs])
    theirs = grads(loss_theirs, [z_theirs] + [a for a, _ in pairs])
    for g_mine, g_theirs in zip(mine, theirs):
        g_mine = torch.zeros_like(g_theirs) if g_mine is None else g_mine
        assert torch.allclose(g_mine, g_theirs, atol=1e-5)


def test_training_step_matches_installed_dac_quantizer():
    """Training mode, every codebook: z_q, codes, commitment and codebook losses and the
    gradients of input and of every parameter equal dac.nn.quantize.ResidualVectorQuantize's."""
    torch.manual_seed(0)
    ours = FactorizedResidualVectorQuantizer(dimension=6, n_q=4, codebook_size=8, codebook_dim=[2, 3, 2, 4]).train()
    with torch.no_grad():  # nonzero biases, so that copying them is checked too
        for layer in ours.layers:
            layer.in_proj.bias.normal_(0, 0.1)
            layer.out_proj.bias.normal_(0, 0.1)
    official, pairs = official_rvq(ours)
    official.train()
    z = torch.randn(5, 6, 7)
    assert_same_training_step(ours, official, pairs, z, torch.full((5,), 4))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantizer_dropout_matches_installed_dac_quantizer(seed):
    """DAC's quantizer dropout (quantizer_dropout=0.5) draws the counts inside forward on the
    global RNG: torch.randint(1, n + 1, (B,)) for the first int(B * 0.5) examples, the rest use
    every codebook. Replaying that draw with the same seed gives the counts; ours, given those
    counts, matches values and gradients (a wrong replay would not)."""
    torch.manual_seed(10 + seed)
    ours = FactorizedResidualVectorQuantizer(dimension=6, n_q=4, codebook_size=8, codebook_dim=2).train()
    official, pairs = official_rvq(ours, quantizer_dropout=0.5)
    official.train()
    batch = 8
    z = torch.randn(batch, 6, 5)
    torch.manual_seed(seed)
    drawn = torch.randint(1, ours.n_q + 1, (batch,))
    n_q = torch.full((batch,), ours.n_q)
    n_q[: batch // 2] = drawn[: batch // 2]
    assert int(n_q.min()) < ours.n_q  # some example really drops codebooks
    torch.manual_seed(seed)  # official forward draws the same numbers
    assert_same_training_step(ours, official, pairs, z, n_q)


def test_dropout_policy_gives_each_example_dacs_count_distribution():
    """PerExampleDropout(0.5) over 1..n against DAC's rule: per example the same distribution
    (count n with probability 1/2 + 1/(2n), each smaller count 1/(2n)). Known difference: DAC
    drops exactly int(B / 2) examples per batch, the first ones; ours drops each example with
    probability 1/2 (the same marginal, a binomial number per batch)."""
    n, batch, draws = 4, 8, 4000
    generator = torch.Generator().manual_seed(0)
    policy = PerExampleDropout(p=0.5)
    ours = torch.stack([policy.sample(batch, list(range(1, n + 1)), generator) for _ in range(draws)])  # (draws, B)
    torch.manual_seed(0)
    theirs = torch.full((draws, batch), n)
    theirs[:, : batch // 2] = torch.randint(1, n + 1, (draws, batch // 2))  # dac's rule, as in its forward
    expected = torch.tensor([1 / (2 * n)] * (n - 1) + [0.5 + 1 / (2 * n)])
    for counts in (ours, theirs):
        frequency = torch.bincount(counts.flatten(), minlength=n + 1)[1:].float() / counts.numel()
        assert torch.allclose(frequency, expected, atol=0.015), frequency
    assert int(ours.min()) >= 1 and int(ours.max()) == n  # never a bypass (count 0)
    assert ((theirs < n).sum(1) <= batch // 2).all()


def test_parameter_count_equals_installed_dac_quantizer():
    from dac.nn.quantize import ResidualVectorQuantize

    ours = FactorizedResidualVectorQuantizer(dimension=1024, n_q=9, codebook_size=1024, codebook_dim=8)
    official = ResidualVectorQuantize(input_dim=1024, n_codebooks=9, codebook_size=1024, codebook_dim=8)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in official.parameters())
