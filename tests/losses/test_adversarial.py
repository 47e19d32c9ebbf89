import pytest
import torch

from codecplatform.losses.adversarial import (
    HingeGANLoss,
    L1FeatureMatchingLoss,
    LeastSquaresGANLoss,
    RelativeFeatureMatchingLoss,
)

# Two sub-discriminators; the first has three logits, the second one.
REAL = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0])]
FAKE = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([-1.0])]


def test_hinge_values():
    total, per_sub = HingeGANLoss().discriminator_loss(REAL, FAKE)
    # sub 0: mean(relu(1 - real)) = mean(0, .5, 2) = 5/6; mean(relu(1 + fake)) = mean(0, 1, 2) = 1
    # sub 1: relu(1 - 1) + relu(1 - 1) = 0
    torch.testing.assert_close(per_sub[0], torch.tensor(5 / 6 + 1))
    torch.testing.assert_close(per_sub[1], torch.tensor(0.0))
    torch.testing.assert_close(total, torch.tensor((5 / 6 + 1) / 2))
    # G: sub 0 mean(relu(1 - fake)) = mean(3, 1, 0) = 4/3; sub 1 relu(2) = 2
    torch.testing.assert_close(HingeGANLoss().generator_loss(FAKE), torch.tensor((4 / 3 + 2) / 2))


def test_least_squares_values():
    total, per_sub = LeastSquaresGANLoss().discriminator_loss(REAL, FAKE)
    # sub 0: mean((1 - real)^2) = mean(1, .25, 4) = 1.75; mean(fake^2) = mean(4, 0, 1) = 5/3
    # sub 1: (1 - 1)^2 + (-1)^2 = 1
    torch.testing.assert_close(per_sub[0], torch.tensor(1.75 + 5 / 3))
    torch.testing.assert_close(per_sub[1], torch.tensor(1.0))
    torch.testing.assert_close(total, torch.tensor((1.75 + 5 / 3 + 1) / 2))
    # G: sub 0 mean((1 - fake)^2) = mean(9, 1, 0) = 10/3; sub 1 (1 + 1)^2 = 4
    torch.testing.assert_close(LeastSquaresGANLoss().generator_loss(FAKE), torch.tensor((10 / 3 + 4) / 2))


def test_gan_losses_are_float32_and_check_lengths():
    loss = HingeGANLoss()
    total, _ = loss.discriminator_loss([r.bfloat16() for r in REAL], [f.bfloat16() for f in FAKE])
    assert total.dtype == torch.float32
    with pytest.raises(ValueError, match="real_logits has 2 sub-discriminators but fake_logits has 1"):
        loss.discriminator_loss(REAL, FAKE[:1])
    with pytest.raises(ValueError, match="fake_logits"):
        loss.generator_loss([])


def test_relative_feature_matching_equals_hand_computation():
    real = [[torch.tensor([1.0, -3.0]), torch.tensor([[2.0, 2.0]])], [torch.tensor([4.0])]]
    fake = [[torch.tensor([2.0, -1.0]), torch.tensor([[2.0, 0.0]])], [torch.tensor([2.0])]]
    # layer (0,0): mean(|1-2|, |-3+1|) = 1.5 over mean(1, 3) = 2  -> 0.75
    # layer (0,1): mean(0, 2) = 1 over mean(2, 2) = 2              -> 0.5
    # layer (1,0): 2 over 4                                         -> 0.5
    value = RelativeFeatureMatchingLoss(eps=0.0)(real, fake)
    torch.testing.assert_close(value, torch.tensor((0.75 + 0.5 + 0.5) / 3))
    # L1: (1.5 + 1 + 2) / 3
    torch.testing.assert_close(L1FeatureMatchingLoss()(real, fake), torch.tensor(1.5))


@pytest.mark.parametrize("loss", [RelativeFeatureMatchingLoss(), L1FeatureMatchingLoss()])
def test_real_features_get_no_gradient(loss):
    real = torch.randn(2, 4, 5, requires_grad=True)
    fake = torch.randn(2, 4, 5, requires_grad=True)
    loss([[real * 1.0]], [[fake * 1.0]]).backward()
    assert real.grad is None
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_feature_matching_checks_structure():
    loss = L1FeatureMatchingLoss()
    with pytest.raises(ValueError, match="sub-discriminator 0: real has 2 feature maps, fake has 1"):
        loss([[torch.zeros(1), torch.zeros(1)]], [[torch.zeros(1)]])
    with pytest.raises(ValueError, match="layer 0"):
        loss([[torch.zeros(2)]], [[torch.zeros(3)]])
    with pytest.raises(ValueError, match="real_features has 1 sub-discriminators but fake_features has 2"):
        loss([[torch.zeros(1)]], [[torch.zeros(1)], [torch.zeros(1)]])
