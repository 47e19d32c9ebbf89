"""Constant-Q transform (CQT) as pure functions: time-domain kernels and their strided convolution.

The classic time-domain CQT (Brown 1991), written here so that nnAudio and librosa are not
dependencies (torchaudio has none); it is the variant MuCodec's official code uses through
``nnAudio.features.cqt.CQT`` (CQT1992v2, ``filter_scale=1, norm=1, window="hann",
center=True, pad_mode="constant", output_format="Magnitude"``, librosa-style scaling):

* bin k has centre frequency ``f_k = fmin * 2 ** (k / bins_per_octave)``;
* ``Q = filter_scale / (2 ** (1 / bins_per_octave) - 1)``; bin k's filter is ``l_k = ceil(Q * sr / f_k)``
  samples long: a periodic Hann window times ``exp(2 pi i f_k n / sr)`` with n centred on 0,
  divided by its L1 norm, placed in the middle of a common kernel of ``2 ** ceil(log2(l_0))`` taps;
* the signal is zero-padded by half a kernel on both sides and correlated with every kernel at
  a stride of ``hop_length``: N = 1 + T // hop_length frames (like a centred STFT);
* the magnitude is multiplied by ``sqrt(l_k)`` (librosa's normalization), so a unit-amplitude
  sinusoid at ``f_k`` gives about ``sqrt(l_k) / 2`` in bin k.

Shapes: audio ``x`` (B, C, T) -> magnitude (B, C, n_bins, N). Kernels: complex (n_bins, L).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def cqt_frequencies(n_bins: int, fmin: float, bins_per_octave: int = 12) -> Tensor:
    """Centre frequencies (n_bins,) float64 in Hz: ``fmin * 2 ** (k / bins_per_octave)``."""
    return fmin * 2.0 ** (torch.arange(n_bins, dtype=torch.float64) / bins_per_octave)


def cqt_kernels(
    sample_rate: int,
    n_bins: int = 84,
    fmin: float = 32.7,
    bins_per_octave: int = 12,
    filter_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Time-domain CQT kernels: (complex64 kernels (n_bins, L), float32 filter lengths (n_bins,)).

    L = 2 ** ceil(log2(l_0)) is a power of two holding the longest (lowest) filter; each filter
    is centred in it (see the module docstring). Raises ValueError when the top bin reaches the
    Nyquist frequency.
    """
    if n_bins < 1 or bins_per_octave < 1 or fmin <= 0 or filter_scale <= 0:
        raise ValueError(
            f"need n_bins >= 1, bins_per_octave >= 1, fmin > 0, filter_scale > 0; got {n_bins}, "
            f"{bins_per_octave}, {fmin}, {filter_scale}"
        )
    freqs = cqt_frequencies(n_bins, fmin, bins_per_octave)
    if float(freqs[-1]) * (1 + 0.5 * (2 ** (1 / bins_per_octave) - 1)) >= sample_rate / 2:
        raise ValueError(
            f"the top CQT bin ({float(freqs[-1]):.1f} Hz) reaches the Nyquist frequency of {sample_rate} Hz: "
            "use fewer bins or a lower fmin"
        )
    q = filter_scale / (2 ** (1 / bins_per_octave) - 1)
    lengths = torch.ceil(q * sample_rate / freqs)  # (n_bins,) float64
    width = 2 ** math.ceil(math.log2(float(lengths[0])))
    kernels = torch.zeros(n_bins, width, dtype=torch.complex128)
    for k in range(n_bins):
        length = int(lengths[k])
        n = torch.arange(length, dtype=torch.float64) - length // 2  # centred sample indices
        window = torch.hann_window(length, periodic=True, dtype=torch.float64)
        kernel = window * torch.exp(2j * math.pi * float(freqs[k]) * n / sample_rate)
        kernel = kernel / kernel.abs().sum()  # L1 norm 1
        start = width // 2 - length // 2  # index 0 of n sits at the kernel's centre tap
        kernels[k, start : start + length] = kernel
    return kernels.to(torch.complex64), lengths.float()


def cqt(x: Tensor, kernels: Tensor, lengths: Tensor, hop_length: int) -> Tensor:
    """CQT magnitude of real audio: (B, C, T) -> (B, C, n_bins, 1 + T // hop_length).

    ``kernels``/``lengths`` come from :func:`cqt_kernels` (any device; moved to ``x``'s). Runs in
    float32 whatever the autocast state.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
    if hop_length < 1:
        raise ValueError(f"hop_length must be >= 1, got {hop_length}")
    batch, channels, length = x.shape
    n_bins, width = kernels.shape
    with torch.autocast(device_type=x.device.type, enabled=False):
        weight = torch.cat([kernels.real, kernels.imag]).to(device=x.device, dtype=torch.float32)  # (2K, L)
        signal = F.pad(x.reshape(batch * channels, 1, length).float(), (width // 2, width // 2))  # centred frames
        out = F.conv1d(signal, weight[:, None, :], stride=hop_length)  # (B*C, 2K, N)
        real, imag = out[:, :n_bins], out[:, n_bins:]
        magnitude = torch.sqrt(real.square() + imag.square())
        magnitude = magnitude * lengths.to(device=x.device, dtype=torch.float32).sqrt()[None, :, None]
    return magnitude.reshape(batch, channels, n_bins, -1)


__all__ = ["cqt", "cqt_frequencies", "cqt_kernels"]
