"""DAC's multi-band multi-scale complex STFT discriminator ("MRD" in the official code; paper 3.4).

Per window length, the complex STFT (real and imaginary parts as two channels, laid out
(B, 2, frames, freq) as in ``msstft.py``) is split along frequency into bands; each band has its
own conv stack, the band outputs are concatenated along frequency again and one output conv
gives the logits. Layer and STFT facts follow the official ``dac/model/discriminator.py``
(class ``MRD``) and ``audiotools.AudioSignal.stft`` (descript-audiotools 0.7.x, which DAC pins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.discriminators.base import ChannelFoldedDiscriminator
from codecplatform.discriminators.msstft import Conv2dNorm, _conv2d
from codecplatform.dsp.spectral import stft

BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def stride_matched_stft(x: Tensor, window: Tensor, hop_length: int) -> Tensor:
    """Complex STFT whose frames line up with a conv of stride ``hop_length``: (B, C, T) -> (B, C, F, N).

    N = ceil(T / hop_length), F = len(window) // 2 + 1; no normalization. This is audiotools'
    ``AudioSignal.stft`` with ``match_stride=True``: reflect-pad (W - H) // 2 on the left and
    (W - H) // 2 + (N * H - T) on the right, run a centered (reflect) STFT, and drop the frames that
    the padding added, equally on both sides. audiotools only allows H = W // 4 and then drops two
    frames on each side, which is what this does for every window length divisible by 8.
    Needs T >= W (so the reflect padding fits).
    """
    window_length = window.shape[-1]
    length = x.shape[-1]
    if not 1 <= hop_length <= window_length:
        raise ValueError(f"hop_length must be in [1, {window_length}], got {hop_length}")
    if length < window_length:
        raise ValueError(f"x has {length} samples, the STFT window needs at least {window_length}")
    n_frames = math.ceil(length / hop_length)
    pad = (window_length - hop_length) // 2
    right_pad = n_frames * hop_length - length
    x = F.pad(x, (pad, pad + right_pad), mode="reflect")
    spec = stft(x, n_fft=window_length, hop_length=hop_length, window=window, center=True)  # (B, C, F, N')
    drop = (spec.shape[-1] - n_frames) // 2
    return spec[..., drop : drop + n_frames]


def band_bins(n_bins: int, bands: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Fractions of the frequency axis -> bin ranges [lo, hi): ``int(fraction * n_bins)`` as DAC."""
    edges = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]
    for (lo, hi), (b_lo, b_hi) in zip(bands, edges):
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"each band must satisfy 0 <= lo < hi <= 1, got {(lo, hi)}")
        if b_hi <= b_lo:
            raise ValueError(f"band {(lo, hi)} has no frequency bin out of {n_bins}")
    return edges


class BandSTFTDiscriminator(nn.Module):
    """One MRD window length: mono audio (B, 1, T) -> logits (B, 1, N, F') and 5 * len(bands) feature maps.

    STFT: periodic Hann window of ``window_length``, n_fft = window_length, hop =
    int(window_length * hop_factor), ``stride_matched_stft`` framing (N = ceil(T / hop)), no
    normalization; computed in float32 with autocast off. Frequency bins F = window_length // 2 + 1
    are split by ``band_bins``. Per band (LeakyReLU after each conv; the activations are the
    feature maps, band by band):
      conv kernel_size, 2 -> channels
      3 x conv kernel_size, stride (1, 2), channels -> channels
      conv (3, 3), channels -> channels
    Band outputs (each ceil(width / 8) bins wide) are concatenated along frequency into F', and the
    output conv (3, 3) channels -> 1 gives the logits (no activation). "Same" padding everywhere
    ((1, 4) for (3, 9), (1, 1) for (3, 3)); every conv gets ``norm`` (weight norm in DAC).

    Keep bands >= 9 bins wide under CPU bf16 autocast: torch 2.11's CPU bf16 conv2d returns
    garbage (sometimes NaN) for a stride-2 conv with an output 1 wide. DAC's smallest band has 25.
    """

    def __init__(
        self,
        window_length: int,
        hop_factor: float = 0.25,
        bands: Sequence[tuple[float, float]] = BANDS,
        channels: int = 32,
        kernel_size: tuple[int, int] = (3, 9),
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.1,
    ):
        super().__init__()
        hop_length = int(window_length * hop_factor)
        if window_length < 2 or not 1 <= hop_length <= window_length:
            raise ValueError(
                f"window_length must be >= 2 and hop_factor={hop_factor} must give a hop in "
                f"[1, window_length], got window_length={window_length}"
            )
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if len(kernel_size) != 2 or any(k < 1 for k in kernel_size):
            raise ValueError(f"kernel_size must be two positive ints (time, freq), got {kernel_size}")
        if norm not in ("none", "weight_norm", "spectral_norm"):
            raise ValueError(f"norm must be 'none', 'weight_norm' or 'spectral_norm', got {norm!r}")
        self.window_length = window_length
        self.hop_length = hop_length
        self.bands = band_bins(window_length // 2 + 1, list(bands))
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)

        def band_stack() -> nn.ModuleList:
            return nn.ModuleList(
                [
                    _conv2d(2, channels, kernel_size, norm),
                    *(_conv2d(channels, channels, kernel_size, norm, stride=(1, 2)) for _ in range(3)),
                    _conv2d(channels, channels, (3, 3), norm),
                ]
            )

        self.band_convs = nn.ModuleList(band_stack() for _ in self.bands)
        self.conv_post = _conv2d(channels, 1, (3, 3), norm)
        self.activation = nn.LeakyReLU(negative_slope)

    def spectrogram(self, x: Tensor) -> Tensor:
        """(B, 1, T) -> float32 (B, 2, N, F): real and imaginary parts, frames before bins."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = stride_matched_stft(x.float(), self.window.float(), self.hop_length)  # (B, 1, F, N)
        return torch.cat([spec.real, spec.imag], dim=1).transpose(-1, -2)  # (B, 2, F, N) -> (B, 2, N, F)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, T) -> (logits (B, 1, N, F'), feature maps [(B, channels, N, F_bl)])."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"BandSTFTDiscriminator takes mono audio (B, 1, T), got shape {tuple(x.shape)}")
        spec = self.spectrogram(x)
        features, outputs = [], []
        for (lo, hi), stack in zip(self.bands, self.band_convs):
            z = spec[..., lo:hi]  # (B, 2, N, hi - lo)
            for conv in stack:
                z = self.activation(conv(z))
                features.append(z)
            outputs.append(z)
        z = torch.cat(outputs, dim=-1)  # (B, channels, N, F')
        return self.conv_post(z), features


class MultiBandSTFTDiscriminator(ChannelFoldedDiscriminator):
    """DAC's multi-band multi-scale complex STFT discriminator: (B, C, T) -> one logits tensor per window.

    Channels are processed separately with shared weights: (B, C, T) is folded to (B*C, 1, T), so
    logits and features have batch B*C (folded index b * C + c). With ``normalize_input`` each
    channel first goes through ``remove_dc_and_normalize_peak`` (DAC's ``Discriminator.preprocess``).

    Defaults are DAC's: windows 2048, 1024, 512, hop window / 4, bands at fractions 0, 0.1, 0.25,
    0.5, 0.75, 1 of the bins, 32 channels, LeakyReLU 0.1, weight norm: 471,330 parameters per
    window, 1,413,990 for three. Needs T >= max(window_lengths).

    Output: ``DiscriminatorOutput(logits=[(B*C, 1, N_w, F_w')], features=[[(B*C, channels, N_w,
    F_wbl)] * 5 * len(bands)], names=[f"{name}_{w}"])`` with N_w = ceil(T / hop_w).
    """

    def __init__(
        self,
        window_lengths: Sequence[int] = (2048, 1024, 512),
        hop_factor: float = 0.25,
        bands: Sequence[tuple[float, float]] = BANDS,
        channels: int = 32,
        kernel_size: tuple[int, int] = (3, 9),
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.1,
        normalize_input: bool = True,
        name: str = "mrd",
    ):
        super().__init__()
        window_lengths = list(window_lengths)
        if not window_lengths:
            raise ValueError("window_lengths: give at least one window length")
        if len(set(window_lengths)) != len(window_lengths):
            raise ValueError(
                f"window_lengths must be distinct (they name the sub-discriminators), got {window_lengths}"
            )
        self.window_lengths = window_lengths
        self.scales = window_lengths
        self.normalize_input = normalize_input
        self.name = name
        self.discriminators = nn.ModuleList(
            BandSTFTDiscriminator(
                window_length=w,
                hop_factor=hop_factor,
                bands=bands,
                channels=channels,
                kernel_size=kernel_size,
                norm=norm,
                negative_slope=negative_slope,
            )
            for w in window_lengths
        )

    def min_length(self) -> tuple[int, str]:
        return max(self.window_lengths), "the largest STFT window (window_lengths)"
