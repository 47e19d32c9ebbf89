import math

import pytest
import torch
import torchaudio.functional as AF

from codecplatform.dsp import mel_filterbank, resample, safe_log, stft


def test_stft_shape_center_and_not():
    x = torch.randn(2, 3, 1000)
    assert stft(x, n_fft=256, hop_length=64).shape == (2, 3, 129, 1 + 1000 // 64)
    assert stft(x, n_fft=256, hop_length=64, center=False).shape == (2, 3, 129, 1 + (1000 - 256) // 64)
    assert stft(x, n_fft=256, hop_length=64).is_complex()


def test_stft_inverts_with_torch_istft():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 2000)
    spec = stft(x, n_fft=256, hop_length=64)  # (B, C, F, N)
    window = torch.hann_window(256)
    y = torch.istft(spec.reshape(4, *spec.shape[-2:]), n_fft=256, hop_length=64, window=window, length=2000)
    torch.testing.assert_close(y.reshape(2, 2, 2000), x, atol=1e-5, rtol=1e-5)


def test_stft_normalized_divides_by_window_norm():
    x = torch.randn(1, 1, 800)
    plain = stft(x, n_fft=128, hop_length=32)
    normed = stft(x, n_fft=128, hop_length=32, normalized=True)
    torch.testing.assert_close(normed, plain / torch.hann_window(128).pow(2).sum().sqrt())


def test_stft_errors():
    with pytest.raises(ValueError, match="window must have shape"):
        stft(torch.randn(1, 1, 500), n_fft=128, hop_length=32, window=torch.ones(64))
    with pytest.raises(ValueError, match="n_fft=128"):
        stft(torch.randn(1, 1, 100), n_fft=128, hop_length=32, center=False)
    with pytest.raises(ValueError, match="batch, channels, samples"):
        stft(torch.randn(1, 500), n_fft=128, hop_length=32)


def test_mel_filterbank_shape_rows_and_torchaudio_match():
    fb = mel_filterbank(16000, n_fft=1024, n_mels=80)
    assert fb.shape == (80, 513)
    assert (fb.sum(dim=1) > 0).all()
    ref = AF.melscale_fbanks(513, 0.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney").T
    torch.testing.assert_close(fb, ref)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(16000, n_fft=1024, n_mels=80, f_max=9000.0)


def test_safe_log_clamps_and_bases():
    x = torch.tensor([0.0, 1e-8, 1.0, 100.0])
    out = safe_log(x, eps=1e-5)
    torch.testing.assert_close(out, torch.tensor([math.log(1e-5), math.log(1e-5), 0.0, math.log(100.0)]))
    torch.testing.assert_close(safe_log(x, eps=1e-5, base=10), torch.tensor([-5.0, -5.0, 0.0, 2.0]))
    assert torch.isfinite(out).all()


def test_resample_length_and_identity():
    x = torch.randn(2, 1, 1600)
    assert resample(x, 16000, 24000).shape == (2, 1, 2400)
    assert resample(x, 16000, 16000) is x
