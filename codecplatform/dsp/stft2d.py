"""SpectroStream's STFT front end as pure functions: real/imaginary channel planes and the inverse.

Forward (``stft_2d``): audio (B, C, T) -> spectrogram (B, 2C, N, F) with the channels interleaved
``[c0.re, c0.im, c1.re, c1.im, ...]`` (stereo: ``[L.re, L.im, R.re, R.im]``), time frames N on
axis 2 and frequency bins F on axis 3. Inverse (``istft_2d``): (B, 2C, N, F) -> audio (B, C, N * hop).

SpectroStream's settings (magenta/magenta-realtime ``magenta_rt/jax/spectrostream.py``,
``spectrostream_stft_config`` / ``spectrostream_inverse_stft_config``, on google/sequence-layers
``sl.STFT`` / ``sl.InverseSTFT``): frame 960, hop 480, FFT 960, periodic Hann window, no
normalization, FFT zero padding on the right (``fft_padding='right'``), the DC bin kept and the
Nyquist bin dropped (``keep_dc=True``) -> 480 bins at 48 kHz.

Framing (``padding``), in sequence-layers' terms (``utils.convolution_explicit_padding``):

* ``"reverse_causal"`` (SpectroStream's analysis, "even when the encoder is causal, the STFT is not
  causal"): no padding on the left and ``frame_length - 1`` zeros on the right. Frame t covers
  samples ``[t * hop, t * hop + frame_length)``, so it looks ``frame_length - hop`` samples (10 ms)
  past its own hop block; a T-sample signal gives ``N = ceil(T / hop)`` frames.
* ``"causal"``: ``frame_length - 1`` zeros on the left; frame t covers
  ``[t * hop - frame_length + 1, t * hop + 1)``; ``N = ceil(T / hop)`` frames as well.

Synthesis is sequence-layers' causal inverse STFT: each frame is inverse-FFT'd (the dropped
Nyquist bin filled with 0), multiplied by the synthesis ("dual") window of Griffin & Lim eq. 7
(:func:`dual_window`: the analysis window divided by the sum of the squared analysis windows
overlapping at each position) and overlap-added with frame t starting at sample ``t * hop``; the
output keeps the first ``N * hop`` samples (the last ``frame_length - hop`` samples, which a
streaming synthesis cannot complete, are dropped). With the reverse-causal analysis this is sample
aligned: ``istft_2d(stft_2d(x))[..., n] == x[..., n]`` for ``frame_length - hop <= n < T`` (the
first ``frame_length - hop`` samples are covered by one frame only), up to float error and the
dropped Nyquist bin (exact for signals whose frames have no Nyquist content).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

FramePadding = Literal["reverse_causal", "causal"]


def hann_window(length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Periodic Hann window (length,): ``0.5 - 0.5 cos(2 pi n / length)`` (tf.signal / sequence-layers)."""
    return torch.hann_window(length, periodic=True, device=device, dtype=dtype)


def dual_window(window: Tensor, hop_length: int) -> Tensor:
    """Synthesis window (L,) for overlap-add with hop ``hop_length`` (tf.signal.inverse_stft_window_fn,
    Griffin & Lim eq. 7): ``w[n] / sum_k w[n + k hop]^2`` over the frames overlapping sample n,
    0 where that sum is 0."""
    if window.dim() != 1:
        raise ValueError(f"window must be 1-D, got shape {tuple(window.shape)}")
    if hop_length < 1:
        raise ValueError(f"hop_length must be >= 1, got {hop_length}")
    length = window.shape[0]
    overlaps = math.ceil(length / hop_length)
    denom = F.pad(window.pow(2), (0, overlaps * hop_length - length)).view(overlaps, hop_length).sum(0)  # (hop,)
    denom = denom.repeat(overlaps)[:length]  # (L,)
    return torch.where(denom == 0, torch.zeros_like(window), window / torch.where(denom == 0, 1.0, denom))


def num_frames(length: int, hop_length: int) -> int:
    """Frames of a ``length``-sample signal with causal or reverse-causal framing: ceil(T / hop)."""
    return math.ceil(length / hop_length)


def frame_signal(x: Tensor, frame_length: int, hop_length: int, padding: FramePadding = "reverse_causal") -> Tensor:
    """(B, C, T) -> frames (B, C, N, frame_length), N = ceil(T / hop) (see the module docstring)."""
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
    _check_sizes(frame_length, hop_length, frame_length)
    if padding == "reverse_causal":
        padded = F.pad(x, (0, frame_length - 1))
    elif padding == "causal":
        padded = F.pad(x, (frame_length - 1, 0))
    else:
        raise ValueError(f"padding must be 'reverse_causal' or 'causal', got {padding!r}")
    n = num_frames(x.shape[-1], hop_length)
    return padded.unfold(-1, frame_length, hop_length)[:, :, :n]  # (B, C, N, L)


def spectrum_from_frames(frames: Tensor, window: Tensor, fft_length: int, keep_dc: bool = True) -> Tensor:
    """Frames (B, C, N, L) -> real/imaginary planes (B, 2C, N, fft_length // 2), interleaved
    [c0.re, c0.im, c1.re, ...]: window, FFT zero-padded on the right to ``fft_length``, then the
    Nyquist bin dropped (``keep_dc``) or the DC bin dropped (not ``keep_dc``)."""
    b, c, n, length = frames.shape
    if n == 0:  # an empty streaming chunk (some FFT backends refuse empty batches)
        return frames.new_zeros(b, 2 * c, 0, fft_length // 2)
    spec = torch.fft.rfft(frames * window, n=fft_length, dim=-1)  # (B, C, N, fft // 2 + 1)
    spec = spec[..., :-1] if keep_dc else spec[..., 1:]
    planes = torch.stack([spec.real, spec.imag], dim=2)  # (B, C, 2, N, F)
    return planes.reshape(b, 2 * c, n, spec.shape[-1])


def frames_from_spectrum(spec: Tensor, window: Tensor, fft_length: int, keep_dc: bool = True) -> Tensor:
    """Planes (B, 2C, N, fft_length // 2) -> windowed time frames (B, C, N, L), L = len(window):
    the dropped bin filled with 0, inverse FFT, cut to L samples, times the synthesis ``window``."""
    b, c2, n, bins = spec.shape
    if c2 % 2:
        raise ValueError(f"spec must have an even number of channels (re, im pairs), got {c2}")
    if bins != fft_length // 2:
        raise ValueError(f"spec has {bins} bins, fft_length {fft_length} needs {fft_length // 2}")
    planes = spec.reshape(b, c2 // 2, 2, n, bins)
    if n == 0:
        return window.new_zeros(b, c2 // 2, 0, window.shape[0])
    if planes.dtype not in (torch.float32, torch.float64):
        planes = planes.float()
    complex_spec = torch.complex(planes[:, :, 0], planes[:, :, 1])  # (B, C, N, F)
    complex_spec = F.pad(complex_spec, (0, 1) if keep_dc else (1, 0))  # (B, C, N, fft // 2 + 1)
    frames = torch.fft.irfft(complex_spec, n=fft_length, dim=-1)[..., : window.shape[0]]  # (B, C, N, L)
    if frames.shape[-1] < window.shape[0]:
        frames = F.pad(frames, (0, window.shape[0] - frames.shape[-1]))
    return frames * window


def overlap_add(frames: Tensor, hop_length: int) -> Tensor:
    """Causal overlap-add: frames (B, C, N, L) -> (B, C, N * hop), frame t added at sample t * hop,
    the last L - hop samples of the full sum dropped (sequence-layers ``OverlapAdd(padding='causal')``)."""
    b, c, n, length = frames.shape
    if length < hop_length:
        raise ValueError(f"frame length {length} must be >= hop_length {hop_length}")
    total = (n - 1) * hop_length + length if n else 0
    out = F.fold(
        frames.reshape(b * c, n, length).transpose(1, 2),  # (B*C, L, N)
        output_size=(1, max(total, length)),
        kernel_size=(1, length),
        stride=(1, hop_length),
    )  # (B*C, 1, 1, total)
    return out.reshape(b, c, -1)[..., : n * hop_length]


def stft_2d(
    x: Tensor,
    frame_length: int = 960,
    hop_length: int = 480,
    fft_length: int = 960,
    keep_dc: bool = True,
    padding: FramePadding = "reverse_causal",
) -> Tensor:
    """SpectroStream analysis: audio (B, C, T) -> (B, 2C, N, fft_length // 2), N = ceil(T / hop),
    channels interleaved [c0.re, c0.im, c1.re, c1.im, ...]; periodic Hann window, no normalization."""
    _check_sizes(frame_length, hop_length, fft_length)
    window = hann_window(frame_length, device=x.device, dtype=x.dtype)
    return spectrum_from_frames(frame_signal(x, frame_length, hop_length, padding), window, fft_length, keep_dc)


def istft_2d(
    spec: Tensor,
    frame_length: int = 960,
    hop_length: int = 480,
    fft_length: int = 960,
    keep_dc: bool = True,
) -> Tensor:
    """SpectroStream synthesis: (B, 2C, N, fft_length // 2) -> audio (B, C, N * hop), causal
    overlap-add with the dual of the periodic Hann window (see the module docstring)."""
    _check_sizes(frame_length, hop_length, fft_length)
    dtype = spec.dtype if spec.dtype in (torch.float32, torch.float64) else torch.float32
    window = dual_window(hann_window(frame_length, device=spec.device, dtype=dtype), hop_length)
    return overlap_add(frames_from_spectrum(spec, window, fft_length, keep_dc), hop_length)


def _check_sizes(frame_length: int, hop_length: int, fft_length: int) -> None:
    if frame_length < 1 or hop_length < 1:
        raise ValueError(f"frame_length and hop_length must be >= 1, got {frame_length}, {hop_length}")
    if hop_length > frame_length:
        raise ValueError(f"hop_length ({hop_length}) must be <= frame_length ({frame_length})")
    if fft_length < frame_length:
        raise ValueError(f"fft_length ({fft_length}) must be >= frame_length ({frame_length})")
