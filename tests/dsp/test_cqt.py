"""The constant-Q transform against known tones."""

from __future__ import annotations

import math

import pytest
import torch

from codecplatform.dsp.cqt import cqt, cqt_frequencies, cqt_kernels

SR = 24000


def tone(freq: float, seconds: float = 1.0, amplitude: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()[None, None]  # (1, 1, T)


def test_frequencies_are_geometric_from_fmin():
    freqs = cqt_frequencies(84, 32.7, 12)
    assert freqs[0] == pytest.approx(32.7)
    assert freqs[12] == pytest.approx(65.4)
    assert freqs[-1] == pytest.approx(32.7 * 2 ** (83 / 12))


def test_official_geometry_kernel_width_and_frames():
    kernels, lengths = cqt_kernels(SR, 84, 32.7, 12)
    q = 1 / (2 ** (1 / 12) - 1)
    assert lengths[0] == math.ceil(q * SR / 32.7)
    assert kernels.shape == (84, 16384)  # next power of two above the longest filter (~12.3k taps)
    x = torch.zeros(2, 1, SR)
    assert cqt(x, kernels, lengths, 960).shape == (2, 1, 84, 1 + SR // 960)


@pytest.mark.parametrize("bin_index", [10, 30, 47])
def test_tone_peaks_at_its_bin_with_librosa_scaling(bin_index):
    kernels, lengths = cqt_kernels(SR, 48, 110.0, 12)
    freq = float(cqt_frequencies(48, 110.0, 12)[bin_index])
    spec = cqt(tone(freq, amplitude=0.5), kernels, lengths, 960)[0, 0]  # (bins, N)
    middle = spec[:, 5:-5]  # away from the zero-padded edges
    assert int(middle.mean(dim=1).argmax()) == bin_index
    # a sinusoid of amplitude A at f_k gives ~ A / 2 * sqrt(l_k) in bin k
    expected = 0.5 / 2 * math.sqrt(float(lengths[bin_index]))
    assert float(middle[bin_index].mean()) == pytest.approx(expected, rel=0.02)
    # a semitone away is far weaker
    assert float(middle[bin_index - 2].mean()) < 0.2 * expected


def test_top_bin_above_nyquist_is_refused():
    with pytest.raises(ValueError, match="Nyquist"):
        cqt_kernels(8000, 84, 32.7, 12)
