"""EnCodec balancer: the gradient reaching x_hat has the configured proportions."""

import pytest
import torch

from codecplatform.losses.balancer import Balancer


def _two_losses(x_hat):
    half = x_hat.shape[-1] // 2
    big = 1000.0 * x_hat[..., :half].pow(2).sum()  # large scale, touches the first half only
    small = 1e-3 * x_hat[..., half:].abs().sum()  # tiny scale, second half only
    return {"big": big, "small": small}


@pytest.mark.parametrize("weights", [{"big": 1.0, "small": 3.0}, {"big": 0.1, "small": 0.9}])
def test_gradient_has_configured_proportions(weights):
    torch.manual_seed(0)
    balancer = Balancer(total_norm=1.0, ema_decay=0.999, per_batch_item=False)
    x_hat = torch.randn(1, 1, 200, requires_grad=True)
    grad, shares = balancer.balanced_gradient(_two_losses(x_hat), weights, x_hat)
    total = sum(weights.values())
    half = x_hat.shape[-1] // 2
    assert grad[..., :half].norm().item() == pytest.approx(weights["big"] / total, rel=1e-4)
    assert grad[..., half:].norm().item() == pytest.approx(weights["small"] / total, rel=1e-4)
    for name in weights:
        assert shares[name].item() == pytest.approx(weights[name] / total, rel=1e-4)


def test_surrogate_backward_delivers_the_balanced_gradient_and_state_is_saved():
    torch.manual_seed(0)
    balancer = Balancer(per_batch_item=True)
    weights = {"big": 1.0, "small": 1.0}
    x_hat = torch.randn(2, 1, 100, requires_grad=True)
    expected, _ = Balancer(per_batch_item=True).balanced_gradient(_two_losses(x_hat), weights, x_hat)
    surrogate, _ = balancer.surrogate_loss(_two_losses(x_hat), weights, x_hat)
    surrogate.backward()
    assert torch.allclose(x_hat.grad, expected)
    state = balancer.state_dict()
    restored = Balancer()
    restored.load_state_dict(state)
    assert restored.get_extra_state() == balancer.get_extra_state()


def test_ema_smooths_norms_across_steps():
    balancer = Balancer(ema_decay=0.5, per_batch_item=False)
    x_hat = torch.ones(1, 1, 4, requires_grad=True)
    balancer.balanced_gradient({"a": x_hat.sum()}, {"a": 1.0}, x_hat)  # norm 2
    grad, _ = balancer.balanced_gradient({"a": 3 * x_hat.sum()}, {"a": 1.0}, x_hat)  # norm 6
    average = (0.5 * 2 + 6) / (0.5 + 1)  # bias-corrected EMA
    assert grad.norm().item() == pytest.approx(6 / average, rel=1e-5)


def test_missing_weight_is_a_clear_error():
    x_hat = torch.ones(1, 1, 4, requires_grad=True)
    with pytest.raises(KeyError, match="no weight"):
        Balancer().balanced_gradient({"a": x_hat.sum()}, {}, x_hat)
