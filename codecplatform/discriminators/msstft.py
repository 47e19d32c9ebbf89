"""EnCodec's multi-scale STFT (MS-STFT) discriminator (paper section 3.4, Figure 2).

Each scale looks at the complex STFT of the audio, real and imaginary parts as two input
channels, laid out (B, 2, frames, freq) so time is the first spatial axis (the axis that is
dilated) and frequency the second (the axis that is strided).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from codecplatform.discriminators.base import ChannelFoldedDiscriminator
from codecplatform.dsp.spectral import stft

Conv2dNorm = Literal["none", "weight_norm", "spectral_norm"]


def _same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Padding that keeps a stride-1 output the size of the input (exact for odd kernels)."""
    return ((kernel_size[0] - 1) * dilation[0] // 2, (kernel_size[1] - 1) * dilation[1] // 2)


def _conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: tuple[int, int],
    norm: Conv2dNorm,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> nn.Module:
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        dilation=dilation,
        padding=_same_padding(kernel_size, dilation),
    )
    if norm == "weight_norm":
        return weight_norm(conv)
    if norm == "spectral_norm":
        return spectral_norm(conv)
    return conv


class STFTDiscriminator(nn.Module):
    """One MS-STFT scale: mono audio (B, 1, T) -> logits (B, 1, N, F') and 2 + len(dilations) feature maps.

    N = 1 + (T - n_fft) // hop_length frames (no centering, as audiocraft), F = n_fft // 2 + 1
    bins, F' = F reduced by the frequency stride of each dilated conv.

    Layers (LeakyReLU after each but the last; the feature maps are those activations):
      conv kernel_size, 2 -> filters
      per dilation d: conv kernel_size, time dilation d, ``stride`` (frequency stride 2)
      conv (k0, k0)
      output conv (k0, k0) -> 1 channel (the logits)
    Channel widths grow by ``filters_scale`` per dilated conv, capped at ``max_filters``. Every
    conv gets ``norm`` (the paper applies weight norm to the discriminator; audiocraft's code leaves
    the first conv unnormalized), except the first one when ``first_conv_norm`` is given (None: ``norm``;
    ``"none"``: audiocraft's and MUFFIN's code).
    """

    def __init__(
        self,
        n_fft: int,
        hop_length: int,
        filters: int = 32,
        kernel_size: tuple[int, int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: tuple[int, int] = (1, 2),
        filters_scale: int = 1,
        max_filters: int = 1024,
        normalized: bool = True,
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.2,
        first_conv_norm: Conv2dNorm | None = None,
    ):
        super().__init__()
        if len(kernel_size) != 2 or any(k < 1 for k in kernel_size):
            raise ValueError(f"kernel_size must be two positive ints (time, freq), got {kernel_size}")
        if len(stride) != 2 or any(s < 1 for s in stride):
            raise ValueError(f"stride must be two positive ints (time, freq), got {stride}")
        if norm not in ("none", "weight_norm", "spectral_norm"):
            raise ValueError(f"norm must be 'none', 'weight_norm' or 'spectral_norm', got {norm!r}")
        if first_conv_norm not in (None, "none", "weight_norm", "spectral_norm"):
            raise ValueError(
                f"first_conv_norm must be None, 'none', 'weight_norm' or 'spectral_norm', got {first_conv_norm!r}"
            )
        if filters < 1 or filters_scale < 1 or max_filters < 1:
            raise ValueError(
                f"filters, filters_scale and max_filters must be >= 1, got {filters}, {filters_scale}, {max_filters}"
            )
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.normalized = normalized
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        k0 = kernel_size[0]
        self.convs = nn.ModuleList()
        width = min(filters, max_filters)
        self.convs.append(_conv2d(2, width, kernel_size, norm if first_conv_norm is None else first_conv_norm))
        for i, d in enumerate(dilations):
            out = min(filters_scale ** (i + 1) * filters, max_filters)
            self.convs.append(_conv2d(width, out, kernel_size, norm, stride=stride, dilation=(d, 1)))
            width = out
        out = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        self.convs.append(_conv2d(width, out, (k0, k0), norm))
        self.conv_post = _conv2d(out, 1, (k0, k0), norm)
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, T) -> (logits (B, 1, N, F'), feature maps [(B, C_l, N, F_l)])."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"STFTDiscriminator takes mono audio (B, 1, T), got shape {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = stft(
                x.float(),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window.float(),
                center=False,
                normalized=self.normalized,
            )  # (B, 1, F, N) complex
        z = torch.cat([spec.real, spec.imag], dim=1).transpose(-1, -2)  # (B, 2, F, N) -> (B, 2, N, F)
        features = []
        for conv in self.convs:
            z = self.activation(conv(z))
            features.append(z)
        return self.conv_post(z), features


class MultiScaleSTFTDiscriminator(ChannelFoldedDiscriminator):
    """EnCodec MS-STFT discriminator: (B, C, T) -> one logits tensor per STFT scale.

    Scale i runs ``STFTDiscriminator`` with n_fft = win = ``n_ffts[i]`` and hop =
    ``n_ffts[i] // hop_divisor`` (Hann window, normalized by its L2 norm like torchaudio when
    ``normalized``). Channels are processed separately with shared weights (the paper's stereo
    recipe): (B, C, T) is folded to (B*C, 1, T), so logits and features have batch B*C.

    Defaults are the paper's: windows [2048, 1024, 512, 256, 128] (double them at 48 kHz), 32
    filters, time dilations 1, 2, 4, frequency stride 2. The paper states a 3x8 first kernel; the
    official code uses (3, 9) for every kernel (odd, so "same" padding is symmetric), as here.
    audiocraft's EnCodec configs set ``negative_slope=0.3``. MUFFIN: n_ffts [1024, 2048, 512, 256, 128],
    32 filters, LeakyReLU 0.2, ``first_conv_norm="none"`` (its code, like audiocraft's).

    Output: ``DiscriminatorOutput(logits=[(B*C, 1, N_i, F_i')], features=[[(B*C, ch, N_i, F_il)]
    * (2 + len(dilations))], names=[f"{name}_{n_fft}"])``.
    """

    def __init__(
        self,
        filters: int = 32,
        n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128),
        hop_divisor: int = 4,
        kernel_size: tuple[int, int] = (3, 9),
        dilations: Sequence[int] = (1, 2, 4),
        stride: tuple[int, int] = (1, 2),
        filters_scale: int = 1,
        max_filters: int = 1024,
        normalized: bool = True,
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.2,
        name: str = "msstft",
        first_conv_norm: Conv2dNorm | None = None,
    ):
        super().__init__()
        n_ffts = list(n_ffts)
        if not n_ffts:
            raise ValueError("n_ffts: give at least one STFT size")
        if len(set(n_ffts)) != len(n_ffts):
            raise ValueError(f"n_ffts must be distinct (they name the sub-discriminators), got {n_ffts}")
        if hop_divisor < 1 or any(n < 2 or n // hop_divisor < 1 for n in n_ffts):
            raise ValueError(
                f"n_ffts must be >= 2 and hop_divisor={hop_divisor} must leave a hop of at least one "
                f"sample for each of {n_ffts}"
            )
        self.n_ffts = n_ffts
        self.scales = n_ffts
        self.name = name
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(
                n_fft=n,
                hop_length=n // hop_divisor,
                filters=filters,
                kernel_size=kernel_size,
                dilations=dilations,
                stride=stride,
                filters_scale=filters_scale,
                max_filters=max_filters,
                normalized=normalized,
                norm=norm,
                negative_slope=negative_slope,
                first_conv_norm=first_conv_norm,
            )
            for n in n_ffts
        )

    def min_length(self) -> tuple[int, str]:
        return max(self.n_ffts), "the largest STFT (n_ffts)"
