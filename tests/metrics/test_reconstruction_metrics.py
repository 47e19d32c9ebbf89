"""MelDistance, STFTDistance and SISDR: DAC's definitions (checked against the installed official packages),
zero on identical audio, independent of batching."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

from codecplatform.metrics.reconstruction import SISDR, MelDistance, STFTDistance

SR = 16000


def pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(3, 1, 4000, generator=gen)
    return x + 0.05 * torch.randn(x.shape, generator=gen), x


def per_example_official(loss, x_hat: torch.Tensor, x: torch.Tensor, sample_rate: int = SR) -> torch.Tensor:
    from audiotools import AudioSignal  # the parity extra (make install): a broken install fails

    signals = [
        (AudioSignal(x_hat[i : i + 1], sample_rate), AudioSignal(x[i : i + 1], sample_rate)) for i in range(len(x))
    ]
    return torch.stack([loss(estimate, reference) for estimate, reference in signals])


def test_matches_the_official_dac_stft_loss():
    from dac.nn.loss import MultiScaleSTFTLoss

    x_hat, x = pair()
    metric = STFTDistance()
    metric.update(x_hat, x)
    official = per_example_official(MultiScaleSTFTLoss(), x_hat, x).mean()
    torch.testing.assert_close(metric.compute(), official, rtol=1e-5, atol=0)


def slaney_mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)`` (slaney scale and
    area normalization, float32), written down from librosa for machines without librosa."""
    fmax = sr / 2 if fmax is None else fmax
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        f = np.asanyarray(f, dtype=np.float64)
        return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)

    def mel_to_hz(m):
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def test_hand_written_slaney_filters_equal_torchaudio_slaney():
    import torchaudio.functional as AF

    for n_fft, n_mels in ((32, 5), (2048, 320)):
        expected = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, 22050.0, n_mels, 44100, norm="slaney", mel_scale="slaney")
        mine = torch.from_numpy(slaney_mel_filters(44100, n_fft, n_mels))
        torch.testing.assert_close(mine, expected.T, rtol=1e-4, atol=1e-6)  # torchaudio: float32 edges


@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_mel_distance_matches_the_official_dac_mel_loss(sample_rate, monkeypatch):
    """DAC's mel loss (conf/base.yml) sums its 7 scales; so does MelDistance."""
    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss

    if importlib.util.find_spec("librosa") is None:  # audiotools builds its mel filters with librosa
        monkeypatch.setattr(AudioSignal, "get_mel_filters", staticmethod(slaney_mel_filters))

    official_loss = MelSpectrogramLoss(
        n_mels=[5, 10, 20, 40, 80, 160, 320],
        window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
        mag_weight=0.0,
        log_weight=1.0,
        pow=1.0,
        clamp_eps=1e-5,
        mel_fmin=[0.0] * 7,
        mel_fmax=[None] * 7,
    )
    x_hat, x = pair()
    metric = MelDistance(sample_rate)
    metric.update(x_hat, x)
    official = per_example_official(official_loss, x_hat, x, sample_rate).mean()
    torch.testing.assert_close(metric.compute(), official, rtol=1e-5, atol=0)


def test_si_sdr_is_torchmetrics_zero_mean_and_matches_dac_evaluation():
    from dac.nn.loss import SISDRLoss

    x_hat, x = pair()
    x_hat = x_hat + 0.01  # an offset: zero_mean matters
    metric = SISDR()
    metric.update(x_hat, x)
    expected = scale_invariant_signal_distortion_ratio(x_hat.double(), x.double(), zero_mean=True).mean()
    torch.testing.assert_close(metric.compute(), expected.float(), rtol=1e-6, atol=0)
    # DAC's evaluation reports -SISDRLoss (audiotools: zero mean, scaling, eps 1e-8 in the ratio)
    official = -per_example_official(SISDRLoss(), x_hat, x).mean()
    torch.testing.assert_close(metric.compute(), official, rtol=1e-5, atol=0)
    plain = SISDR(zero_mean=False)
    plain.update(x_hat, x)
    expected = scale_invariant_signal_distortion_ratio(x_hat.double(), x.double()).mean()
    torch.testing.assert_close(plain.compute(), expected.float(), rtol=1e-6, atol=0)
    assert float(plain.compute()) < float(metric.compute())


def test_si_sdr_of_quiet_audio_is_not_biased_by_a_fixed_epsilon():
    """Scale invariance: a quiet example (peak ~1e-5) scores like the same example at full level."""
    x_hat, x = pair()
    loud, quiet = SISDR(), SISDR()
    loud.update(x_hat, x)
    quiet.update(1e-4 * x_hat, 1e-4 * x)
    torch.testing.assert_close(quiet.compute(), loud.compute(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("make", [STFTDistance, lambda: MelDistance(SR), SISDR], ids=["stft", "mel", "si_sdr"])
def test_identical_audio_and_batching_does_not_matter(make):
    x_hat, x = pair()
    same = make()
    same.update(x, x)
    if isinstance(same, SISDR):
        assert float(same.compute()) > 100
    else:
        assert float(same.compute()) == pytest.approx(0.0, abs=1e-6)
    whole, parts = make(), make()
    whole.update(x_hat, x)
    parts.update(x_hat[:1], x[:1])
    parts.update(x_hat[1:], x[1:])
    assert float(whole.compute()) == pytest.approx(float(parts.compute()), rel=1e-6)
    assert float(whole.compute()) > 0
