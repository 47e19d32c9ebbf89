"""Snake activation: formula, gradients, parameter layout, reduced precision."""

from __future__ import annotations

import math

import pytest
import torch

from codecplatform.nn.snake import Snake1d, snake


def test_formula_against_hand_computation() -> None:
    act = Snake1d(2)
    with torch.no_grad():
        act.alpha.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1))
    x = torch.tensor([[[0.0, 1.0, -2.0], [math.pi, 1.0, -3.0]]])
    y = act(x)
    # channel 0, alpha 1: x + sin(x)^2; channel 1, alpha 0.5: x + 2 sin(x/2)^2
    expected = torch.tensor(
        [
            [
                [0.0, 1.0 + math.sin(1.0) ** 2, -2.0 + math.sin(-2.0) ** 2],
                [math.pi + 2.0, 1.0 + 2 * math.sin(0.5) ** 2, -3.0 + 2 * math.sin(-1.5) ** 2],
            ]
        ]
    )
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


def test_alpha_parameter_layout() -> None:
    act = Snake1d(5)
    assert act.alpha.shape == (1, 5, 1)
    assert act.alpha.requires_grad
    assert torch.equal(act.alpha.detach(), torch.ones(1, 5, 1))
    assert list(dict(act.named_parameters())) == ["alpha"]
    assert list(act.state_dict()) == ["alpha"]


def test_zero_alpha_stays_finite() -> None:
    # 1 / (alpha + 1e-9) keeps alpha = 0 finite: sin(0 * x)^2 = 0, so snake(x) = x
    x = torch.randn(2, 3, 7)
    torch.testing.assert_close(snake(x, torch.zeros(1, 3, 1)), x)


def test_gradients_reach_alpha_and_x() -> None:
    torch.manual_seed(0)
    act = Snake1d(3).double()
    with torch.no_grad():
        act.alpha.uniform_(0.3, 2.0)
    x = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    act(x).sum().backward()
    assert x.grad is not None and act.alpha.grad is not None
    # d/dx = 1 + sin(2 alpha x); d/dalpha = -sin^2(ax)/a^2 + (1/a) * 2 sin(ax) cos(ax) x
    a = act.alpha.detach()
    xd = x.detach()
    torch.testing.assert_close(x.grad, 1 + torch.sin(2 * a * xd))
    dalpha = -(torch.sin(a * xd) ** 2) / a**2 + torch.sin(2 * a * xd) * xd / a
    torch.testing.assert_close(act.alpha.grad, dalpha.sum(dim=(0, 2), keepdim=True))
    alpha = act.alpha.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(snake, (x, alpha))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_keeps_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    act = Snake1d(4)
    x = 10 * torch.randn(2, 4, 64)
    y = act(x.to(dtype))
    assert y.dtype == dtype
    # computed in float32, rounded once: error of one bf16/fp16 rounding of the result
    torch.testing.assert_close(y.float(), act(x.to(dtype).float()), rtol=1e-2, atol=1e-2)


def test_bf16_autocast_forward_and_backward() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(4, 4, 3, padding=1)
    act = Snake1d(4)
    x = torch.randn(2, 4, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16
        y = act(h)
        assert y.dtype == torch.bfloat16
        loss = y.float().square().mean()
    loss.backward()
    assert act.alpha.grad is not None and act.alpha.grad.dtype == torch.float32
    assert torch.isfinite(act.alpha.grad).all() and torch.isfinite(x.grad).all()


def test_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match=r"\(batch, 3, time\)"):
        Snake1d(3)(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="positive"):
        Snake1d(0)


def test_inference_path_equals_the_eager_formula_and_dac() -> None:
    """Under no_grad the activations run in place on one buffer: bit-identical to the autograd
    path, and equal to descript-audio-codec's scripted ``snake`` within float rounding."""
    from codecplatform.nn.snake import modified_snake

    torch.manual_seed(0)
    x, alpha = 3 * torch.randn(2, 6, 500), torch.rand(1, 6, 1) + 0.2
    beta, gamma = torch.rand(1, 6, 1), torch.randn(1, 6, 1)
    eager = snake(x, alpha.requires_grad_()).detach()  # autograd on: the eager formula
    eager_mod = modified_snake(x, alpha, beta, gamma).detach()
    alpha = alpha.detach()
    with torch.no_grad():
        fused, fused_mod = snake(x, alpha), modified_snake(x, alpha, beta, gamma)
    assert torch.equal(fused, eager) and torch.equal(fused_mod, eager_mod)
    expected_mod = x + beta * torch.sin(alpha * x) ** 2 / (alpha + 1e-8) - gamma
    torch.testing.assert_close(fused_mod, expected_mod, rtol=1e-5, atol=1e-5)
    from dac.nn import layers  # the reference package is in the lock
    with torch.no_grad():
        torch.testing.assert_close(fused, layers.snake(x, alpha), rtol=1e-6, atol=1e-6)
