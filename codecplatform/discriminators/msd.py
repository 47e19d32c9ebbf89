"""HiFi-GAN's multi-scale discriminator (MSD) as MUFFIN configures it (official ``muffin/losses.py``,
``MultiScaleDiscriminator`` / ``DiscriminatorS``): SiLU activations instead of HiFi-GAN's LeakyReLU.

Scale i sees the waveform average-pooled i times (``AvgPool1d(4, stride 2, padding 2)`` each, so
roughly 1/2**i of the rate); the first scale's convolutions are spectrally normalized, the others
weight-normed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

from codecplatform.discriminators.base import ChannelFoldedDiscriminator
from codecplatform.discriminators.mpd import Activation, _activation

Conv1dNorm = Literal["none", "weight_norm", "spectral_norm"]


def _conv1d(c_in: int, c_out: int, kernel_size: int, stride: int, groups: int, norm: str) -> nn.Module:
    """Conv1d with "same"-style padding (k - 1) // 2 and the given parametrized norm."""
    conv = nn.Conv1d(c_in, c_out, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups)
    if norm == "weight_norm":
        return weight_norm(conv)
    if norm == "spectral_norm":
        return spectral_norm(conv)
    return conv


class ScaleDiscriminator(nn.Module):
    """One MSD scale: mono audio (B, 1, T) -> logits (B, 1, T_L) and feature maps.

    The input is average-pooled ``downsample`` times (kernel 4, stride 2, padding 2); then per layer
    l a conv ``kernel_sizes[l]``, ``strides[l]``, ``groups[l]``: channels[l-1] -> channels[l]
    (channels[-1] = 1 input channel), each followed by the activation and kept as a feature map; then
    the output conv k3: channels[-1] -> 1 (the logits, also the last feature map when
    ``logits_in_features``, as the official code). Every conv gets ``norm``; padding (k - 1) // 2.
    """

    def __init__(
        self,
        downsample: int = 0,
        channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024),
        kernel_sizes: Sequence[int] = (15, 41, 41, 41, 41, 41, 5),
        strides: Sequence[int] = (1, 2, 2, 4, 4, 1, 1),
        groups: Sequence[int] = (1, 4, 16, 16, 16, 16, 1),
        norm: Conv1dNorm = "weight_norm",
        activation: Activation = "silu",
        negative_slope: float = 0.1,
        logits_in_features: bool = True,
    ):
        super().__init__()
        channels, kernel_sizes, strides, groups = (list(v) for v in (channels, kernel_sizes, strides, groups))
        if downsample < 0:
            raise ValueError(f"downsample (number of average poolings) must be >= 0, got {downsample}")
        if not channels or not len(channels) == len(kernel_sizes) == len(strides) == len(groups):
            raise ValueError(
                "channels, kernel_sizes, strides and groups must be non-empty and of equal length, got "
                f"{len(channels)}, {len(kernel_sizes)}, {len(strides)}, {len(groups)}"
            )
        if any(v < 1 for v in channels + kernel_sizes + strides + groups):
            raise ValueError("channels, kernel_sizes, strides and groups must all be >= 1")
        if norm not in ("none", "weight_norm", "spectral_norm"):
            raise ValueError(f"norm must be 'none', 'weight_norm' or 'spectral_norm', got {norm!r}")
        self.downsample = downsample
        self.convs = nn.ModuleList()
        width = 1
        for layer, (out, k, s, g) in enumerate(zip(channels, kernel_sizes, strides, groups)):
            if width % g or out % g:
                raise ValueError(f"groups[{layer}]={g} must divide the layer's {width} inputs and {out} outputs")
            self.convs.append(_conv1d(width, out, k, s, g, norm))
            width = out
        self.conv_post = _conv1d(width, 1, 3, 1, 1, norm)
        self.activation = _activation(activation, negative_slope)
        self.logits_in_features = logits_in_features

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, T) -> (logits (B, 1, T_L), feature maps [(B, C_l, T_l)])."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"ScaleDiscriminator takes mono audio (B, 1, T), got shape {tuple(x.shape)}")
        for _ in range(self.downsample):
            x = F.avg_pool1d(x, 4, 2, padding=2)  # (B, 1, T) -> (B, 1, T // 2 + 1)
        features = []
        for conv in self.convs:
            x = self.activation(conv(x))
            features.append(x)
        logits = self.conv_post(x)
        if self.logits_in_features:
            features.append(logits)
        return logits, features


class MultiScaleDiscriminator(ChannelFoldedDiscriminator):
    """MSD: (B, C, T) -> one logits tensor per scale, named ``f"{name}_{2**i}"`` (i poolings).

    Defaults are MUFFIN's: 3 scales, the first with spectral norm (``first_norm``), the others
    ``norm`` (weight norm); HiFi-GAN's layers (channels 128, 128, 256, 512, 1024, 1024, 1024; kernels
    15, 41 x 5, 5; strides 1, 2, 2, 4, 4, 1, 1; groups 1, 4, 16, 16, 16, 16, 1); SiLU; the logits
    are also the last feature map. Channels are processed separately with shared weights
    ((B, C, T) -> (B*C, 1, T)); ``normalize_input`` as for the MPD (off for MUFFIN).
    """

    def __init__(
        self,
        n_scales: int = 3,
        channels: Sequence[int] = (128, 128, 256, 512, 1024, 1024, 1024),
        kernel_sizes: Sequence[int] = (15, 41, 41, 41, 41, 41, 5),
        strides: Sequence[int] = (1, 2, 2, 4, 4, 1, 1),
        groups: Sequence[int] = (1, 4, 16, 16, 16, 16, 1),
        first_norm: Conv1dNorm = "spectral_norm",
        norm: Conv1dNorm = "weight_norm",
        activation: Activation = "silu",
        negative_slope: float = 0.1,
        logits_in_features: bool = True,
        normalize_input: bool = False,
        name: str = "msd",
    ):
        super().__init__()
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        self.scales = [2**i for i in range(n_scales)]
        self.normalize_input = normalize_input
        self.name = name
        self.discriminators = nn.ModuleList(
            ScaleDiscriminator(
                downsample=i,
                channels=channels,
                kernel_sizes=kernel_sizes,
                strides=strides,
                groups=groups,
                norm=first_norm if i == 0 else norm,
                activation=activation,
                negative_slope=negative_slope,
                logits_in_features=logits_in_features,
            )
            for i in range(n_scales)
        )

    def min_length(self) -> tuple[int, str]:
        return 1, "the multi-scale discriminator"
