"""ViSQOL (audio and speech mode), PESQ and STOI: scores move the right way on clean, noisy and low-passed
audio; channels, batching, silent references and too-short audio are handled as documented."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torchaudio.functional as AF

from codecplatform.metrics.perceptual import PESQ, STOI, ViSQOL

# a real recording from ../shared/data (beside the repository; absent in a user's clone)
SPEECH_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech" / "speech_orig_16k.wav"


def speech_like(sample_rate: int, seconds: float = 1.0) -> torch.Tensor:
    """(1, 1, T) voiced 'syllables': a harmonic source with a gliding pitch under a 4 Hz envelope."""
    t = torch.arange(int(sample_rate * seconds), dtype=torch.float64) / sample_rate
    f0 = 120 + 20 * torch.sin(2 * math.pi * 3 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
    source = sum(torch.sin(k * phase) / k for k in range(1, 30))
    envelope = torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    return (0.3 * source * envelope).float()[None, None]


def degraded(x: torch.Tensor, sample_rate: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    lowpassed = x
    for _ in range(4):  # 8th-order-ish low-pass at 1.5 kHz
        lowpassed = AF.lowpass_biquad(lowpassed, sample_rate, 1500.0)
    return {"clean": x, "noisy": x + 0.02 * noise, "lowpassed": lowpassed}


def scores(metric, x: torch.Tensor, sample_rate: int) -> dict[str, float]:
    out = {}
    for name, x_hat in degraded(x, sample_rate).items():
        metric.reset()
        metric.update(x_hat, x)
        out[name] = float(metric.compute())
    return out


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda sr: ViSQOL(sr, mode="audio"), id="visqol-audio"),
        pytest.param(lambda sr: ViSQOL(sr, mode="speech"), id="visqol-speech"),
        pytest.param(PESQ, id="pesq"),
        pytest.param(STOI, id="stoi"),
    ],
)
def test_clean_scores_best_then_lowpassed_and_noisy_lower(make):
    sample_rate = 16000
    result = scores(make(sample_rate), speech_like(sample_rate), sample_rate)
    assert result["clean"] > result["lowpassed"], result
    assert result["clean"] > result["noisy"], result
    assert all(math.isfinite(v) for v in result.values()), result


def test_visqol_audio_mode_on_music_rate_input_and_speech_mode_differ():
    """44.1 kHz input is resampled to 48 kHz (audio) or 16 kHz (speech); the modes are distinct models."""
    x = speech_like(44100, 1.0)  # audio mode needs 0.96 s
    audio, speech = ViSQOL(44100, "audio"), ViSQOL(44100, "speech")
    noisy = degraded(x, 44100)["noisy"]
    audio.update(noisy, x)
    speech.update(noisy, x)
    a, s = float(audio.compute()), float(speech.compute())
    assert 1.0 <= a <= 5.0 and 1.0 <= s <= 5.0
    assert a != pytest.approx(s, abs=1e-3)
    assert audio.score_rate == 48000 and speech.score_rate == 16000


@pytest.mark.skipif(not SPEECH_FILE.is_file(), reason=f"{SPEECH_FILE} not available")
def test_real_speech_orders_pesq_and_visqol_speech():
    import soundfile as sf

    audio, rate = sf.read(SPEECH_FILE, frames=2 * 16000, dtype="float32")
    x = torch.from_numpy(audio)[None, None]
    for metric in (PESQ(rate), ViSQOL(rate, "speech")):
        result = scores(metric, x, rate)
        assert result["clean"] > result["lowpassed"] and result["clean"] > result["noisy"], result


def test_per_example_mean_does_not_depend_on_batching_and_channels_are_averaged():
    sample_rate = 16000
    x = torch.cat([speech_like(sample_rate), 0.5 * speech_like(sample_rate)])  # (2, 1, T)
    x_hat = torch.cat([degraded(x[:1], sample_rate)["noisy"], degraded(x[1:], sample_rate)["lowpassed"]])
    whole, parts = STOI(sample_rate), STOI(sample_rate)
    whole.update(x_hat, x)
    parts.update(x_hat[:1], x[:1])
    parts.update(x_hat[1:], x[1:])
    assert float(whole.compute()) == pytest.approx(float(parts.compute()), abs=1e-9)
    stereo, mono = STOI(sample_rate), STOI(sample_rate)
    stereo.update(x_hat.repeat(1, 2, 1), x.repeat(1, 2, 1))  # identical channels: same as mono
    mono.update(x_hat, x)
    assert float(stereo.compute()) == pytest.approx(float(mono.compute()), abs=1e-6)


def test_states_merge_like_ddp():
    sample_rate = 16000
    x = speech_like(sample_rate)
    noisy = degraded(x, sample_rate)["noisy"]
    rank0, rank1, whole = PESQ(sample_rate), PESQ(sample_rate), PESQ(sample_rate)
    rank0.update(x, x)
    rank1.update(noisy, x)
    whole.update(torch.cat([x, noisy]), torch.cat([x, x]))
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(float(whole.compute()), abs=1e-6)
    assert int(rank0.count) == 2


def test_silent_reference_is_skipped_and_counted():
    sample_rate = 16000
    x = torch.cat([speech_like(sample_rate), torch.zeros(1, 1, sample_rate)])
    metric = PESQ(sample_rate)
    metric.update(x, x)
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        value = float(metric.compute())
    assert value == pytest.approx(4.64, abs=0.05)  # the clean example alone
    assert int(metric.skipped) == 1 and int(metric.count) == 1
    only_silence = STOI(sample_rate)
    only_silence.update(x[1:], x[1:])
    with pytest.warns(UserWarning, match="skipped 1 of 1"):
        assert math.isnan(float(only_silence.compute()))


def test_too_short_audio_is_skipped_with_the_reason_and_bad_arguments_raise():
    for metric, seconds in ((PESQ(16000), 0.2), (ViSQOL(48000), 0.5), (ViSQOL(16000, "speech"), 0.05)):
        x = speech_like(metric.sample_rate, seconds)
        metric.update(x, x)
        assert int(metric.skipped) == 1 and int(metric.count) == 0
        with pytest.warns(UserWarning, match="too short"):
            assert math.isnan(float(metric.compute()))
    with pytest.raises(ValueError, match="mode"):
        ViSQOL(16000, mode="music")
    with pytest.raises(ValueError, match="same shape"):
        STOI(16000).update(speech_like(16000)[..., :-1], speech_like(16000))


def test_visqol_survives_deepcopy():
    """The module deep-copies metrics per stage and bitrate; the copy scores like the original."""
    metric = ViSQOL(16000, "speech")
    clone = copy.deepcopy(metric)
    x = speech_like(16000, 1.0)
    metric.update(x, x)
    clone.update(x, x)
    assert float(clone.compute()) == pytest.approx(float(metric.compute()))


def test_pesq_and_stoi_equal_the_torchmetrics_functionals():
    """The wrappers score each (mono, 16 kHz) example with torchmetrics' functionals: same numbers, plus the
    skip counting that the functionals do not have."""
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality, short_time_objective_intelligibility

    sample_rate = 16000
    x = torch.cat([speech_like(sample_rate), 0.5 * speech_like(sample_rate)])  # (2, 1, T)
    x_hat = torch.cat([degraded(x[:1], sample_rate)["noisy"], degraded(x[1:], sample_rate)["lowpassed"]])
    reference, estimate = x[:, 0].double(), x_hat[:, 0].double()
    for metric, functional in (
        (PESQ(sample_rate), lambda p, t: perceptual_evaluation_speech_quality(p, t, sample_rate, "wb")),
        (STOI(sample_rate), lambda p, t: short_time_objective_intelligibility(p, t, sample_rate)),
        (STOI(sample_rate, extended=True), lambda p, t: short_time_objective_intelligibility(p, t, sample_rate, True)),
    ):
        metric.update(x_hat, x)
        expected = torch.stack([functional(estimate[i], reference[i]) for i in range(2)]).double().mean()
        assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
