"""MultiScaleMelLoss's per-scale options (scale_weights, n_ffts) and MUFFIN's configured mel loss."""

from pathlib import Path

import torch
import torch.nn.functional as F

from codecplatform.config import compose_config, instantiate
from codecplatform.dsp.spectral import mel_filterbank
from codecplatform.losses.reconstruction import MultiScaleMelLoss

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SR = 24000


def pair(seed=0, length=6000):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, length, generator=g) * 0.1
    return x, x + 0.05 * torch.randn(2, 1, length, generator=g)


def test_scale_weights_weight_each_scale_and_default_is_unchanged():
    x, x_hat = pair()
    common = dict(sample_rate=SR, n_mels=[32, 16], log_base=None, l2_weight=0.0)
    single = [
        MultiScaleMelLoss(window_lengths=[w], n_mels=[m], sample_rate=SR, log_base=None, l2_weight=0.0)
        for w, m in ((512, 32), (128, 16))
    ]
    weighted = MultiScaleMelLoss(window_lengths=[512, 128], scale_reduction="sum", scale_weights=[45.0, 5.0], **common)
    expected = 45 * single[0](x, x_hat) + 5 * single[1](x, x_hat)
    torch.testing.assert_close(weighted(x, x_hat), expected)
    plain = MultiScaleMelLoss(window_lengths=[512, 128], **common)
    ones = MultiScaleMelLoss(window_lengths=[512, 128], scale_weights=[1.0, 1.0], **common)
    torch.testing.assert_close(plain(x, x_hat), ones(x, x_hat), rtol=0, atol=0)
    assert plain.scale_weights == [1.0, 1.0] and plain.n_ffts == [512, 128]


def test_n_fft_larger_than_window():
    x, x_hat = pair(1)
    loss = MultiScaleMelLoss(
        SR, window_lengths=[1024], n_ffts=[1025], n_mels=64, f_max=12000.0, l2_weight=0.0, log_base=None
    )
    fb = mel_filterbank(SR, 1025, 64, 0.0, 12000.0)
    window = torch.hann_window(1024)

    def mel(a):
        spec = torch.stft(a[:, 0], 1025, 256, 1024, window, center=True, pad_mode="reflect", return_complex=True)
        return torch.log(torch.clamp(fb @ spec.abs(), min=1e-5))

    torch.testing.assert_close(loss(x, x_hat), (mel(x) - mel(x_hat)).abs().mean())


def official_mel(y, n_fft, num_mels, hop, win, fmax=12000.0):
    """Official muffin/meldataset.mel_spectrogram (librosa's slaney filters via mel_filterbank)."""
    pad = int((n_fft - hop) / 2)
    y = F.pad(y, (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(
        y, n_fft, hop_length=hop, win_length=win, window=torch.hann_window(win), center=False, return_complex=True
    )
    spec = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    return torch.log(torch.clamp(mel_filterbank(SR, n_fft, num_mels, 0.0, fmax) @ spec, min=1e-5))


def test_configured_loss_is_the_official_weighted_sum():
    model = compose_config(EXPERIMENTS / "muffin" / "75hz.yaml")["model"]["init_args"]
    loss = instantiate(model["reconstruction_losses"]["mel"], MultiScaleMelLoss)
    assert model["loss_weights"] == {"mel": 1.0, "adv": 1.0, "feat": 2.0, "commit": 10.0}
    x, x_hat = pair(2, length=24000)
    # official train.py: 45*mel1 (n_fft 1025, win 1024) + 25*mel2 + 10*mel3 + 5*mel4 (32 mels) + mel0
    terms = [
        (1025, 64, 256, 1024, 45),
        (512, 64, 128, 512, 25),
        (256, 64, 64, 256, 10),
        (128, 32, 32, 128, 5),
        (2048, 64, 512, 2048, 1),
    ]
    official = sum(
        w * (official_mel(x, n, m, h, win) - official_mel(x_hat, n, m, h, win)).abs().mean()
        for n, m, h, win, w in terms
    )
    # the only difference is the framing (centre padding here, (n_fft - hop) / 2 there): < 1 %
    torch.testing.assert_close(loss(x, x_hat), official, rtol=1e-2, atol=0)
