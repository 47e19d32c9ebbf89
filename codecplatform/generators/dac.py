"""DAC encoder and decoder (Kumar et al. 2023, "High-Fidelity Audio Compression with Improved RVQGAN").

Follows descript-audio-codec ``dac/model/dac.py``: weight-normed convolutions, Snake with a
learnable per-channel ``alpha``, residual units of kernel 7 and dilations 1, 3, 9. Released
configurations (``conf/final/*.yml``): d_model 64, latent 1024, decoder_dim 1536; 44.1 kHz strides
[2, 4, 8, 8] / rates [8, 8, 4, 2] (hop 512); 24 and 16 kHz strides [2, 4, 5, 8] / rates
[8, 5, 4, 2] (hop 320). Parameters: 44.1 kHz encoder 22.3M, decoder 54.1M (paper: 22M + 54M).
Module paths equal the official ones but each convolution gains one wrapper level (``.conv`` or
``.convtr``); :mod:`codecplatform.checkpoints.dac` maps the keys.

Lengths: the encoder right-pads to a multiple of the hop (as ``DAC.preprocess``), so any T gives
``ceil(T / hop)`` frames, identical to the official encoder. Each decoder block returns exactly
``T s`` samples; the official transposed convolution (``padding=ceil(s/2)``) returns ``T s - 1`` at
an odd stride, so the official 24/16 kHz decoder returns ``320 T' - 8`` samples and ours
``320 T'``: equal except in the last few hundred samples. At even rates (44.1 kHz) the two match.

Initialisation: PyTorch defaults with zero conv biases; the official ``init_weights`` writes a
weight that weight norm recomputes from g and v, so only ``bias = 0`` persists.

Non-causal only: the convolutions refuse :func:`codecplatform.nn.streaming.streaming`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.nn.conv import StreamableConv1d, StreamableConvTranspose1d
from codecplatform.nn.snake import Snake1d
from codecplatform.types import check_audio

RESIDUAL_DILATIONS = (1, 3, 9)


def _wn_conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> StreamableConv1d:
    """Weight-normed, zero-padded, non-causal conv: (B, c_in, T) -> (B, c_out, ceil(T / stride)).

    The bias starts at zero (see the module docstring on initialisation).
    """
    conv = StreamableConv1d(
        c_in,
        c_out,
        kernel_size,
        stride=stride,
        dilation=dilation,
        norm="weight_norm",
        pad_mode="constant",
    )
    nn.init.zeros_(conv.conv.bias)
    return conv


def _wn_conv_transpose(c_in: int, c_out: int, stride: int) -> StreamableConvTranspose1d:
    """Weight-normed transposed conv, kernel 2 s: (B, c_in, T) -> (B, c_out, T * stride)."""
    return StreamableConvTranspose1d(c_in, c_out, 2 * stride, stride, norm="weight_norm")


def _positive_ints(values: Sequence[int], name: str) -> list[int]:
    values = [int(v) for v in values]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive strides, got {values}")
    return values


class DACResidualUnit(nn.Module):
    """x + conv1(snake(conv7_dilated(snake(x)))): (B, D, T) -> (B, D, T).

    With these paddings both branches have the same length; should they ever differ (e.g. a
    variant with unpadded convolutions), the input is center-cropped to the branch, as the
    official unit does.
    """

    def __init__(self, dim: int, dilation: int = 1, kernel_size: int = 7) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            _wn_conv(dim, dim, kernel_size, dilation=dilation),
            Snake1d(dim),
            _wn_conv(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T)."""
        y = self.block(x)
        crop = x.shape[-1] - y.shape[-1]
        if crop:
            x = x[..., crop // 2 : crop // 2 + y.shape[-1]]
        return x + y


class DACEncoderBlock(nn.Module):
    """Residual units at ``dim // 2`` then a strided conv: (B, dim/2, T) -> (B, dim, ceil(T/s))."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            *(DACResidualUnit(half, dilation=d) for d in RESIDUAL_DILATIONS),
            Snake1d(half),
            _wn_conv(half, dim, 2 * stride, stride=stride),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACDecoderBlock(nn.Module):
    """Transposed conv then residual units: (B, in, T) -> (B, out, T * stride)."""

    def __init__(self, input_dim: int, output_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(input_dim),
            _wn_conv_transpose(input_dim, output_dim, stride),
            *(DACResidualUnit(output_dim, dilation=d) for d in RESIDUAL_DILATIONS),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DACEncoder(Encoder):
    """DAC encoder: (B, C, T) -> (B, D, ceil(T / hop_length)), hop_length = prod(strides).

    The width doubles at each stride: d_model -> d_model * 2**len(strides). ``dimension=None``
    takes the official default latent size ``d_model * 2**len(strides)`` (1024 for the released
    models). The input is right-padded with zeros to a multiple of the hop (as the official
    ``DAC.preprocess``).
    """

    def __init__(
        self,
        channels: int = 1,
        d_model: int = 64,
        strides: Sequence[int] = (2, 4, 8, 8),
        dimension: int | None = None,
    ) -> None:
        super().__init__()
        self.strides = _positive_ints(strides, "strides")
        self.channels = channels
        self.d_model = d_model
        width = d_model * 2 ** len(self.strides)
        self.dimension = width if dimension is None else dimension
        self.hop_length = math.prod(self.strides)

        layers: list[nn.Module] = [_wn_conv(channels, d_model, 7)]
        for i, stride in enumerate(self.strides):
            layers.append(DACEncoderBlock(d_model * 2 ** (i + 1), stride))
        layers += [Snake1d(width), _wn_conv(width, self.dimension, 3)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, D, ceil(T / hop_length))."""
        check_audio(x, self.channels)
        if x.shape[-1] == 0:
            raise ValueError("x has no samples")
        x = F.pad(x, (0, -x.shape[-1] % self.hop_length))  # (B, C, T) -> (B, C, T'*hop)
        return self.block(x)


class DACDecoder(Decoder):
    """DAC decoder: (B, D, T') -> (B, C, T' * hop_length), hop_length = prod(rates), in [-1, 1].

    Width halves at each rate: decoder_dim -> decoder_dim // 2**len(rates); ends with tanh. At
    odd rates the official decoder is shorter (see the module docstring).
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 1024,
        decoder_dim: int = 1536,
        rates: Sequence[int] = (8, 8, 4, 2),
    ) -> None:
        super().__init__()
        self.rates = _positive_ints(rates, "rates")
        if decoder_dim // 2 ** len(self.rates) < 1:
            raise ValueError(
                f"decoder_dim {decoder_dim} is halved {len(self.rates)} times: it must be at least"
                f" {2 ** len(self.rates)}"
            )
        self.channels = channels
        self.dimension = dimension
        self.decoder_dim = decoder_dim
        self.hop_length = math.prod(self.rates)

        layers: list[nn.Module] = [_wn_conv(dimension, decoder_dim, 7)]
        for i, stride in enumerate(self.rates):
            layers.append(DACDecoderBlock(decoder_dim // 2**i, decoder_dim // 2 ** (i + 1), stride))
        width = decoder_dim // 2 ** len(self.rates)
        layers += [Snake1d(width), _wn_conv(width, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, T') -> (B, C, T' * hop_length)."""
        if z.dim() != 3 or z.shape[1] != self.dimension:
            raise ValueError(f"z must be (batch, {self.dimension}, frames) latents, got shape {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"z must be a floating point tensor, got {z.dtype}")
        return self.model(z)
