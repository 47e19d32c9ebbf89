"""MuCodec flow matching: the rectified-flow loss and the Euler sampler on Gaussians (known answers),
classifier-free guidance, the conditioning layout, long-audio windows, code sources, the real DiT size."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from codecplatform.config import compose_config, instantiate
from codecplatform.mucodec.flow import (
    CodeSource,
    FlowMatchingDiT,
    RandomProjectionCodeSource,
    TokenizerCodeSource,
    crossfade,
    euler_solve,
    flow_matching_loss,
    interpolate,
    target_velocity,
)
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer

SIGMA = 1e-4
TINY_TRANSFORMER = dict(
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=24,
    out_channels=8,
    num_layers=1,
    norm_num_groups=4,
    cross_attention_dim=None,
    attention_bias=True,
    sample_size=8,
    patch_size=2,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)


def tiny_flow(**overrides) -> FlowMatchingDiT:
    torch.manual_seed(0)
    quantizer = FactorizedResidualVectorQuantizer(dimension=12, n_q=2, codebook_size=16, codebook_dim=4)
    args = dict(quantizer=quantizer, latent_channels=8, latent_bins=8)
    return FlowMatchingDiT(TINY_TRANSFORMER, **{**args, **overrides}).eval()


# -- Gaussian to Gaussian: x0 ~ N(0, 1), x1 ~ N(m, s^2) -----------------------------------------------
M, S = 1.5, 0.5


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x1 - (1 - sigma) x0 | x_t = x] for the Gaussian pair (the marginal velocity field)."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).double()
    a = 1 - (1 - SIGMA) * t
    var = a**2 + t**2 * S**2
    cov = t * S**2 - (1 - SIGMA) * a
    return (M + cov / var * (x.double() - t * M)).to(x.dtype)


def test_interpolation_endpoints_and_velocity():
    torch.manual_seed(0)
    x0, x1 = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(4), SIGMA), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(4), SIGMA), SIGMA * x0 + x1)
    t, h = torch.full((4,), 0.3), 1e-3
    finite = (interpolate(x0, x1, t + h, SIGMA) - interpolate(x0, x1, t - h, SIGMA)) / (2 * h)
    torch.testing.assert_close(finite, target_velocity(x0, x1, SIGMA), atol=1e-3, rtol=1e-3)


def test_loss_with_the_exact_field_is_the_known_minimum():
    """E ||v*(x_t, t) - u||^2 = E_t [Var(u) - Cov(x_t, u)^2 / Var(x_t)]; any other field is worse."""
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x0 = torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    x1 = M + S * torch.randn(n, 1, 1, 1, generator=g, dtype=torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64)
    x_t, u = interpolate(x0, x1, t, SIGMA), target_velocity(x0, x1, SIGMA)
    loss = flow_matching_loss(exact_velocity(x_t, t), u)
    grid = torch.linspace(0, 1, 100_001, dtype=torch.float64)
    a = 1 - (1 - SIGMA) * grid
    minimum = (S**2 + (1 - SIGMA) ** 2 - (grid * S**2 - (1 - SIGMA) * a) ** 2 / (a**2 + grid**2 * S**2)).mean()
    assert float(loss) == pytest.approx(float(minimum), rel=0.01)
    assert float(flow_matching_loss(exact_velocity(x_t, t) + 0.1, u)) > float(loss) + 0.009
    mask = torch.zeros(n, 1, dtype=torch.bool)
    mask[: n // 2] = True  # masked frames are left out
    torch.testing.assert_close(
        flow_matching_loss(exact_velocity(x_t, t), u, mask),
        flow_matching_loss(exact_velocity(x_t, t)[: n // 2], u[: n // 2]),
    )


def test_euler_with_the_exact_field_reaches_the_target_distribution():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(100_000, 1, 1, 1, generator=g, dtype=torch.float64)
    x = euler_solve(exact_velocity, noise, num_steps=200, sigma_min=SIGMA)
    assert float(x.mean()) == pytest.approx(M, abs=0.01)
    assert float(x.std()) == pytest.approx(math.sqrt(S**2 + SIGMA**2), abs=0.01)


def test_euler_renoises_the_prompt_region_and_returns_the_prompt():
    seen = []

    def velocity(x, t):
        seen.append((x.clone(), float(t[0])))
        return torch.zeros_like(x)

    noise, prompt = torch.randn(2, 1, 6, 3), torch.randn(2, 1, 6, 3)
    lengths = torch.tensor([2, 0])
    out = euler_solve(velocity, noise, 4, SIGMA, prompt, lengths)
    for x, t in seen:  # before every step the prompt frames are x_t of the prompt with the same noise
        torch.testing.assert_close(x[0, :, :2], (1 - (1 - SIGMA) * t) * noise[0, :, :2] + t * prompt[0, :, :2])
        torch.testing.assert_close(x[1], noise[1])  # no prompt, zero velocity: unchanged
    torch.testing.assert_close(out[0, :, :2], prompt[0, :, :2])
    torch.testing.assert_close(out[0, :, 2:], noise[0, :, 2:])
    assert [t for _, t in seen] == pytest.approx([0.0, 0.25, 0.5, 0.75])


# -- the model ------------------------------------------------------------------------------------
def test_guidance_scale_one_is_the_conditional_prediction():
    flow = tiny_flow()
    torch.manual_seed(1)
    x, prompt, cond = (torch.randn(2, 8, 6, 8) for _ in range(3))
    t = torch.tensor([0.2, 0.7])
    conditional = flow.velocity(x, t, prompt, cond)
    unconditional = flow.velocity(x, t, prompt, torch.zeros_like(cond))
    torch.testing.assert_close(flow.guided_velocity(x, t, prompt, cond, 1.0), conditional)
    torch.testing.assert_close(
        flow.guided_velocity(x, t, prompt, cond, 1.5),
        unconditional + 1.5 * (conditional - unconditional),
        atol=1e-5,
        rtol=1e-5,
    )
    assert not torch.allclose(conditional, unconditional)


def test_condition_stacks_two_code_frames_per_latent_frame_and_pads_with_the_empty_embedding():
    flow = tiny_flow()
    codes = torch.randint(0, 8, (2, 2, 7))
    cond = flow.condition(codes)  # ceil(7 / 2) = 4 latent frames, the last one past the valid codes
    assert cond.shape == (2, 8, 4, 8)
    q = flow.quantizer  # from_codes: each codebook's entry through its out_proj, summed over codebooks
    vectors = sum(q.layers[k].out_proj(q.layers[k].codebook(codes[:, k]).transpose(1, 2)) for k in range(2))
    h = flow.condition_projection(vectors.transpose(1, 2))  # (B, 7, 4 * 8)
    for j in range(3):
        torch.testing.assert_close(cond[:, :4, j], h[:, 2 * j].reshape(2, 4, 8))  # code 2j: channels 0..3
        torch.testing.assert_close(cond[:, 4:, j], h[:, 2 * j + 1].reshape(2, 4, 8))  # code 2j+1: 4..7
    empty = flow.empty_embedding.reshape(8, 8)
    torch.testing.assert_close(cond[:, :, 3], empty.expand(2, 8, 8))
    cond = flow.condition(codes[..., :6], frames=5, valid_codes=torch.tensor([6, 2]))
    torch.testing.assert_close(cond[0, :, 3:], empty[:, None].expand(8, 2, 8))
    torch.testing.assert_close(cond[1, :, 1:], empty[:, None].expand(8, 4, 8))


@pytest.mark.parametrize("joint", [True, False])
def test_quantizer_trains_with_the_flow_through_from_codes_unless_frozen(joint):
    flow = tiny_flow(train_quantizer=joint).train()
    codes = torch.randint(0, 16, (2, 2, 8))
    loss, _ = flow.loss(torch.randn(2, 8, 4, 8), flow.condition(codes), None, torch.Generator().manual_seed(0))
    loss.backward()
    layer = flow.quantizer.layers[0]
    assert layer.in_proj.weight.grad is None  # from_codes never uses the input projection
    assert flow.condition_projection.weight.grad is not None
    if joint:
        rows = layer.codebook.weight.grad.abs().sum(1)
        assert bool((rows[codes[:, 0].unique()] > 0).all())  # the used entries learn from the flow loss ...
        unused = torch.ones(16, dtype=torch.bool)
        unused[codes[:, 0].unique()] = False
        assert float(rows[unused].sum()) == 0  # ... the others do not
        assert float(layer.out_proj.parametrizations.weight.original1.grad.abs().sum()) > 0
    else:
        assert all(p.grad is None and not p.requires_grad for p in flow.quantizer.parameters())


def test_dit_input_is_noisy_prompt_and_condition_concatenated():
    flow = tiny_flow()
    assert flow.transformer.config.in_channels == 3 * flow.latent_channels
    captured = {}
    hook = flow.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(x=args[0]), with_kwargs=True
    )
    x, prompt, cond = (torch.randn(1, 8, 5, 8) for _ in range(3))  # odd frames: padded to the patch
    v = flow.velocity(x, torch.tensor([0.5]), prompt, cond)
    hook.remove()
    assert v.shape == x.shape
    assert captured["x"].shape == (1, 24, 6, 8)
    torch.testing.assert_close(captured["x"][:, :, :5], torch.cat([x, prompt, cond], dim=1))
    with pytest.raises(ValueError, match="in_channels must be 24"):
        FlowMatchingDiT(
            {**TINY_TRANSFORMER, "in_channels": 16},
            FactorizedResidualVectorQuantizer(dimension=12, n_q=1, codebook_size=4, codebook_dim=2),
            latent_channels=8,
            latent_bins=8,
        )


def test_training_loss_drops_conditions_and_leaves_the_prompt_out():
    flow = tiny_flow(condition_dropout=0.5).train()
    conditions = []
    original = flow.velocity
    flow.velocity = lambda x, t, p, c: (conditions.append((p, c)), original(x, t, p, c))[1]
    x1 = torch.randn(64, 8, 4, 8)
    cond = torch.randn(64, 8, 4, 8)
    loss, logs = flow.loss(x1, cond, torch.full((64,), 2), torch.Generator().manual_seed(0))
    loss.backward()
    prompt, used = conditions[0]
    dropped = used.flatten(1).abs().sum(1) == 0
    assert 10 < int(dropped.sum()) < 54 and float(logs["condition_dropped"]) == pytest.approx(
        float(dropped.float().mean())
    )
    torch.testing.assert_close(used[~dropped], cond[~dropped])
    torch.testing.assert_close(prompt[:, :, :2], x1[:, :, :2])  # the clean prompt frames ...
    assert float(prompt[:, :, 2:].abs().sum()) == 0  # ... and zeros elsewhere
    assert flow.transformer.proj_out.weight.grad is not None


def test_sample_long_chains_windows_through_the_prompt():
    flow = tiny_flow()
    codes = torch.randint(0, 8, (1, 2, 40))
    out = flow.sample_long(
        codes, window=16, hop=12, num_steps=2, guidance_scale=1.5, generator=torch.Generator().manual_seed(0)
    )
    assert len(out.windows) == 3 and out.overlap == 2 and out.frames == 20
    for previous, window in zip(out.windows, out.windows[1:]):
        assert window.shape == (1, 8, 8, 8)
        torch.testing.assert_close(window[:, :, :2], previous[:, :, -2:])  # the prompt is kept exactly
    joined = crossfade(out.windows, out.overlap, dim=2)
    assert joined.shape[2] == 8 + 2 * 6


def test_crossfade_is_linear_over_the_overlap():
    a, b = torch.ones(1, 10), torch.zeros(1, 8)
    out = crossfade([a, b], 5)
    assert out.shape == (1, 13)
    torch.testing.assert_close(out[0, 5:10], 1 - torch.linspace(0, 1, 5))
    torch.testing.assert_close(out[0, :5], torch.ones(5))


# -- code sources -----------------------------------------------------------------------------------
def test_random_projection_code_source_is_deterministic():
    source = RandomProjectionCodeSource(codebook_sizes=[16, 8], n_mels=32, dim=4, seed=3)
    assert isinstance(source, CodeSource) and not source.training
    source.train()
    assert not source.training  # frozen parts stay in eval mode
    x = torch.randn(2, 2, 24000)
    codes = source.codes(x)
    assert codes.shape == (2, 2, 1 + 24000 // 960) and codes.dtype == torch.long
    assert int(codes[:, 0].max()) < 16 and int(codes[:, 1].max()) < 8
    torch.testing.assert_close(
        RandomProjectionCodeSource(codebook_sizes=[16, 8], n_mels=32, dim=4, seed=3).codes(x), codes
    )
    assert len(codes[0, 0].unique()) > 1


class FakeTokenizer(nn.Module):
    sample_rate, frame_rate, codebook_sizes = 24000, 25.0, [4]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x):
        return SimpleNamespace(codes=torch.zeros(x.shape[0], 1, 1 + x.shape[-1] // 960, dtype=torch.long))


def test_tokenizer_code_source_wraps_and_loads_a_tokenizer(tmp_path):
    tokenizer = FakeTokenizer()
    with torch.no_grad():
        tokenizer.scale.fill_(3.0)
    torch.save({"state_dict": {"tokenizer.scale": tokenizer.scale.detach()}}, tmp_path / "tok.ckpt")
    source = TokenizerCodeSource(FakeTokenizer(), str(tmp_path / "tok.ckpt"))
    assert float(source.tokenizer.scale) == 3.0 and not source.tokenizer.scale.requires_grad
    assert (source.sample_rate, source.frame_rate, source.codebook_sizes) == (24000, 25.0, [4])
    assert source.codes(torch.zeros(1, 2, 9600)).shape == (1, 1, 11)
    with pytest.raises(FileNotFoundError, match="code_source.init_args.checkpoint"):
        TokenizerCodeSource(FakeTokenizer(), str(tmp_path / "missing.ckpt"))


# -- the real configuration -------------------------------------------------------------------------
def test_real_dit_has_742m_parameters(capsys):
    from pathlib import Path

    config = compose_config(Path(__file__).resolve().parents[2] / "experiments" / "mucodec" / "flow.yaml")
    with torch.device("meta"):
        flow = instantiate(config["model"]["init_args"]["flow"], FlowMatchingDiT)
    dit = sum(p.numel() for p in flow.transformer.parameters())
    total = sum(p.numel() for p in flow.parameters())
    with capsys.disabled():
        print(f"\nflow DiT: {dit:,} parameters; with the quantizer and condition projection: {total:,}")
    # Official: xuyaoxun/MuCodec@128f91be models/transformer_2d_flow.py Transformer2DModel built from
    # configs/models/transformer2D.json and counted: 742,381,328 (its timestep embedder reads a 512-d sinusoid).
    assert dit == 742_381_328
    # Official PromptCondAudioDiffusion without its MuEncoder (same model, same config), counted:
    # rvq_muencoder_emb 591,936 + cond_muencoder_emb 524,800 + zero_cond_embedding1 1,024 + the DiT.
    assert total == 743_499_088
    assert total - dit == 591_936 + 524_800 + 1_024
