"""Integrated loudness after ITU-R BS.1770-4 (LUFS) and loudness normalization (pure functions).

Measurement (BS.1770-4, section 2 and annex 1):

1. K-weighting of every channel: a high-shelf pre-filter (+4 dB above ~1.7 kHz, the head's
   acoustic effect) followed by a second-order high-pass at ~38 Hz (RLB weighting). The standard
   gives both biquads' coefficients at 48 kHz only; :func:`k_weighting_sos` derives them for any
   sample rate from analog prototypes (centre frequency, gain and Q) whose bilinear transform at
   48 kHz reproduces the standard's coefficients to better than 1e-6.
2. Mean squares ``z_ij`` of channel ``i`` over gating blocks ``j`` of 400 ms with 75 % overlap
   (a block every 100 ms; only whole blocks).
3. Block loudness ``l_j = -0.691 + 10 log10(sum_i G_i z_ij)`` with channel weights ``G_i``
   (1.0 for left, right and centre; 1.41 for the two surround channels of a 5-channel layout).
4. Absolute gate: blocks with ``l_j > -70`` LUFS; relative gate: of those, blocks with
   ``l_j`` above (loudness of the absolute-gated blocks - 10 LU).
5. Integrated loudness: ``-0.691 + 10 log10(sum_i G_i mean_j z_ij)`` over the blocks that pass
   both gates.

Choices beyond the standard:

- An excerpt shorter than one 400 ms block is measured as a single block spanning the whole
  excerpt (the standard defines no block then; pyloudnorm raises). The gates still apply, so a
  silent short excerpt measures ``-inf``.
- When no block passes the gates (silence, or audio below -70 LUFS throughout) the loudness is
  ``-inf`` and :func:`normalize_loudness` returns the audio unchanged instead of applying an
  infinite gain.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_SECONDS = 0.4  # gating block length (BS.1770-4, 400 ms)
STEP_SECONDS = 0.1  # block hop: 75 % overlap
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
_OFFSET = -0.691  # makes a 997 Hz sine at 0 dBFS in one front channel read -3.01 LUFS
SURROUND_WEIGHT = 1.41  # G_i of Ls and Rs (channels 4 and 5 of L, R, C, Ls, Rs)

# Analog prototypes of the two K-weighting biquads. Their bilinear transforms at 48 kHz give
# the coefficients printed in BS.1770-4 (checked in tests/dsp/test_loudness.py).
_SHELF_HZ, _SHELF_GAIN_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_SHELF_BAND_EXP = 0.4996667741545416  # the shelf's mid-band gain is the high gain to this power
_HIGHPASS_HZ, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773


def k_weighting_sos(sample_rate: int) -> np.ndarray:
    """The K-weighting filter at ``sample_rate`` as second-order sections: (2, 6) float64.

    Row 0 is the high-shelf pre-filter, row 1 the RLB high-pass; each row is
    ``[b0, b1, b2, 1, a1, a2]`` (``scipy.signal.sosfilt`` layout).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if sample_rate <= 2 * _SHELF_HZ:
        raise ValueError(
            f"sample_rate={sample_rate} Hz is too low for K-weighting "
            f"(the shelf at {_SHELF_HZ:.0f} Hz needs more than {2 * _SHELF_HZ:.0f} Hz)"
        )
    # High shelf.
    k = math.tan(math.pi * _SHELF_HZ / sample_rate)
    v_high = 10.0 ** (_SHELF_GAIN_DB / 20.0)
    v_band = v_high**_SHELF_BAND_EXP
    a0 = 1.0 + k / _SHELF_Q + k * k
    shelf = [
        (v_high + v_band * k / _SHELF_Q + k * k) / a0,
        2.0 * (k * k - v_high) / a0,
        (v_high - v_band * k / _SHELF_Q + k * k) / a0,
        1.0,
        2.0 * (k * k - 1.0) / a0,
        (1.0 - k / _SHELF_Q + k * k) / a0,
    ]
    # High-pass (numerator 1, -2, 1 as in the standard: unit gain at Nyquist).
    k = math.tan(math.pi * _HIGHPASS_HZ / sample_rate)
    a0 = 1.0 + k / _HIGHPASS_Q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / _HIGHPASS_Q + k * k) / a0]
    return np.array([shelf, highpass], dtype=np.float64)


def _as_channels(audio: np.ndarray) -> np.ndarray:
    """(N,) or (C, N) -> (C, N) float64; anything else is an error."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"audio must be (N,) or (C, N), got shape {tuple(np.shape(audio))}")
    return x


def default_channel_weights(channels: int) -> np.ndarray:
    """BS.1770-4 channel weights G_i: 1.0 for L, R, C; 1.41 for Ls, Rs (5-channel layout)."""
    if not 1 <= channels <= 5:
        raise ValueError(
            f"no default BS.1770 channel weights for {channels} channels (1 to 5: L, R, C, Ls, Rs "
            "without LFE); pass channel_weights"
        )
    return np.array([1.0, 1.0, 1.0, SURROUND_WEIGHT, SURROUND_WEIGHT][:channels])


def block_mean_squares(weighted: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean squares of K-weighted audio over 400 ms blocks every 100 ms: (C, N) -> (C, J).

    Only whole blocks count; audio shorter than one block gives one block over all of it
    (J = 1). Empty audio gives J = 0.
    """
    channels, n = weighted.shape
    if n == 0:
        return np.zeros((channels, 0))
    block = max(1, round(BLOCK_SECONDS * sample_rate))
    cumulative = np.concatenate([np.zeros((channels, 1)), np.cumsum(np.square(weighted), axis=1)], axis=1)  # (C, N+1)
    if n < block:
        return (cumulative[:, -1:] - cumulative[:, :1]) / n  # (C, 1)
    num_blocks = math.floor((n - block) / (STEP_SECONDS * sample_rate) + 1e-9) + 1
    starts = np.round(np.arange(num_blocks) * STEP_SECONDS * sample_rate).astype(np.int64)
    starts = starts[starts + block <= n]
    return (cumulative[:, starts + block] - cumulative[:, starts]) / block  # (C, J)


def _loudness(power: np.ndarray | float) -> np.ndarray | float:
    with np.errstate(divide="ignore"):
        return _OFFSET + 10.0 * np.log10(power)


def integrated_loudness(audio: np.ndarray, sample_rate: int, channel_weights: list[float] | None = None) -> float:
    """Gated integrated loudness of ``audio`` (N,) or (C, N) in LUFS; ``-inf`` when no block
    passes the gates (silence). See the module docstring for the measurement.

    Args:
        audio: samples in full-scale units (1.0 = 0 dBFS), channels first.
        sample_rate: in Hz (any rate above ~3.4 kHz).
        channel_weights: G_i per channel; None: :func:`default_channel_weights`.
    """
    x = _as_channels(audio)
    if not np.isfinite(x).all():
        raise ValueError("audio holds NaN/inf samples: its loudness is undefined")
    weights = (
        default_channel_weights(x.shape[0])
        if channel_weights is None
        else np.asarray(channel_weights, dtype=np.float64)
    )
    if weights.shape != (x.shape[0],):
        raise ValueError(f"channel_weights has {weights.size} entries for {x.shape[0]} channels")
    from scipy.signal import sosfilt  # here: importing scipy.signal takes seconds (command-line start-up)

    weighted = sosfilt(k_weighting_sos(sample_rate), x, axis=1)  # (C, N)
    z = block_mean_squares(weighted, sample_rate)  # (C, J)
    if z.shape[1] == 0:
        return float("-inf")
    block_power = weights @ z  # (J,)
    block_loudness = _loudness(block_power)
    above_absolute = block_loudness > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return float("-inf")
    relative_gate = _loudness(block_power[above_absolute].mean()) + RELATIVE_GATE_LU
    gated = above_absolute & (block_loudness > relative_gate)
    return float(_loudness(block_power[gated].mean()))


def loudness_gain_db(loudness: float, target_lufs: float) -> float:
    """Gain in dB that brings ``loudness`` to ``target_lufs``; 0.0 for silence (``-inf``)."""
    if not math.isfinite(loudness):
        return 0.0
    return target_lufs - loudness


def normalize_loudness(
    audio: np.ndarray,
    sample_rate: int,
    target_lufs: float,
    channel_weights: list[float] | None = None,
) -> np.ndarray:
    """Scale ``audio`` (N,) or (C, N) so its integrated loudness is ``target_lufs``: same shape
    and dtype out. Silent audio (loudness ``-inf``) comes back unchanged (a copy). The peak is
    not limited: a quiet, peaky excerpt can exceed full scale after the gain."""
    gain_db = loudness_gain_db(integrated_loudness(audio, sample_rate, channel_weights), target_lufs)
    out = np.asarray(audio) * (10.0 ** (gain_db / 20.0))
    return out.astype(np.asarray(audio).dtype, copy=False)


__all__ = [
    "ABSOLUTE_GATE_LUFS",
    "BLOCK_SECONDS",
    "RELATIVE_GATE_LU",
    "STEP_SECONDS",
    "block_mean_squares",
    "default_channel_weights",
    "integrated_loudness",
    "k_weighting_sos",
    "loudness_gain_db",
    "normalize_loudness",
]
