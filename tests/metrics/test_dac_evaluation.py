"""Scored as the DAC paper scores: mel and STFT distance after DAC's resampling to 44.1 kHz equal the
official packages (dac's losses on audiotools' resampled signals); DNSMOS (speechmos' bundled ONNX
models) and the 44.1 kHz distances rank clean above degraded audio on real recordings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from codecplatform.metrics.dnsmos import DNSMOS
from codecplatform.metrics.reconstruction import MelDistance, Resampled, STFTDistance

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # absent in a user's clone
SPEECH_FILE = DATA / "speech" / "speech_orig_16k.wav"
MUSIC_FILE = DATA / "music" / "hr-savino-ocean.ogg"


def pair(sample_rate: int = 24000) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(sample_rate) / sample_rate
    x = sum(0.1 / k * torch.sin(2 * math.pi * 110 * k * t + k) for k in range(1, 40)) + 0.01 * torch.randn(
        t.shape, generator=gen
    )
    x = x[None, None]
    x_hat = torch.nn.functional.avg_pool1d(x + 0.03 * torch.randn(x.shape, generator=gen), 3, 1, 1)
    return x_hat, x


def test_distances_at_44k_equal_dac_evaluation():
    """DAC's scripts/evaluate.py: AudioSignal.resample(44100) on both, then the losses (mel with the
    conf/base.yml settings the paper's mel distance uses, STFT with its defaults)."""
    from audiotools import AudioSignal
    from dac.nn.loss import MelSpectrogramLoss, MultiScaleSTFTLoss

    x_hat, x = pair()
    mel = MelSpectrogramLoss(
        n_mels=[5, 10, 20, 40, 80, 160, 320],
        window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
        mag_weight=0.0,
        log_weight=1.0,
        pow=1.0,
        clamp_eps=1e-5,
        mel_fmin=[0.0] * 7,
        mel_fmax=[None] * 7,
    )
    for ours, official in (
        (Resampled(MelDistance(44100), 24000), mel),
        (Resampled(STFTDistance(), 24000), MultiScaleSTFTLoss()),
    ):
        ours.update(x_hat, x)
        expected = official(
            AudioSignal(x_hat.clone(), 24000).resample(44100), AudioSignal(x.clone(), 24000).resample(44100)
        )
        torch.testing.assert_close(ours.compute(), expected, rtol=1e-4, atol=0)
        native = type(ours.metric)(24000) if isinstance(ours.metric, MelDistance) else STFTDistance()
        native.update(x_hat, x)
        assert abs(float(native.compute()) - float(expected)) > 0.05  # the rate matters: not the same number
    with pytest.raises(ValueError, match="44100"):
        Resampled(MelDistance(24000), 24000, score_rate=44100)


def degraded(x: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lowpassed = x
    for _ in range(4):
        lowpassed = AF.lowpass_biquad(lowpassed, sample_rate, 1500.0)
    return {"noisy": x + 0.02 * torch.randn(x.shape, generator=gen), "lowpassed": lowpassed}


@pytest.mark.skipif(not SPEECH_FILE.is_file(), reason=f"{SPEECH_FILE} not available (real recordings are optional)")
def test_dnsmos_ranks_clean_speech_above_noisy_and_lowpassed():
    audio, rate = sf.read(SPEECH_FILE, frames=10 * 16000, dtype="float32")
    x = torch.from_numpy(audio)[None, None]
    for score in ("sig", "bak", "ovrl", "p808"):
        metric = DNSMOS(rate, score)
        metric.update(x, x)
        clean = float(metric.compute())
        assert 1.0 < clean < 5.0, (score, clean)
        for name, x_hat in degraded(x, rate).items():
            metric = DNSMOS(rate, score)
            metric.update(x_hat, x)
            assert float(metric.compute()) < clean, (score, name)
    with pytest.raises(ValueError, match="sig"):
        DNSMOS(16000, "mos")


@pytest.mark.skipif(not MUSIC_FILE.is_file(), reason=f"{MUSIC_FILE} not available (real recordings are optional)")
def test_distances_at_44k_rank_opus_bitrates_on_real_music():
    from codecplatform.metrics.classical import classical_roundtrip

    audio, rate = sf.read(MUSIC_FILE, start=30 * 44100, frames=3 * 44100, dtype="float32")
    x = AF.resample(torch.from_numpy(audio.T).mean(0, keepdim=True), rate, 24000)  # (1, T) 24 kHz mono
    result = {}
    for kbps in (6, 24):
        x_hat = classical_roundtrip(x, 24000, "opus", kbps).audio
        for name, metric in (("mel", Resampled(MelDistance(44100), 24000)), ("stft", Resampled(STFTDistance(), 24000))):
            metric.update(x_hat[None], x[None])
            result[name, kbps] = float(metric.compute())
    assert result["mel", 24] < result["mel", 6] and result["stft", 24] < result["stft", 6], result
