"""HiFi-GAN's multi-period discriminator (MPD) in DAC's configuration (DAC paper section 3.4).

Each period p looks at the waveform folded into a (T / p) x p image, so its (k, 1) convolutions
see every p-th sample: rows are time steps of the folded signal, columns are the p phases.
Layer facts follow the official ``dac/model/discriminator.py`` (class ``MPD``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.discriminators.base import ChannelFoldedDiscriminator
from codecplatform.discriminators.msstft import Conv2dNorm, _conv2d

Activation = Literal["leaky_relu", "silu"]


def _activation(activation: str, negative_slope: float) -> nn.Module:
    """LeakyReLU(negative_slope) (HiFi-GAN, DAC) or SiLU (MUFFIN); ValueError naming ``activation``."""
    if activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if activation == "silu":
        return nn.SiLU()
    raise ValueError(f"activation must be 'leaky_relu' or 'silu', got {activation!r}")


class PeriodDiscriminator(nn.Module):
    """One MPD period: mono audio (B, 1, T) -> logits (B, 1, H, p) and len(channels) feature maps.

    The signal is reflect-padded on the right to the next multiple of ``period`` (nothing when T
    already is one) and folded ``(B, 1, T') -> (B, 1, T' / p, p)``. Then, with LeakyReLU after
    each and the activations kept as feature maps:
      conv (kernel_size, 1), stride (stride, 1): 1 -> channels[0] -> ... -> channels[-2]
      conv (kernel_size, 1), stride 1: channels[-2] -> channels[-1]
    and the output conv (3, 1): channels[-1] -> 1 (the logits, no activation). All paddings are
    "same" ((k - 1) // 2 along time, 0 along the period axis), so each strided conv maps H rows to
    ceil(H / stride). Every conv gets ``norm`` (weight norm in DAC). ``activation``: LeakyReLU
    with ``negative_slope`` (DAC) or SiLU (MUFFIN). ``logits_in_features``: the logits are also
    the last feature map (HiFi-GAN's and MUFFIN's code match features on them too).
    """

    def __init__(
        self,
        period: int,
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.1,
        activation: Activation = "leaky_relu",
        logits_in_features: bool = False,
    ):
        super().__init__()
        channels = list(channels)
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
        if norm not in ("none", "weight_norm", "spectral_norm"):
            raise ValueError(f"norm must be 'none', 'weight_norm' or 'spectral_norm', got {norm!r}")
        self.period = period
        self.convs = nn.ModuleList()
        width = 1
        for i, out in enumerate(channels):
            layer_stride = (stride, 1) if i < len(channels) - 1 else (1, 1)
            self.convs.append(_conv2d(width, out, (kernel_size, 1), norm, stride=layer_stride))
            width = out
        self.conv_post = _conv2d(width, 1, (3, 1), norm)
        self.activation = _activation(activation, negative_slope)
        self.logits_in_features = logits_in_features

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, 1, T) -> (logits (B, 1, H, p), feature maps [(B, C_l, H_l, p)])."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"PeriodDiscriminator takes mono audio (B, 1, T), got shape {tuple(x.shape)}")
        length = x.shape[-1]
        if length < self.period:
            raise ValueError(f"x has {length} samples, period {self.period} needs at least {self.period}")
        # Official DAC pads period - T % period, a whole extra period when T is already a multiple;
        # HiFi-GAN (and this code) pad only what is missing.
        n_pad = -length % self.period
        if n_pad:
            x = F.pad(x, (0, n_pad), mode="reflect")
        batch = x.shape[0]
        z = x.reshape(batch, 1, -1, self.period)  # (B, 1, T') -> (B, 1, T'/p, p)
        features = []
        for conv in self.convs:
            z = self.activation(conv(z))
            features.append(z)
        logits = self.conv_post(z)
        if self.logits_in_features:
            features.append(logits)
        return logits, features


class MultiPeriodDiscriminator(ChannelFoldedDiscriminator):
    """DAC's MPD: (B, C, T) -> one logits tensor per period.

    Channels are processed separately with shared weights: (B, C, T) is folded to (B*C, 1, T), so
    logits and features have batch B*C (folded index b * C + c). With ``normalize_input`` each
    channel first goes through ``remove_dc_and_normalize_peak`` (DAC's ``Discriminator.preprocess``,
    which DAC applies before all its sub-discriminators; set it on the MRD too to match DAC).

    Defaults are DAC's (= HiFi-GAN's): periods 2, 3, 5, 7, 11; channels 32, 128, 512, 1024, 1024;
    kernel (5, 1), stride (3, 1) except the last (5, 1) conv (stride 1); output conv (3, 1);
    LeakyReLU 0.1; weight norm. 8,221,154 parameters per period, 41,105,770 for five. MUFFIN's MPD
    is this one with ``activation="silu"``, ``logits_in_features=True``, ``normalize_input=False``.

    Output: ``DiscriminatorOutput(logits=[(B*C, 1, H_p, p)], features=[[(B*C, ch_l, H_pl, p)]
    * len(channels)], names=[f"{name}_{p}"])`` with H_p0 = ceil(T / p) rows before the convs.
    """

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11),
        channels: Sequence[int] = (32, 128, 512, 1024, 1024),
        kernel_size: int = 5,
        stride: int = 3,
        norm: Conv2dNorm = "weight_norm",
        negative_slope: float = 0.1,
        normalize_input: bool = True,
        name: str = "mpd",
        activation: Activation = "leaky_relu",
        logits_in_features: bool = False,
    ):
        super().__init__()
        periods = list(periods)
        if not periods:
            raise ValueError("periods: give at least one period")
        if len(set(periods)) != len(periods):
            raise ValueError(f"periods must be distinct (they name the sub-discriminators), got {periods}")
        self.periods = periods
        self.scales = periods
        self.normalize_input = normalize_input
        self.name = name
        self.discriminators = nn.ModuleList(
            PeriodDiscriminator(
                period=p,
                channels=channels,
                kernel_size=kernel_size,
                stride=stride,
                norm=norm,
                negative_slope=negative_slope,
                activation=activation,
                logits_in_features=logits_in_features,
            )
            for p in periods
        )

    def min_length(self) -> tuple[int, str]:
        return max(self.periods), "the largest period"
