"""Opus and MP3 through PyAV as leaderboard rows: more bits score better, the true bitrate is near the
nominal one, the decoded audio is aligned with the input, and the logged run sits beside a trained
codec's in ``codecplatform compare`` under the same metric names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codecplatform import compare
from codecplatform.metrics.classical import (
    best_lag,
    classical_roundtrip,
    evaluate_classical,
    log_classical_run,
    shift,
)
from codecplatform.metrics.reconstruction import SISDR, MelDistance, STFTDistance

SR = 24000


def music_like(seconds: float = 2.0, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """(C, T) a harmonic chord under a slow tremolo plus a little noise: broadband, not periodic."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    chord = sum(0.1 / k * torch.sin(2 * math.pi * 110 * k * t + k) for k in range(1, 30))
    chord = chord + sum(0.05 / k * torch.sin(2 * math.pi * 138.6 * k * t) for k in range(1, 20))
    x = chord * (0.6 + 0.4 * torch.sin(2 * math.pi * 1.5 * t))
    return torch.stack([x + 0.01 * torch.randn(t.shape, generator=gen) for _ in range(channels)])


def scores(x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    out = {}
    for name, metric in (("mel", MelDistance(SR)), ("si_sdr", SISDR())):
        metric.update(x_hat[None], x[None])
        out[name] = float(metric.compute())
    return out


@pytest.mark.parametrize(("codec", "low", "high"), [("opus", 6, 24), ("mp3", 16, 48)])
def test_more_bits_score_better_and_the_true_bitrate_is_the_nominal_one(codec, low, high):
    x = music_like()
    coded = {kbps: classical_roundtrip(x, SR, codec, kbps) for kbps in (low, high)}
    result = {kbps: scores(c.audio, x) for kbps, c in coded.items()}
    assert result[high]["mel"] < result[low]["mel"] - 0.3, result
    assert result[high]["si_sdr"] > result[low]["si_sdr"] + 1.0, result
    for kbps, c in coded.items():
        assert c.audio.shape == x.shape and c.audio.dtype == torch.float32
        # constant bitrate: the packets' bytes over the duration, within 5% (one padded frame, MP3 frame sizes)
        assert c.true_kbps == pytest.approx(kbps, rel=0.05), (kbps, c.true_kbps)
        assert c.true_kbps == pytest.approx(c.payload_bytes * 8 / 2.0 / 1000)
    assert coded[low].codec_rate == (48000 if codec == "opus" else SR)


@pytest.mark.parametrize(("codec", "kbps"), [("opus", 12), ("mp3", 32)])
def test_decoded_audio_correlates_best_at_lag_zero(codec, kbps):
    x = music_like(1.0)
    raw = classical_roundtrip(x, SR, codec, kbps, align=False)
    # the decoder drops the encoder's look-ahead (Opus pre-skip, LAME delay): already within a sample
    assert abs(best_lag(raw.audio[0].numpy(), x[0].numpy(), 2400)) <= 1
    aligned = classical_roundtrip(x, SR, codec, kbps)
    assert best_lag(aligned.audio[0].numpy(), x[0].numpy(), 2400) == 0
    late = shift(aligned.audio.numpy(), -37)  # 37 samples late
    assert best_lag(late[0], x[0].numpy(), 2400) == 37
    assert np.allclose(shift(late, 37)[:, :-37], aligned.audio.numpy()[:, :-37])


def test_stereo_and_bad_input():
    x = music_like(0.5, channels=2)
    coded = classical_roundtrip(x, SR, "opus", 32)
    assert coded.audio.shape == (2, x.shape[1])
    with pytest.raises(ValueError, match="1 or 2 channels"):
        classical_roundtrip(x[None], SR, "opus", 32)
    with pytest.raises(ValueError, match="opus"):
        classical_roundtrip(x, SR, "vorbis", 32)


def test_logged_rows_sit_beside_a_trained_codec_in_compare(mlflow_db):
    from mlflow.tracking import MlflowClient

    batches = [torch.stack([music_like(1.0, seed=0), music_like(1.0, seed=1)])]
    metrics = {"mel_distance": MelDistance(SR), "stft_distance": STFTDistance(), "si_sdr": SISDR()}
    table = evaluate_classical(batches, SR, "opus", [6.0, 12.0], metrics)
    assert [c["label"] for c in table.columns] == ["6kbps", "12kbps"]
    assert table.seconds == pytest.approx(2.0)
    assert table.cell("mel_distance", "12kbps") < table.cell("mel_distance", "6kbps")
    assert all(abs(lag) <= 24 for lags in table.lags.values() for lag in lags)
    uri = f"sqlite:///{mlflow_db}"
    opus_run = log_classical_run(table, uri)
    client = MlflowClient(uri)  # a trained codec's test run, as BitrateEvaluator logs it
    experiment = client.get_experiment_by_name("codecplatform").experiment_id
    trained = client.create_run(experiment, tags={"family": "encodec", "sample_rate": str(SR)}).info.run_id
    for key, value in {
        "test/6kbps/mel_distance": 3.0,
        "test/6kbps/si_sdr": 2.0,
        "test/6kbps/stft_distance": 3.1,
    }.items():
        client.log_metric(trained, key, value)
    comparison = compare.collect(uri)
    assert comparison.families() == ["encodec", "opus"]
    runs = {run.family: run for run in comparison.runs}
    assert runs["opus"].run_id == opus_run
    assert runs["opus"].tags["sample_rate"] == str(SR) and runs["opus"].tags["max_kbps"] == "12"
    point = runs["opus"].points[0]
    assert (point.label, point.kbps) == ("6kbps", 6.0)
    assert point.effective_kbps == pytest.approx(table.columns[0]["true_kbps"])
    assert set(point.metrics) == set(runs["encodec"].points[0].metrics) == set(metrics)
    assert client.get_run(opus_run).data.metrics["test/mel_distance"] == pytest.approx(
        table.cell("mel_distance", "12kbps")
    )
