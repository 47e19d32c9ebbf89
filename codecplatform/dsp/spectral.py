"""Spectral transforms as pure functions: STFT, mel filterbanks, safe log, resampling.

Shapes: audio ``x`` is (B, C, T); a complex STFT is (B, C, F, N) with F = n_fft // 2 + 1
frequency bins and N frames; a mel filterbank is (n_mels, F), applied as ``fb @ |X|``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torchaudio.functional as AF
from torch import Tensor

MelNorm = Literal["slaney"] | None
MelScale = Literal["slaney", "htk"]


def stft(
    x: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    window: Tensor | None = None,
    center: bool = True,
    normalized: bool = False,
) -> Tensor:
    """Complex one-sided STFT of real audio: (B, C, T) -> (B, C, n_fft // 2 + 1, N).

    ``window`` defaults to a periodic Hann window of ``win_length`` (default ``n_fft``) samples
    on ``x``'s device and dtype. ``center=True`` reflect-pads ``n_fft // 2`` samples on both
    sides, giving N = 1 + T // hop_length frames; ``center=False`` gives
    N = 1 + (T - n_fft) // hop_length and needs T >= n_fft.

    ``normalized=True`` divides by the window's L2 norm, sqrt(sum(w^2)), which is what
    torchaudio's ``Spectrogram(normalized=True)`` does and hence what EnCodec (audiocraft) uses
    in its mel loss and MS-STFT discriminator. (``torch.stft(normalized=True)`` would instead
    divide by sqrt(n_fft).)
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, channels, samples), got shape {tuple(x.shape)}")
    win_length = n_fft if win_length is None else win_length
    if window is None:
        window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    elif window.shape != (win_length,):
        raise ValueError(f"window must have shape ({win_length},), got {tuple(window.shape)}")
    if not center and x.shape[-1] < n_fft:
        raise ValueError(f"x has {x.shape[-1]} samples, center=False needs at least n_fft={n_fft}")
    batch, channels, length = x.shape
    spec = torch.stft(
        x.reshape(batch * channels, length),  # (B*C, T)
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # (B*C, F, N)
    if normalized:
        spec = spec / window.pow(2).sum().sqrt()
    return spec.reshape(batch, channels, *spec.shape[-2:])


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    norm: MelNorm = "slaney",
    mel_scale: MelScale = "slaney",
) -> Tensor:
    """Triangular mel filters (n_mels, n_fft // 2 + 1), float32; apply as ``fb @ |X|``.

    The defaults (slaney scale, slaney area normalization) match ``librosa.filters.mel`` and thus
    DAC; torchaudio's ``MelSpectrogram`` defaults (used by audiocraft/EnCodec) are
    ``norm=None, mel_scale="htk"``. ``f_max`` defaults to ``sample_rate / 2``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, sample_rate={sample_rate}"
        )
    with warnings.catch_warnings():
        # Short windows leave the lowest bands without an FFT bin: they are all zero for x and
        # x_hat alike and add nothing to a loss, as in the official EnCodec/DAC losses.
        warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
        fb = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm=norm,
            mel_scale=mel_scale,
        )  # (F, n_mels)
    return fb.T.contiguous()


def safe_log(x: Tensor, eps: float = 1e-5, base: float | None = None) -> Tensor:
    """``log(max(x, eps))`` elementwise, natural log or in ``base`` (e.g. 10 for DAC)."""
    out = torch.log(x.clamp(min=eps))
    return out if base is None else out / math.log(base)


def resample(x: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited (sinc, Hann window) resampling along the last axis: (..., T) -> (..., T')."""
    if orig_sr == new_sr:
        return x
    return AF.resample(x, orig_freq=orig_sr, new_freq=new_sr)


def log_mel_spectrogram(
    x: Tensor,
    filterbank: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int | None = None,
    clamp_eps: float = 1e-5,
    center: bool = True,
) -> Tensor:
    """Natural-log magnitude mel spectrogram, time major: (B, C, T) -> (B, C, N, n_mels).

    ``log(max(filterbank @ |STFT(x)|, clamp_eps))`` with a periodic Hann window and reflect
    padding of ``n_fft // 2`` (``center=True``: N = 1 + T // hop_length frames); ``filterbank`` is
    (n_mels, n_fft // 2 + 1), e.g. from :func:`mel_filterbank`. With the slaney filterbank this is
    AudioLDM's ``TacotronSTFT.mel_spectrogram`` (what MuCodec's Mel-VAE and vocoder see). Time major,
    as the VAE treats the mel as an image of height N (time) and width n_mels.
    """
    if filterbank.dim() != 2 or filterbank.shape[1] != n_fft // 2 + 1:
        raise ValueError(f"filterbank must be (n_mels, {n_fft // 2 + 1}), got {tuple(filterbank.shape)}")
    magnitude = stft(x, n_fft, hop_length, win_length=win_length, center=center).abs()  # (B, C, F, N)
    mel = torch.matmul(filterbank.to(magnitude), magnitude)  # (B, C, n_mels, N)
    return safe_log(mel, clamp_eps).transpose(-1, -2)  # (B, C, N, n_mels)
