import math

import pytest
import torch
import torch.nn.functional as F

from codecplatform.discriminators.base import MultiDiscriminator
from codecplatform.discriminators.mpd import MultiPeriodDiscriminator
from codecplatform.discriminators.multiband_stft import (
    BandSTFTDiscriminator,
    MultiBandSTFTDiscriminator,
    band_bins,
    stride_matched_stft,
)

T = 22050  # 0.5 s at 44.1 kHz


def small(**kwargs) -> MultiBandSTFTDiscriminator:
    return MultiBandSTFTDiscriminator(window_lengths=kwargs.pop("window_lengths", (256, 128)), channels=4, **kwargs)


def halve(width: int, times: int) -> int:
    for _ in range(times):
        width = math.ceil(width / 2)  # kernel 9, padding 4, stride 2
    return width


def check_structure(disc: MultiBandSTFTDiscriminator, out, batch: int, length: int, channels: int) -> None:
    assert len(out.logits) == len(out.features) == len(disc.window_lengths)
    for sub, logits, fmaps in zip(disc.discriminators, out.logits, out.features):
        frames = math.ceil(length / sub.hop_length)
        assert len(fmaps) == 5 * len(sub.bands)
        expected = []
        for lo, hi in sub.bands:
            width = hi - lo
            expected += [halve(width, n) for n in (0, 1, 2, 3, 3)]
        assert [tuple(f.shape) for f in fmaps] == [(batch, channels, frames, w) for w in expected]
        assert logits.shape == (batch, 1, frames, sum(halve(hi - lo, 3) for lo, hi in sub.bands))


def test_dac_config_structure_and_parameter_count():
    torch.manual_seed(0)
    disc = MultiBandSTFTDiscriminator()
    with torch.no_grad():
        out = disc(torch.randn(1, 1, T))
    assert out.names == ["mrd_2048", "mrd_1024", "mrd_512"]
    assert [sub.hop_length for sub in disc.discriminators] == [512, 256, 128]
    # DAC: bins = window // 2 + 1, band edges int(fraction * bins)
    assert disc.discriminators[0].bands == [(0, 102), (102, 256), (256, 512), (512, 768), (768, 1025)]
    assert disc.discriminators[2].bands == [(0, 25), (25, 64), (64, 128), (128, 192), (192, 257)]
    check_structure(disc, out, batch=1, length=T, channels=32)
    assert [tuple(logits.shape) for logits in out.logits] == [(1, 1, 44, 130), (1, 1, 87, 66), (1, 1, 173, 34)]
    n_params = sum(p.numel() for p in disc.parameters())
    print(f"DAC MRD (3 windows) parameters: {n_params}")
    # Per band with weight norm (weight v + gain g (one per output channel) + bias):
    #   conv 2->32 (3, 9):            2*32*27 + 32 + 32 =  1,792
    #   3 x conv 32->32 (3, 9):   3 * (32*32*27 + 32 + 32) = 83,136
    #   conv 32->32 (3, 3):           32*32*9 + 32 + 32 =  9,280
    # = 94,208 per band, x 5 bands = 471,040, + conv_post 32->1 (3, 3): 32*9 + 1 + 1 = 290
    # = 471,330 per window, x 3 windows:
    assert n_params == 1_413_990


def test_dac_discriminator_total_parameter_count():
    # DAC's default Discriminator(rates=[], periods=[2, 3, 5, 7, 11], fft_sizes=[2048, 1024, 512]):
    # no MSD, so MPD + MRD only.
    both = MultiDiscriminator([MultiPeriodDiscriminator(), MultiBandSTFTDiscriminator()])
    n_params = sum(p.numel() for p in both.parameters())
    print(f"DAC discriminator (MPD + MRD) parameters: {n_params}")
    assert n_params == 41_105_770 + 1_413_990 == 42_519_760


@pytest.mark.parametrize("length", [4000, 4096, 1001, 512])
@pytest.mark.parametrize("window_length", [256, 512])
def test_stft_matches_audiotools_match_stride(length, window_length):
    """audiotools AudioSignal.stft(match_stride=True), window 'hann' (scipy, periodic), written out."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, length)
    hop = window_length // 4
    right_pad = math.ceil(length / hop) * hop - length
    pad = (window_length - hop) // 2
    padded = F.pad(x, (pad, pad + right_pad), mode="reflect")
    window = torch.hann_window(window_length, periodic=True)  # == scipy.signal.get_window("hann", n)
    ref = torch.stft(padded.reshape(2, -1), window_length, hop, window=window, center=True, return_complex=True)
    ref = ref.reshape(2, 1, *ref.shape[-2:])[..., 2:-2]
    spec = stride_matched_stft(x, window, hop)
    assert spec.shape == (2, 1, window_length // 2 + 1, math.ceil(length / hop))
    torch.testing.assert_close(spec, ref)


def test_window_is_audiotools_hann():
    from scipy import signal  # a dependency of the platform (loudness, augmentation)

    sub = BandSTFTDiscriminator(512, channels=4)
    scipy_window = torch.from_numpy(signal.get_window("hann", 512)).float()  # audiotools.get_window
    torch.testing.assert_close(sub.window, scipy_window)


def test_spectrogram_layout_and_float32_under_autocast():
    sub = BandSTFTDiscriminator(256, channels=4)
    x = torch.randn(2, 1, 1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = sub.spectrogram(x)
    assert spec.dtype == torch.float32 and spec.shape == (2, 2, math.ceil(1000 / 64), 129)
    complex_spec = stride_matched_stft(x, torch.hann_window(256), 64)[:, 0].transpose(-1, -2)  # (B, N, F)
    torch.testing.assert_close(spec[:, 0], complex_spec.real)
    torch.testing.assert_close(spec[:, 1], complex_spec.imag)


def test_tiny_structure_and_odd_lengths():
    disc = small()
    for length in (256, 1001, 2000):
        out = disc(torch.randn(2, 1, length))
        assert out.names == ["mrd_256", "mrd_128"]
        check_structure(disc, out, batch=2, length=length, channels=4)


def test_stereo_folds_channels_into_batch_with_shared_weights():
    torch.manual_seed(0)
    disc = small()
    x = torch.randn(3, 2, 1001)
    out = disc(x)
    assert all(logits.shape[0] == 6 for logits in out.logits)
    assert all(f.shape[0] == 6 for fmaps in out.features for f in fmaps)
    left, right = disc(x[:, :1]), disc(x[:, 1:])  # folded index is b * C + c
    for stereo, mono_l, mono_r in zip(out.logits, left.logits, right.logits):
        torch.testing.assert_close(stereo[0::2], mono_l)
        torch.testing.assert_close(stereo[1::2], mono_r)
    for stereo, mono_r in zip(out.features, right.features):
        for f_stereo, f_mono in zip(stereo, mono_r):
            torch.testing.assert_close(f_stereo[1::2], f_mono)


def test_gradient_reaches_input():
    x = torch.randn(2, 1, 1001, requires_grad=True)
    out = small()(x)
    sum(logits.mean() for logits in out.logits).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_runs_under_bf16_autocast():
    # Windows 512 and 256 keep every band >= 9 bins wide. torch 2.11's CPU bf16 conv2d returns
    # garbage (sometimes NaN) for a stride-2 conv whose output is 1 wide, which a 128 window's
    # lowest band (6 bins -> 3 -> 2 -> 1) would hit; DAC's windows keep >= 25 bins per band.
    torch.manual_seed(0)
    disc = small(window_lengths=(512, 256))
    x = torch.randn(1, 2, 1001)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = disc(x)
    reference = disc(x)
    for low, full in zip(out.logits, reference.logits):
        assert low.shape == full.shape and torch.isfinite(low.float()).all()
        assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


def test_input_normalization_removes_gain_and_dc():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 1001)
    disc = small()
    for a, b in zip(disc(x).logits, disc(3.0 * x - 0.2).logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    raw = small(normalize_input=False)
    raw.load_state_dict(disc.state_dict())
    assert not torch.allclose(raw(x).logits[0], raw(3.0 * x - 0.2).logits[0])


def test_options_and_errors():
    disc = small(bands=[(0.0, 0.5), (0.5, 1.0)], norm="none", name="m")
    out = disc(torch.randn(1, 1, 512))
    assert out.names == ["m_256", "m_128"] and all(len(f) == 10 for f in out.features)
    assert disc.discriminators[0].bands == [(0, 64), (64, 129)]
    assert small(norm="spectral_norm")(torch.randn(1, 1, 512)).logits[0].shape[0] == 1
    assert not any("window" in key for key in small().state_dict())
    assert band_bins(1025, [(0.0, 1.0)]) == [(0, 1025)]
    with pytest.raises(ValueError, match="no frequency bin"):
        band_bins(9, [(0.0, 0.1)])
    with pytest.raises(ValueError, match="0 <= lo < hi <= 1"):
        band_bins(100, [(0.5, 0.25)])
    with pytest.raises(ValueError, match=r"\(batch, channels, samples\)"):
        small()(torch.randn(2, 1000))
    with pytest.raises(ValueError, match="largest STFT window"):
        small()(torch.randn(1, 1, 200))
    with pytest.raises(ValueError, match="window_lengths must be distinct"):
        MultiBandSTFTDiscriminator(window_lengths=[256, 256])
    with pytest.raises(ValueError, match="hop"):
        MultiBandSTFTDiscriminator(window_lengths=[256], hop_factor=0.0)
    with pytest.raises(ValueError, match="mono"):
        BandSTFTDiscriminator(256, channels=4)(torch.randn(1, 2, 1000))
