"""The adaptive adversarial weight (VQGAN / LDM autoencoders): at the last layer, the adversarial part
of the gradient is ``weight`` x the reconstruction gradient; nothing flows through the weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from codecplatform.losses.adaptive_weight import AdaptiveAdversarialWeight


def graph(seed: int = 0):
    torch.manual_seed(seed)
    hidden, last = nn.Linear(3, 8), nn.Linear(8, 4)
    x = torch.randn(5, 3)
    x_hat = last(torch.tanh(hidden(x)))
    rec = (x_hat - torch.randn(5, 4)).pow(2).mean()  # smooth: its gradient depends on the weights
    adv = -7.0 * x_hat.mean()  # -mean(D(x_hat)) of a linear "discriminator", another scale
    return last.weight, x_hat, rec, adv


def test_adversarial_gradient_is_weight_times_the_reconstruction_gradient_at_the_last_layer():
    weight, x_hat, rec, adv = graph()
    g_rec = torch.autograd.grad(rec, weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, weight, retain_graph=True)[0]
    balancer = AdaptiveAdversarialWeight()
    balancer.use_last_layer(weight)
    total, shares = balancer.surrogate_loss({"mel": rec, "adv": adv}, {"mel": 2.0, "adv": 0.5}, x_hat)
    expected = 0.5 * (2.0 * g_rec).norm() / (g_adv.norm() + 1e-4)  # the official calculate_adaptive_weight
    assert float(shares["adv"]) == pytest.approx(float(expected), rel=1e-5)
    (grad,) = torch.autograd.grad(total, weight)
    adversarial_part = grad - 2.0 * g_rec  # no gradient through the weight itself
    assert torch.allclose(adversarial_part, shares["adv"] * g_adv, atol=1e-6)
    assert float(adversarial_part.norm()) == pytest.approx(0.5 * float((2.0 * g_rec).norm()), rel=1e-3)
    assert list(balancer.parameters()) == [] and balancer.state_dict() == {"_extra_state": {}}


def test_without_adversarial_loss_and_without_last_layer():
    weight, x_hat, rec, adv = graph()
    balancer = AdaptiveAdversarialWeight()
    total, shares = balancer.surrogate_loss({"mel": rec}, {"mel": 3.0, "adv": 0.5}, x_hat)
    assert shares == {} and torch.equal(total, 3.0 * rec)  # before the discriminator starts
    _, shares = balancer.surrogate_loss({"mel": rec, "adv": adv}, {"mel": 1.0, "adv": 0.5}, x_hat)
    g_rec, g_adv = (torch.autograd.grad(loss, x_hat, retain_graph=True)[0] for loss in (rec, adv))
    assert float(shares["adv"]) == pytest.approx(0.5 * float(g_rec.norm() / (g_adv.norm() + 1e-4)), rel=1e-5)
    capped = AdaptiveAdversarialWeight(max_weight=1e-3)
    _, shares = capped.surrogate_loss({"mel": rec, "adv": adv}, {"mel": 1.0, "adv": 0.5}, x_hat)
    assert float(shares["adv"]) == pytest.approx(0.5e-3)
    with pytest.raises(KeyError, match="adv"):
        balancer.surrogate_loss({"mel": rec, "adv": adv}, {"mel": 1.0}, x_hat)
