"""MUFFIN's modified snake and GRN against their official formulas (SPECS, muffin/modules/utils.py)."""

import pytest
import torch

from codecplatform.nn.grn import GRN
from codecplatform.nn.snake import ModifiedSnake1d, Snake1d


def test_modified_snake_formula_and_init():
    torch.manual_seed(0)
    act = ModifiedSnake1d(3)
    assert torch.equal(act.alpha, torch.ones(1, 3, 1))
    assert torch.equal(act.beta, torch.ones(1, 3, 1))
    assert torch.equal(act.gamma, torch.zeros(1, 3, 1))
    x = torch.randn(2, 3, 50) * 3
    # at init it is the plain snake (1e-8 instead of 1e-9 in the reciprocal)
    torch.testing.assert_close(act(x), Snake1d(3)(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        act.alpha.copy_(torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1))
        act.beta.copy_(torch.tensor([-1.0, 0.3, 2.0]).view(1, 3, 1))
        act.gamma.copy_(torch.tensor([0.1, -0.2, 0.7]).view(1, 3, 1))
    a, b, g = act.alpha, act.beta, act.gamma
    expected = x + b * torch.sin(a * x) ** 2 / (a + 1e-8) - g
    torch.testing.assert_close(act(x), expected)


def test_modified_snake_gradients_dtype_and_shape_check():
    act = ModifiedSnake1d(4)
    x = torch.randn(2, 4, 16, requires_grad=True)
    act(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (act.alpha, act.beta, act.gamma))
    assert x.grad is not None
    assert act(torch.randn(1, 4, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="ModifiedSnake1d expects"):
        act(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="channels"):
        ModifiedSnake1d(0)


def test_grn_is_identity_at_init():
    grn = GRN(5)
    assert torch.equal(grn.gamma, torch.zeros(1, 5, 1)) and torch.equal(grn.beta, torch.zeros(1, 5, 1))
    x = torch.randn(2, 5, 7)
    assert torch.equal(grn(x), x)


def test_grn_formula_norm_over_channels_mean_over_time():
    torch.manual_seed(1)
    grn = GRN(4)
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(3, 4, 9)
    # transcription of SPECS: Gx = L2 norm over channels; Nx = Gx / (mean_t Gx + 1e-8)
    gx = torch.sqrt((x**2).sum(dim=1, keepdim=True))  # (B, 1, T)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(grn(x), grn.gamma * (x * nx) + grn.beta + x)
    # Nx is per (example, time step): a louder frame is boosted, each example on its own
    y = x.clone()
    y[0, :, 3] *= 10
    changed = (grn(y) - grn(x)).abs().amax(dim=(1, 2))
    assert changed[0] > 0 and changed[1:].eq(0).all()


def test_grn_gradients_and_checks():
    grn = GRN(2)
    with torch.no_grad():
        grn.gamma.fill_(0.5)
    grn(torch.randn(1, 2, 6)).sum().backward()
    assert grn.gamma.grad is not None and grn.beta.grad is not None
    assert grn(torch.randn(1, 2, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="GRN expects"):
        grn(torch.randn(1, 3, 6))


def test_modified_snake_training_node_matches_the_formula_gradients():
    """Eager float32 training runs one hand-written autograd node: same forward bits as the formula,
    gradients of x, alpha, beta, gamma as autograd of the formula in float64 (float rounding)."""
    from codecplatform.nn.snake import modified_snake

    torch.manual_seed(0)
    x = 3 * torch.randn(2, 5, 40)
    params = [torch.rand(1, 5, 1) + 0.2, torch.randn(1, 5, 1), torch.randn(1, 5, 1)]
    grad_out = torch.randn(2, 5, 40)
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    y = modified_snake(*leaves)
    assert type(y.grad_fn).__name__ == "_ModifiedSnakeBackward"
    got = torch.autograd.grad(y, leaves, grad_out)
    leaves64 = [t.double().requires_grad_() for t in (x, *params)]
    x64, a, b, g = leaves64
    y64 = x64 + b * torch.sin(a * x64) ** 2 / (a + 1e-8) - g
    want = torch.autograd.grad(y64, leaves64, grad_out.double())
    with torch.no_grad():
        assert torch.equal(y, modified_snake(x, *params))  # the inference path's bits
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for name, a_grad, w_grad in zip(["x", "alpha", "beta", "gamma"], got, want):
        torch.testing.assert_close(a_grad.double(), w_grad, rtol=1e-4, atol=1e-4, msg=f"d/d{name}")
    only_x = torch.autograd.grad(modified_snake(leaves[0], *params), leaves[0], grad_out)[0]  # params frozen
    torch.testing.assert_close(only_x, got[0])


def test_grn_gradient_is_finite_on_an_all_zero_step():
    """A time step that is zero in every channel (padding) has norm 0 and a finite gradient, as
    linalg.vector_norm's; elsewhere output and gradients equal the vector_norm formula."""
    torch.manual_seed(2)
    grn = GRN(4)
    with torch.no_grad():
        grn.gamma.normal_()
    x = torch.randn(2, 4, 12)
    x[:, :, 8:] = 0
    x.requires_grad_()
    grn(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(grn.gamma.grad).all()
    ref = x.detach().clone().requires_grad_()
    gx = torch.linalg.vector_norm(ref, dim=1, keepdim=True)
    y = grn.gamma * (ref * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-8))) + grn.beta + ref
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
