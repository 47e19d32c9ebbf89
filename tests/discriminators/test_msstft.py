import pytest
import torch

from codecplatform.discriminators.msstft import MultiScaleSTFTDiscriminator

T = 4800  # 0.2 s at 24 kHz


def small(**kwargs) -> MultiScaleSTFTDiscriminator:
    return MultiScaleSTFTDiscriminator(filters=4, n_ffts=[256, 128], **kwargs)


def test_encodec_config_structure_and_parameter_count():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator()
    out = disc(torch.randn(2, 1, T))
    assert out.names == ["msstft_2048", "msstft_1024", "msstft_512", "msstft_256", "msstft_128"]
    assert len(out.logits) == len(out.features) == 5
    for n_fft, logits, fmaps in zip(disc.n_ffts, out.logits, out.features):
        frames = 1 + (T - n_fft) // (n_fft // 4)  # center=False
        freq = n_fft // 2 + 1
        for _ in range(3):  # three convs with frequency stride 2
            freq = (freq - 1) // 2 + 1
        assert logits.shape == (2, 1, frames, freq)
        assert len(fmaps) == 1 + 3 + 1  # first conv, one per dilation, (3, 3) conv
        assert all(f.shape[:3] == (2, 32, frames) for f in fmaps)
    n_params = sum(p.numel() for p in disc.parameters())
    print(f"EnCodec MS-STFT discriminator parameters: {n_params}")
    # Per scale with weight norm (weight v + gain g (one per output channel) + bias):
    #   conv 2->32 (3, 9):            2*32*27 + 32 + 32 =  1,792
    #   3 x conv 32->32 (3, 9):   3 * (32*32*27 + 32 + 32) = 83,136
    #   conv 32->32 (3, 3):           32*32*9 + 32 + 32 =  9,280
    #   conv_post 32->1 (3, 3):       32*9 + 1 + 1       =    290
    # = 94,498 per scale, x 5 scales:
    assert n_params == 472_490


def test_stereo_folds_channels_into_batch_with_shared_weights():
    torch.manual_seed(0)
    disc = small()
    x = torch.randn(3, 2, 2000)
    out = disc(x)
    assert all(logits.shape[0] == 6 for logits in out.logits)
    assert all(f.shape[0] == 6 for fmaps in out.features for f in fmaps)
    right = disc(x[:, 1:2])  # folded index is b * C + c
    for stereo_logits, mono_logits in zip(out.logits, right.logits):
        torch.testing.assert_close(stereo_logits[1::2], mono_logits)


def test_gradient_reaches_input():
    x = torch.randn(2, 1, 2000, requires_grad=True)
    out = small()(x)
    sum(logits.mean() for logits in out.logits).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_stft_in_float32_under_bf16_autocast():
    disc = small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = disc(torch.randn(1, 1, 2000))
    assert all(torch.isfinite(logits.float()).all() for logits in out.logits)


def test_options_and_errors():
    disc = small(norm="none", dilations=[1, 2], name="d")
    out = disc(torch.randn(1, 1, 1000))
    assert out.names == ["d_256", "d_128"] and all(len(f) == 4 for f in out.features)
    assert small(norm="spectral_norm")(torch.randn(1, 1, 1000)).logits[0].shape[0] == 1
    assert not any("window" in key for key in small().state_dict())
    # growth: 4 -> 8 -> 16 channels, capped at max_filters=12
    grown = small(filters_scale=2, max_filters=12, dilations=[1, 2])
    widths = [f.shape[1] for f in grown(torch.randn(1, 1, 500)).features[0]]
    assert widths == [4, 8, 12, 12]
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        small()(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="largest STFT"):
        small()(torch.randn(1, 1, 200))
    with pytest.raises(ValueError, match="n_ffts must be distinct"):
        MultiScaleSTFTDiscriminator(n_ffts=[256, 256])
    with pytest.raises(ValueError, match="norm must be"):
        small(norm="batch_norm")
