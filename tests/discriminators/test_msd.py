"""MUFFIN's discriminators: the new MSD, and the MUFFIN options of the MPD and MS-STFT discriminators."""

import pytest
import torch
from torch import nn

from codecplatform.discriminators.mpd import MultiPeriodDiscriminator
from codecplatform.discriminators.msd import MultiScaleDiscriminator, ScaleDiscriminator
from codecplatform.discriminators.msstft import MultiScaleSTFTDiscriminator


def parametrization(conv: nn.Module) -> str:
    if not hasattr(conv, "parametrizations"):
        return "none"
    return type(conv.parametrizations.weight[0]).__name__


def test_msd_default_structure_and_parameter_count():
    torch.manual_seed(0)
    msd = MultiScaleDiscriminator()
    # HiFi-GAN's DiscriminatorS: 9,870,209 weights; weight norm adds 4,097 g's (spectral norm none)
    assert sum(p.numel() for p in msd.parameters()) == 9_870_209 + 2 * (9_870_209 + 4_097)
    assert [parametrization(c) for c in msd.discriminators[0].convs] == ["_SpectralNorm"] * 7
    assert [parametrization(c) for c in msd.discriminators[2].convs] == ["_WeightNorm"] * 7
    assert all(isinstance(d.activation, nn.SiLU) for d in msd.discriminators)
    with torch.no_grad():
        out = msd(torch.randn(2, 1, 4000))
    assert out.names == ["msd_1", "msd_2", "msd_4"]
    # AvgPool1d(4, 2, padding 2) before scales 2 and 3: 4000 -> 2001 -> 1001; then strides 2, 2, 4, 4
    for logits, length in zip(out.logits, (4000, 2001, 1001)):
        for s in (2, 2, 4, 4):
            length = -(-length // s)
        assert logits.shape == (2, 1, length)
    for logits, features in zip(out.logits, out.features):
        assert [f.shape[1] for f in features] == [128, 128, 256, 512, 1024, 1024, 1024, 1]
        assert torch.equal(features[-1], logits)  # official fmap includes the logits


def test_scale_discriminator_pooling_equals_avg_pool():
    torch.manual_seed(0)
    small = dict(channels=(4, 8), kernel_sizes=(5, 5), strides=(1, 2), groups=(1, 4))
    pooled = ScaleDiscriminator(downsample=2, **small)
    plain = ScaleDiscriminator(downsample=0, **small)
    plain.load_state_dict(pooled.state_dict())
    x = torch.randn(1, 1, 300)
    pool = nn.AvgPool1d(4, 2, padding=2)
    torch.testing.assert_close(pooled(x)[0], plain(pool(pool(x)))[0])


def test_msd_channels_folded_gradients_and_errors():
    msd = MultiScaleDiscriminator(
        n_scales=2, channels=(4, 8, 8), kernel_sizes=(5, 5, 3), strides=(1, 2, 1), groups=(1, 4, 1)
    )
    x = torch.randn(2, 3, 200, requires_grad=True)
    out = msd(x)
    assert out.logits[0].shape[0] == 6
    sum(logit.sum() for logit in out.logits).backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match=r"groups\[1\]=4 must divide"):
        ScaleDiscriminator(channels=(2, 8), kernel_sizes=(3, 3), strides=(1, 1), groups=(1, 4))
    with pytest.raises(ValueError, match="equal length"):
        ScaleDiscriminator(channels=(2, 8), kernel_sizes=(3,), strides=(1, 1), groups=(1, 1))
    with pytest.raises(ValueError, match="activation"):
        ScaleDiscriminator(activation="relu")
    with pytest.raises(ValueError, match="n_scales"):
        MultiScaleDiscriminator(n_scales=0)


def test_mpd_muffin_options_and_unchanged_default():
    torch.manual_seed(0)
    default = MultiPeriodDiscriminator(periods=(2, 3), channels=(4, 8, 8))
    muffin = MultiPeriodDiscriminator(
        periods=(2, 3), channels=(4, 8, 8), activation="silu", logits_in_features=True, normalize_input=False
    )
    assert isinstance(default.discriminators[0].activation, nn.LeakyReLU)
    assert isinstance(muffin.discriminators[0].activation, nn.SiLU)
    muffin.load_state_dict(default.state_dict())  # same parameters
    x = torch.randn(1, 1, 300)
    out_default, out_muffin = default(x), muffin(x)
    assert all(len(f) == 3 for f in out_default.features)
    assert all(len(f) == 4 and torch.equal(f[-1], logit) for f, logit in zip(out_muffin.features, out_muffin.logits))
    with pytest.raises(ValueError, match="activation"):
        MultiPeriodDiscriminator(activation="tanh")


def test_msstft_first_conv_without_norm():
    muffin = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(256, 128), first_conv_norm="none")
    default = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(256, 128))
    for disc in muffin.discriminators:
        assert parametrization(disc.convs[0]) == "none"
        assert all(parametrization(c) == "_WeightNorm" for c in list(disc.convs)[1:] + [disc.conv_post])
    assert all(parametrization(d.convs[0]) == "_WeightNorm" for d in default.discriminators)
    # MUFFIN's full MS-STFT: n_ffts 1024, 2048, 512, 256, 128; 32 filters
    full = MultiScaleSTFTDiscriminator(n_ffts=(1024, 2048, 512, 256, 128), first_conv_norm="none")
    assert [d.n_fft for d in full.discriminators] == [1024, 2048, 512, 256, 128]
    with pytest.raises(ValueError, match="first_conv_norm"):
        MultiScaleSTFTDiscriminator(first_conv_norm="batch_norm")
