"""BS.1770-4 integrated loudness: filter coefficients, reference levels, gates, pyloudnorm parity."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest

from codecplatform.dsp.loudness import (
    block_mean_squares,
    integrated_loudness,
    k_weighting_sos,
    loudness_gain_db,
    normalize_loudness,
)


def _sine(seconds: float, sr: int, freq: float, amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return amplitude * np.sin(2 * np.pi * freq * t)


def _program(seconds: float, sr: int, channels: int, seed: int) -> np.ndarray:
    """(C, N): a slowly modulated tone + noise, a quiet stretch and a silent one (gates matter)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    out = []
    for c in range(channels):
        tone = 0.2 * np.sin(2 * np.pi * (180 + 70 * c) * t) * (1.2 + np.sin(2 * np.pi * 0.4 * t))
        x = tone + 0.03 * rng.standard_normal(n) + 0.02 * np.sin(2 * np.pi * 5000 * t)
        x[n // 4 : n // 4 + sr // 2] *= 0.01  # 40 dB down: below the relative gate
        x[n // 2 : n // 2 + sr // 2] = 0.0  # silence: below the absolute gate
        out.append(x)
    return np.stack(out)


def test_k_weighting_at_48k_matches_the_coefficients_printed_in_bs1770() -> None:
    sos = k_weighting_sos(48000)
    shelf = [1.53512485958697, -2.69169618940638, 1.19839281085285, 1.0, -1.69065929318241, 0.73248077421585]
    highpass = [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621]
    np.testing.assert_allclose(sos[0], shelf, atol=1e-8)
    np.testing.assert_allclose(sos[1], highpass, atol=1e-8)


@pytest.mark.parametrize("sr", [44100, 48000])
def test_997_hz_full_scale_sine_in_one_channel_reads_minus_3_01_lufs(sr: int) -> None:
    # BS.1770-4: a 0 dBFS sine at ~1 kHz in the left, centre or right channel reads -3.01 LKFS.
    assert integrated_loudness(_sine(4.0, sr, 997.0, 1.0), sr) == pytest.approx(-3.01, abs=0.01)


def test_ebu_3341_case_1_stereo_sine_at_minus_23_dbfs_reads_minus_23_lufs() -> None:
    # EBU Tech 3341 test 1: 1 kHz sine at -23 dBFS in both stereo channels -> -23.0 +- 0.1 LUFS
    # (both channels add: a full-scale sine in both channels reads 0 LUFS, not -3.01).
    sr = 48000
    x = _sine(5.0, sr, 1000.0, 10 ** (-23 / 20))
    assert integrated_loudness(np.stack([x, x]), sr) == pytest.approx(-23.0, abs=0.1)


@pytest.mark.parametrize(("sr", "channels"), [(16000, 1), (22050, 2), (24000, 1), (44100, 2), (48000, 1), (48000, 5)])
def test_agrees_with_pyloudnorm_using_the_standard_k_weighting(sr: int, channels: int) -> None:
    # pyloudnorm's "DeMan" filter class is the standard's K-weighting at any rate; its default
    # "K-weighting" class is an RBJ-cookbook approximation that reads up to ~0.15 LU differently.
    x = _program(3.0, sr, channels, seed=sr + channels)
    meter = pyloudnorm.Meter(sr, filter_class="DeMan")
    ours, theirs = integrated_loudness(x, sr), meter.integrated_loudness(x.T.copy())
    assert ours == pytest.approx(theirs, abs=0.01)


def test_relative_gate_drops_a_quiet_passage_and_absolute_gate_drops_silence() -> None:
    sr = 24000
    loud = _sine(2.0, sr, 440.0, 0.3)  # 17 whole blocks of equal power P
    alone = integrated_loudness(loud, sr)
    # 2 s more: 20 more blocks; 3 straddle the edge (3/4, 1/2, 1/4 of P), 17 hold only the tail
    with_quiet = np.concatenate([loud, 0.003 * loud])  # tail 50 dB down: below the relative gate
    with_silence = np.concatenate([loud, np.zeros(2 * sr)])  # below the absolute gate
    gated = 10 * math.log10((17 + 0.75 + 0.5 + 0.25) / 20)  # the tail blocks are not averaged in
    ungated = 10 * math.log10((17 + 0.75 + 0.5 + 0.25) / 37)
    assert integrated_loudness(with_quiet, sr) - alone == pytest.approx(gated, abs=0.02)
    assert integrated_loudness(with_silence, sr) - alone == pytest.approx(gated, abs=0.02)
    assert abs(gated - ungated) > 2.5


def test_silence_and_audio_below_the_absolute_gate_have_no_loudness_and_are_left_alone() -> None:
    sr = 24000
    silence = np.zeros((2, sr), dtype=np.float32)
    faint = _sine(1.0, sr, 440.0, 1e-5).astype(np.float32)  # about -100 LUFS
    assert integrated_loudness(silence, sr) == -math.inf
    assert integrated_loudness(faint, sr) == -math.inf
    assert loudness_gain_db(-math.inf, -24.0) == 0.0
    for x in (silence, faint):
        y = normalize_loudness(x, sr, -24.0)
        assert np.isfinite(y).all() and np.array_equal(y, x) and y.dtype == np.float32


@pytest.mark.parametrize("target", [-24.0, -16.0, -30.0])
def test_normalize_loudness_reaches_the_target(target: float) -> None:
    sr = 24000
    x = _program(2.0, sr, 2, seed=3).astype(np.float32)
    y = normalize_loudness(x, sr, target)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert integrated_loudness(y, sr) == pytest.approx(target, abs=0.01)


def test_an_excerpt_shorter_than_one_block_is_measured_as_one_block() -> None:
    sr = 48000
    short = _sine(0.2, sr, 997.0, 1.0)  # half a gating block
    z = block_mean_squares(short[None], sr)
    assert z.shape == (1, 1) and z[0, 0] == pytest.approx(0.5, rel=1e-3)
    assert integrated_loudness(short, sr) == pytest.approx(-3.01, abs=0.05)
    assert integrated_loudness(np.zeros(100), sr) == -math.inf


def test_blocks_are_400_ms_every_100_ms_and_only_whole_ones() -> None:
    sr = 10000
    assert block_mean_squares(np.ones((2, 4000)), sr).shape == (2, 1)
    assert block_mean_squares(np.ones((2, 4999)), sr).shape == (2, 1)
    assert block_mean_squares(np.ones((2, 5000)), sr).shape == (2, 2)
    assert block_mean_squares(np.ones((1, 10000)), sr).shape == (1, 7)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="NaN"):
        integrated_loudness(np.array([0.1, np.nan, 0.2]), 24000)
    with pytest.raises(ValueError, match="too low"):
        k_weighting_sos(2000)
    with pytest.raises(ValueError, match="6 channels"):
        integrated_loudness(np.zeros((6, 24000)), 24000)
    with pytest.raises(ValueError, match="channel_weights"):
        integrated_loudness(np.zeros((2, 24000)), 24000, channel_weights=[1.0])
    with pytest.raises(ValueError, match=r"\(N,\) or \(C, N\)"):
        integrated_loudness(np.zeros((1, 2, 24000)), 24000)
