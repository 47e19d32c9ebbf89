from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codecplatform.config import compose_config, instantiate
from codecplatform.losses.adversarial import (
    FeatureMatchingLoss,
    GANLoss,
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
    # G, official (default): sub 0 -mean(-2, 0, 1) = 1/3; sub 1 -(-1) = 1
    torch.testing.assert_close(HingeGANLoss().generator_loss(FAKE), torch.tensor((1 / 3 + 1) / 2))
    # G, paper: sub 0 mean(relu(1 - fake)) = mean(3, 1, 0) = 4/3; sub 1 relu(2) = 2
    torch.testing.assert_close(HingeGANLoss(generator="hinge").generator_loss(FAKE), torch.tensor((4 / 3 + 2) / 2))


def test_least_squares_values():
    total, per_sub = LeastSquaresGANLoss().discriminator_loss(REAL, FAKE)
    # sub 0: mean((1 - real)^2) = mean(1, .25, 4) = 1.75; mean(fake^2) = mean(4, 0, 1) = 5/3
    # sub 1: (1 - 1)^2 + (-1)^2 = 1
    torch.testing.assert_close(per_sub[0], torch.tensor(1.75 + 5 / 3))
    torch.testing.assert_close(per_sub[1], torch.tensor(1.0))
    torch.testing.assert_close(total, torch.tensor((1.75 + 5 / 3 + 1) / 2))
    # G: sub 0 mean((1 - fake)^2) = mean(9, 1, 0) = 10/3; sub 1 (1 + 1)^2 = 4
    torch.testing.assert_close(LeastSquaresGANLoss().generator_loss(FAKE), torch.tensor((10 / 3 + 4) / 2))
    summed = LeastSquaresGANLoss(reduction="sum")
    torch.testing.assert_close(summed.discriminator_loss(REAL, FAKE)[0], torch.tensor(1.75 + 5 / 3 + 1))
    torch.testing.assert_close(summed.generator_loss(FAKE), torch.tensor(10 / 3 + 4))


def test_gan_losses_are_float32_and_check_arguments():
    loss = HingeGANLoss()
    total, _ = loss.discriminator_loss([r.bfloat16() for r in REAL], [f.bfloat16() for f in FAKE])
    assert total.dtype == torch.float32
    with pytest.raises(ValueError, match="real_logits has 2 sub-discriminators but fake_logits has 1"):
        loss.discriminator_loss(REAL, FAKE[:1])
    with pytest.raises(ValueError, match="fake_logits"):
        loss.generator_loss([])
    with pytest.raises(ValueError, match="reduction"):
        LeastSquaresGANLoss(reduction="max")
    with pytest.raises(ValueError, match="generator"):
        HingeGANLoss(generator="relu")
    with pytest.raises(ValueError, match="reduction"):
        L1FeatureMatchingLoss(reduction="none")


def test_feature_matching_equals_hand_computation():
    real = [[torch.tensor([1.0, -3.0]), torch.tensor([[2.0, 2.0]])], [torch.tensor([4.0])]]
    fake = [[torch.tensor([2.0, -1.0]), torch.tensor([[2.0, 0.0]])], [torch.tensor([2.0])]]
    # relative, layer (0,0): mean(|1-2|, |-3+1|) = 1.5 over mean(1, 3) = 2  -> 0.75
    #           layer (0,1): mean(0, 2) = 1 over mean(2, 2) = 2              -> 0.5
    #           layer (1,0): 2 over 4                                         -> 0.5
    # "mean": mean over sub-discriminators of the mean over their layers (audiocraft)
    value = RelativeFeatureMatchingLoss(eps=0.0)(real, fake)
    torch.testing.assert_close(value, torch.tensor(((0.75 + 0.5) / 2 + 0.5) / 2))
    # L1: layers 1.5, 1 | 2
    torch.testing.assert_close(L1FeatureMatchingLoss()(real, fake), torch.tensor(((1.5 + 1) / 2 + 2) / 2))
    torch.testing.assert_close(L1FeatureMatchingLoss(reduction="sum")(real, fake), torch.tensor(1.5 + 1 + 2))


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


# -- parity with the official code ---------------------------------------------------------------


def test_least_squares_sum_equals_dac_gan_loss():
    """dac.nn.loss.GANLoss on dac's own Discriminator (random weights): discriminator loss, generator
    adversarial loss and feature loss equal ours with reduction="sum" (and are K times "mean")."""
    from audiotools import AudioSignal
    from dac.model.discriminator import Discriminator
    from dac.nn.loss import GANLoss as DACGANLoss

    torch.manual_seed(0)
    sample_rate = 16000
    disc = Discriminator(periods=[2, 3, 5], fft_sizes=[512, 256], sample_rate=sample_rate).eval()
    x = 0.3 * torch.randn(2, 1, 4096)
    x_hat = x + 0.1 * torch.randn_like(x)
    official = DACGANLoss(disc)
    real_signal, fake_signal = AudioSignal(x, sample_rate), AudioSignal(x_hat, sample_rate)
    with torch.no_grad():
        d_official = official.discriminator_loss(fake_signal, real_signal)
        g_official, feat_official = official.generator_loss(fake_signal, real_signal)
        real_out, fake_out = disc(x), disc(x_hat)  # per sub-discriminator: [features..., logits]
    real_logits, fake_logits = [o[-1] for o in real_out], [o[-1] for o in fake_out]
    real_features, fake_features = [o[:-1] for o in real_out], [o[:-1] for o in fake_out]
    n_sub = len(real_out)
    assert n_sub == 5 and {len(f) for f in real_features} != {1}

    gan = LeastSquaresGANLoss(reduction="sum")
    features = L1FeatureMatchingLoss(reduction="sum")
    d_ours, _ = gan.discriminator_loss(real_logits, fake_logits)
    torch.testing.assert_close(d_ours, d_official, rtol=1e-5, atol=0)
    torch.testing.assert_close(gan.generator_loss(fake_logits), g_official, rtol=1e-5, atol=0)
    torch.testing.assert_close(features(real_features, fake_features), feat_official, rtol=1e-5, atol=0)
    # the default "mean" is 1/K of DAC's sum for the GAN terms
    mean_d, _ = LeastSquaresGANLoss().discriminator_loss(real_logits, fake_logits)
    torch.testing.assert_close(mean_d * n_sub, d_official, rtol=1e-5, atol=0)


# audiocraft's definitions, transcribed from facebookresearch/audiocraft audiocraft/adversarial/losses.py
# (AdversarialLoss.train_adv and forward with normalize=True, hinge_fake/real_loss, hinge_loss, hinge2_loss,
# FeatureMatchingLoss(L1Loss(), normalize=True), as audiocraft/solvers/builders.py builds them), checked line
# by line against commit 896ec7c47f5e5d1e5aa1e4b260c4405328bf009d (and run against that source: equal).
def audiocraft_train_adv(logits_fake: list[torch.Tensor], logits_real: list[torch.Tensor]) -> torch.Tensor:
    loss = torch.tensor(0.0)
    for fake, real in zip(logits_fake, logits_real):
        hinge_fake = -torch.mean(torch.min(-fake - 1, torch.zeros_like(fake)))
        hinge_real = -torch.mean(torch.min(real - 1, torch.zeros_like(real)))
        loss += hinge_fake + hinge_real
    return loss / len(logits_fake)


def audiocraft_generator(
    logits_fake: list[torch.Tensor],
    fmaps_fake: list[list[torch.Tensor]],
    fmaps_real: list[list[torch.Tensor]],
    adv: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    adv_loss, feat_loss = torch.tensor(0.0), torch.tensor(0.0)
    for logits in logits_fake:
        if adv == "hinge":
            adv_loss += -logits.mean()
        else:  # hinge2
            adv_loss += -torch.mean(torch.min(logits - 1, torch.zeros_like(logits)))
    for fmap_fake, fmap_real in zip(fmaps_fake, fmaps_real):
        per_sub, feat_scale = torch.tensor(0.0), torch.tensor(0.0)
        for f_fake, f_real in zip(fmap_fake, fmap_real):
            per_sub += F.l1_loss(f_fake, f_real)
            feat_scale += torch.mean(torch.abs(f_real))  # computed, never applied
        feat_loss += per_sub / len(fmap_fake)
    n_sub = len(logits_fake)
    return adv_loss / n_sub, feat_loss / n_sub


def random_discriminator_outputs(seed: int):
    """Three sub-discriminators with 4, 2 and 3 feature maps of different shapes."""
    gen = torch.Generator().manual_seed(seed)

    def out():
        logits = [torch.randn(2, 1, 7, 5, generator=gen) * 2 for _ in range(3)]
        features = [[torch.randn(2, 4, 9 - j, 5, generator=gen) for j in range(n)] for n in (4, 2, 3)]
        return logits, features

    return out(), out()


def test_hinge_and_l1_features_equal_audiocraft():
    (real_logits, real_features), (fake_logits, fake_features) = random_discriminator_outputs(0)
    d_ours, _ = HingeGANLoss().discriminator_loss(real_logits, fake_logits)
    torch.testing.assert_close(d_ours, audiocraft_train_adv(fake_logits, real_logits), rtol=1e-5, atol=0)
    for option, audiocraft_name in (("negative_mean", "hinge"), ("hinge", "hinge2")):
        adv, feat = audiocraft_generator(fake_logits, fake_features, real_features, audiocraft_name)
        g_ours = HingeGANLoss(generator=option).generator_loss(fake_logits)
        torch.testing.assert_close(g_ours, adv, rtol=1e-5, atol=0)
    torch.testing.assert_close(L1FeatureMatchingLoss()(real_features, fake_features), feat, rtol=1e-5, atol=0)
    # the paper's relative feature matching is a different quantity (audiocraft does not normalize)
    relative = RelativeFeatureMatchingLoss()(real_features, fake_features)
    assert not torch.allclose(relative, feat, rtol=1e-2)


# -- the experiment configs use the official definitions ---------------------------------------------

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def configured(experiment: str) -> tuple[GANLoss, FeatureMatchingLoss]:
    model = compose_config(EXPERIMENTS / experiment)["model"]["init_args"]
    return instantiate(model["gan_loss"], GANLoss), instantiate(model["feature_loss"], FeatureMatchingLoss)


@pytest.mark.parametrize("experiment", ["dac/44khz.yaml", "dac/24khz.yaml", "dac/16khz.yaml"])
def test_dac_configs_equal_dac_gan_loss(experiment):
    from dac.nn.loss import GANLoss as DACGANLoss

    (real_logits, real_features), (fake_logits, fake_features) = random_discriminator_outputs(1)
    real_audio, fake_audio = torch.zeros(1, 1, 8), torch.ones(1, 1, 8)

    def stub_discriminator(audio):  # dac's format: per sub-discriminator [features..., logits]
        logits, features = (
            (real_logits, real_features) if torch.equal(audio, real_audio) else (fake_logits, fake_features)
        )
        return [[*maps, out] for maps, out in zip(features, logits)]

    class Signal:  # the two attributes of an AudioSignal that dac's GANLoss uses
        def __init__(self, audio):
            self.audio_data = audio

        def clone(self):
            return Signal(self.audio_data.clone())

        def detach(self):
            return self

    official = DACGANLoss(stub_discriminator)
    d_official = official.discriminator_loss(Signal(fake_audio), Signal(real_audio))
    g_official, feat_official = official.generator_loss(Signal(fake_audio), Signal(real_audio))
    gan, features = configured(experiment)
    torch.testing.assert_close(gan.discriminator_loss(real_logits, fake_logits)[0], d_official, rtol=1e-5, atol=0)
    torch.testing.assert_close(gan.generator_loss(fake_logits), g_official, rtol=1e-5, atol=0)
    torch.testing.assert_close(features(real_features, fake_features), feat_official, rtol=1e-5, atol=0)


@pytest.mark.parametrize("experiment", ["encodec/24khz_mono.yaml", "encodec/48khz_stereo.yaml"])
def test_encodec_configs_equal_audiocraft(experiment):
    (real_logits, real_features), (fake_logits, fake_features) = random_discriminator_outputs(2)
    adv, feat = audiocraft_generator(fake_logits, fake_features, real_features, "hinge")
    gan, features = configured(experiment)
    torch.testing.assert_close(gan.discriminator_loss(real_logits, fake_logits)[0],
                               audiocraft_train_adv(fake_logits, real_logits), rtol=1e-5, atol=0)  # fmt: skip
    torch.testing.assert_close(gan.generator_loss(fake_logits), adv, rtol=1e-5, atol=0)
    torch.testing.assert_close(features(real_features, fake_features), feat, rtol=1e-5, atol=0)
