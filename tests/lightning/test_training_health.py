"""Training health statistics: the decision threshold and equilibrium loss of each GAN loss, the
discriminator's scores and accuracy, per-codebook perplexity of the examples that used each
codebook; GANCodecModule logs them every step and returns its logged values."""

from __future__ import annotations

import math

import pytest
import torch
from test_gan_codec import fit, tiny_module

from codecplatform.lightning.diagnostics import (
    codebook_perplexities,
    decision_threshold,
    discriminator_scores,
    equilibrium_loss,
)
from codecplatform.losses.adversarial import HingeGANLoss, LeastSquaresGANLoss
from codecplatform.metrics.codebook import CodebookUsage


@pytest.mark.parametrize(
    "loss, threshold, equilibrium", [(HingeGANLoss(), 0.0, 2.0), (LeastSquaresGANLoss(), 0.5, 0.5)]
)
def test_threshold_and_equilibrium_of_each_gan_loss(loss, threshold, equilibrium):
    assert decision_threshold(loss) == pytest.approx(threshold, abs=1e-6)
    assert equilibrium_loss(loss) == pytest.approx(equilibrium, abs=1e-6)
    # a discriminator that answers the threshold for everything has exactly that loss
    constant = [torch.full((2, 7), threshold)]
    assert float(loss.discriminator_loss(constant, constant)[0]) == pytest.approx(equilibrium, abs=1e-6)


def test_equilibrium_follows_the_reduction_over_sub_discriminators():
    assert equilibrium_loss(LeastSquaresGANLoss(), num_logits=4) == pytest.approx(0.5)  # mean
    assert equilibrium_loss(LeastSquaresGANLoss(reduction="sum"), num_logits=4) == pytest.approx(2.0)
    assert equilibrium_loss(HingeGANLoss(reduction="sum"), num_logits=3) == pytest.approx(6.0)


def test_discriminator_scores_average_over_sub_discriminators():
    real = [torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, -1.0, 3.0, 1.0]])]  # means 1.25, 1.0
    fake = [torch.tensor([[-1.0, 0.2]]), torch.tensor([[-2.0, -2.0, -2.0, 2.0]])]  # means -0.4, -1.0
    scores = discriminator_scores(real, fake, threshold=0.0)
    assert scores["real_score"].item() == pytest.approx(1.125)
    assert scores["fake_score"].item() == pytest.approx(-0.7)
    # sub 1: real 2/2, fake 1/2 -> 0.75; sub 2: real 3/4, fake 3/4 -> 0.75
    assert scores["accuracy"].item() == pytest.approx(0.75)
    assert discriminator_scores(real, fake, threshold=10.0)["accuracy"].item() == pytest.approx(0.5)


def test_codebook_perplexity_counts_only_examples_that_used_the_codebook():
    torch.manual_seed(0)
    codes = torch.randint(0, 8, (3, 2, 10))
    codes[2, 1] = 7  # example 2 would collapse codebook 1, but it used one codebook only
    n_q = torch.tensor([2, 2, 1])
    got = codebook_perplexities(codes, n_q, num_codebooks=3, codebook_size=8)
    usage = CodebookUsage(3, 8)
    usage.update(codes, n_q)
    expected = usage.compute()["perplexity"]
    assert torch.allclose(got[:2], expected[:2])
    assert math.isnan(got[2])  # codebook 2: not run in this batch
    only_first = codebook_perplexities(codes, torch.tensor([1, 1, 1]), 8, num_codebooks=3)
    assert not math.isnan(only_first[0]) and math.isnan(only_first[1])
    collapsed = codebook_perplexities(torch.zeros(2, 1, 5, dtype=torch.long), None, 8)  # K' = 1 result
    assert collapsed.tolist() == [1.0]


def test_training_step_logs_and_returns_the_health_values():
    module = tiny_module()
    returned = []
    original = module.training_step
    module.training_step = lambda *a, **k: returned.append(original(*a, **k)) or returned[-1]
    trainer = fit(module, batches=2)
    metrics = trainer.callback_metrics
    keys = ["train/d/real_score", "train/d/fake_score", "train/d/accuracy", "train/d/equilibrium_loss"]
    keys += ["train/d/grad_norm", "train/g/grad_norm"]
    keys.append("train/codebook/perplexity/0")  # the first codebook runs on every batch
    for key in keys:
        assert key in metrics, key
        assert all(key in values for values in returned), key
        assert all(isinstance(values[key], torch.Tensor) for values in returned), key
    assert 0.0 <= float(metrics["train/d/accuracy"]) <= 1.0
    assert float(metrics["train/d/equilibrium_loss"]) == pytest.approx(2.0)  # hinge, mean over sub-discriminators
    for values in returned:  # one key per codebook the batch ran, each with frames: no NaN is logged
        ran = [k for k in values if k.startswith("train/codebook/perplexity/")]
        assert len(ran) >= 1 and all(1.0 <= float(values[k]) <= 16.0 for k in ran), values
    assert all(math.isfinite(float(v)) for v in metrics.values())
