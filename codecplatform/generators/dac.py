"""DAC (Improved RVQGAN, Kumar et al. 2023) encoder and decoder.

Structure as descript-audio-codec ``dac/model/dac.py`` (the released 44/24/16 kHz models):
weight-normed convolutions, Snake activations with a learnable per-channel ``alpha``, residual
units with kernel 7 and dilations 1, 3, 9. Official configurations (``conf/final/*.yml``)::

    44.1 kHz  encoder d_model 64, strides [2, 4, 8, 8] (hop 512, 86 Hz), latent 1024,
              decoder_dim 1536, rates [8, 8, 4, 2]; 9 codebooks
    24 kHz    strides [2, 4, 5, 8] (hop 320, 75 Hz), rates [8, 5, 4, 2]; otherwise as 44.1 kHz;
              32 codebooks
    16 kHz    strides [2, 4, 5, 8] (hop 320, 50 Hz), rates [8, 5, 4, 2]; otherwise as 44.1 kHz;
              12 codebooks (same generator as 24 kHz)

Parameters (measured; weight-norm g counted, as in the official state dict): 44.1 kHz encoder
22,307,968, decoder 54,104,162 (paper: 22M + 54M; with the 9-codebook quantizer, 239,760 more,
76,651,890 against the paper's 76M); 24/16 kHz encoder 21,521,536, decoder 52,334,690.

Module layout (``Encoder.block`` / ``Decoder.model`` are ``nn.Sequential`` like the official ones;
n = len(strides) = len(rates); every "conv" is a :class:`StreamableConv1d`, every "convtr" a
:class:`StreamableConvTranspose1d`, both with ``norm="weight_norm"`` and zero padding)::

    DACEncoder.block
      0            conv     channels -> d_model, k7
      1 + i        DACEncoderBlock(dim = d_model * 2**(i+1), stride = strides[i]), i = 0..n-1
                     .block.0/1/2  DACResidualUnit(dim // 2, dilation 1 / 3 / 9)
                     .block.3      Snake1d(dim // 2)
                     .block.4      conv  dim // 2 -> dim, kernel 2 s, stride s
      n + 1        Snake1d(d_model * 2**n)
      n + 2        conv     d_model * 2**n -> dimension, k3

    DACDecoder.model
      0            conv     dimension -> decoder_dim, k7
      1 + i        DACDecoderBlock(decoder_dim // 2**i -> decoder_dim // 2**(i+1), rates[i])
                     .block.0      Snake1d(in)
                     .block.1      convtr in -> out, kernel 2 s, stride s
                     .block.2/3/4  DACResidualUnit(out, dilation 1 / 3 / 9)
      n + 1        Snake1d(decoder_dim // 2**n)
      n + 2        conv     decoder_dim // 2**n -> channels, k7
      n + 3        Tanh

    DACResidualUnit.block = [Snake1d(dim), conv dim -> dim k7 dilation d, Snake1d(dim),
                             conv dim -> dim k1]; output = x + block(x)

Key map from an official checkpoint (``state_dict`` of ``dac.DAC``; the released weights use the
old ``torch.nn.utils.weight_norm`` names ``weight_g``/``weight_v``). Module paths are equal; only
a convolution gains one wrapper level (``conv`` or ``convtr``) and the weight-norm names change::

    encoder.P.weight_g -> P.conv.parametrizations.weight.original0    (g)
    encoder.P.weight_v -> P.conv.parametrizations.weight.original1    (v)
    encoder.P.bias     -> P.conv.bias
    encoder.P.alpha    -> P.alpha                                     (Snake, unchanged)
    decoder.P.*        -> same rules on DACDecoder, but for the transposed convolutions
                          P = model.{1..n}.block.1 the wrapper is ``convtr``
                          (``model.1.block.1.weight_g -> model.1.block.1.convtr.parametrizations
                          .weight.original0``)

e.g. ``encoder.block.1.block.0.block.1.weight_v -> block.1.block.0.block.1.conv.parametrizations
.weight.original1``, ``encoder.block.6.bias -> block.6.conv.bias``, ``decoder.model.5.alpha ->
model.5.alpha``. Newer official code (``torch.nn.utils.parametrizations.weight_norm``) already
writes ``P.parametrizations.weight.original0/1``: only ``.conv``/``.convtr`` is inserted. Shapes
are equal: g is (C_out, 1, 1) for a convolution and (C_in, 1, 1) for a transposed one (weight norm
over dim 0 in both libraries). Quantizer keys (``quantizer.*``) are not part of this module.

Lengths. The official model right-pads the audio with zeros to a multiple of the hop
(``DAC.preprocess``) before the encoder; :class:`DACEncoder` does that itself, so any T gives
exactly ``ceil(T / hop)`` frames, identical to the official encoder on the padded signal. Our
convolution wrappers pad ``k_eff - s`` in total, ``ceil`` of half on the left; the official
convolutions pad ``ceil(s/2)`` (strided) or ``3 d`` (k7) on both sides. The left padding is the
same, and on a multiple of the stride the official extra right padding never completes a window,
so the encoder's outputs are identical (a stride of 1, in no official configuration, gives
``T + 1`` samples there and ``T`` here). In the decoder the official transposed convolution
(``padding=ceil(s/2)``) yields ``T s + s - 2 ceil(s/2)`` samples: ``T s`` for even strides but
``T s - 1`` for odd ones (the 24/16 kHz stride 5), so the official 24 kHz decoder returns
``320 T' - 8`` samples. Ours trims ``ceil(s/2)`` on the left too and ``floor(s/2)`` on the right,
so each block returns exactly ``T s`` samples (at an odd stride: the official ones plus one at
the end); the decoder returns exactly ``T' * hop`` samples. With only even rates (44.1 kHz) the
two decoders are identical; with rates [8, 5, 4, 2] the outputs agree except in the last ~370
samples (the receptive field of the extra samples, measured on a 20-frame input), and the
official output is 8 samples shorter.

Initialisation: PyTorch defaults, with the biases of (non-transposed) convolutions set to zero.
That is what the official ``init_weights`` effectively does: its ``trunc_normal_`` writes into
the weight that weight norm recomputes from g and v at every call, so only ``bias = 0`` persists.

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
    ``DAC.preprocess``). See the module docstring for the layer layout and official key map.
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

    Width halves at each rate: decoder_dim -> decoder_dim // 2**len(rates); ends with tanh. See
    the module docstring for the layer layout, the official key map and the one-sample length
    difference of the official decoder at odd rates.
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
