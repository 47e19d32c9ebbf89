"""SEANet encoder and decoder: EnCodec's generator.

Défossez et al. 2022, "High Fidelity Neural Audio Compression" (arXiv:2210.13438), section 3.1.
Defaults equal facebookresearch/encodec ``encodec/modules/seanet.py`` (n_filters 32, ratios
[8, 5, 4, 2], ELU, kernels 7/7/3, dilation base 2, compress 2, 2 LSTM layers, ``true_skip=False``
i.e. a 1x1 convolution as residual shortcut). The 24 kHz EnCodec model is ``causal=True,
norm="weight_norm"``, the 48 kHz one ``channels=2, causal=False, norm="time_layer_norm"``.

``model`` is an ``nn.Sequential`` with the official indices (per stage: residual blocks, ELU,
strided conv; the LSTM after the last stage of the encoder and after the first conv of the
decoder), so official keys differ only by one wrapper level and the weight-norm names;
:mod:`codecplatform.checkpoints.encodec` maps them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.nn.conv import ConvNorm, PadMode, StreamableConv1d, StreamableConvTranspose1d
from codecplatform.nn.lstm import StreamableLSTM
from codecplatform.nn.streaming import StreamingModule
from codecplatform.types import check_audio


class SEANetResnetBlock(StreamingModule):
    """Residual unit: shortcut(x) + conv1(ELU(conv_k(ELU(x)))), (B, D, T) -> (B, D, T).

    The inner convolution maps dim -> dim // compress with the given dilation, the 1x1
    convolution maps back. In streaming the two branches may lag each other (reflect padding
    waits for samples), so their outputs are buffered and only the common prefix is emitted.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        dilation: int = 1,
        activation_alpha: float = 1.0,
        norm: ConvNorm = "weight_norm",
        causal: bool = False,
        pad_mode: PadMode = "reflect",
        compress: int = 2,
        true_skip: bool = False,
    ) -> None:
        super().__init__()
        hidden = dim // compress

        def conv(c_in: int, c_out: int, k: int, d: int = 1) -> StreamableConv1d:
            return StreamableConv1d(c_in, c_out, k, dilation=d, norm=norm, causal=causal, pad_mode=pad_mode)

        self.block = nn.Sequential(
            nn.ELU(activation_alpha),
            conv(dim, hidden, kernel_size, dilation),
            nn.ELU(activation_alpha),
            conv(hidden, dim, 1),
        )
        self.shortcut: nn.Module = nn.Identity() if true_skip else conv(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, T) -> (B, D, T); in streaming, the samples both branches have completed."""
        skip, res = self.shortcut(x), self.block(x)
        if not self.is_streaming:
            return skip + res
        state = self.stream_state
        if "skip" in state:
            skip = torch.cat([state["skip"], skip], dim=-1)
            res = torch.cat([state["res"], res], dim=-1)
        n = min(skip.shape[-1], res.shape[-1])
        state["skip"], state["res"] = skip[..., n:], res[..., n:]
        return skip[..., :n] + res[..., :n]


def _check_config(ratios: Sequence[int], n_filters: int, compress: int) -> list[int]:
    """Validate the shared SEANet options and return ``ratios`` as a list of ints."""
    ratios = [int(r) for r in ratios]
    if not ratios or any(r < 1 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list of positive strides, got {ratios}")
    if n_filters < compress:
        raise ValueError(f"n_filters ({n_filters}) must be >= compress ({compress})")
    return ratios


class SEANetEncoder(Encoder):
    """EnCodec's SEANet encoder: (B, C, T) -> (B, D, ceil(T / hop_length)), hop = prod(ratios).

    ``ratios`` are given in decoder (upsampling) order, as in EnCodec; the encoder downsamples
    with ``reversed(ratios)``. ``true_skip=False`` (EnCodec's default) uses a 1x1 convolution as
    residual shortcut, ``True`` the identity. See the module docstring for the layer layout.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        n_residual_layers: int = 1,
        ratios: Sequence[int] = (8, 5, 4, 2),
        activation_alpha: float = 1.0,
        norm: ConvNorm = "weight_norm",
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = False,
        pad_mode: PadMode = "reflect",
        true_skip: bool = False,
        compress: int = 2,
        lstm_layers: int = 2,
    ) -> None:
        super().__init__()
        self.ratios = _check_config(ratios, n_filters, compress)
        self.channels = channels
        self.dimension = dimension
        self.hop_length = math.prod(self.ratios)

        def conv(c_in: int, c_out: int, k: int, stride: int = 1) -> StreamableConv1d:
            return StreamableConv1d(c_in, c_out, k, stride=stride, norm=norm, causal=causal, pad_mode=pad_mode)

        width = n_filters
        layers: list[nn.Module] = [conv(channels, width, kernel_size)]
        for stride in reversed(self.ratios):
            layers += [
                SEANetResnetBlock(
                    width,
                    kernel_size=residual_kernel_size,
                    dilation=dilation_base**j,
                    activation_alpha=activation_alpha,
                    norm=norm,
                    causal=causal,
                    pad_mode=pad_mode,
                    compress=compress,
                    true_skip=true_skip,
                )
                for j in range(n_residual_layers)
            ]
            layers += [nn.ELU(activation_alpha), conv(width, 2 * width, 2 * stride, stride)]
            width *= 2
        if lstm_layers:
            layers.append(StreamableLSTM(width, num_layers=lstm_layers))
        layers += [nn.ELU(activation_alpha), conv(width, dimension, last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, D, ceil(T / hop_length)).

        In streaming: the frames completed by this chunk, (B, D, n).
        """
        check_audio(x, self.channels)
        return self.model(x)


class SEANetDecoder(Decoder):
    """EnCodec's SEANet decoder: (B, D, T') -> (B, C, T' * hop_length), hop = prod(ratios).

    Mirrors :class:`SEANetEncoder` with transposed convolutions upsampling by ``ratios`` in the
    given order. ``trim_right_ratio`` decides where causal transposed convolutions trim their
    extra samples (1.0: all on the right, which is what makes streaming output immediate).
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 128,
        n_filters: int = 32,
        n_residual_layers: int = 1,
        ratios: Sequence[int] = (8, 5, 4, 2),
        activation_alpha: float = 1.0,
        norm: ConvNorm = "weight_norm",
        kernel_size: int = 7,
        last_kernel_size: int = 7,
        residual_kernel_size: int = 3,
        dilation_base: int = 2,
        causal: bool = False,
        pad_mode: PadMode = "reflect",
        true_skip: bool = False,
        compress: int = 2,
        lstm_layers: int = 2,
        trim_right_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        self.ratios = _check_config(ratios, n_filters, compress)
        self.channels = channels
        self.dimension = dimension
        self.hop_length = math.prod(self.ratios)

        def conv(c_in: int, c_out: int, k: int) -> StreamableConv1d:
            return StreamableConv1d(c_in, c_out, k, norm=norm, causal=causal, pad_mode=pad_mode)

        width = n_filters * 2 ** len(self.ratios)
        layers: list[nn.Module] = [conv(dimension, width, kernel_size)]
        if lstm_layers:
            layers.append(StreamableLSTM(width, num_layers=lstm_layers))
        for stride in self.ratios:
            layers += [
                nn.ELU(activation_alpha),
                StreamableConvTranspose1d(
                    width,
                    width // 2,
                    2 * stride,
                    stride,
                    causal=causal,
                    norm=norm,
                    trim_right_ratio=trim_right_ratio,
                ),
            ]
            width //= 2
            layers += [
                SEANetResnetBlock(
                    width,
                    kernel_size=residual_kernel_size,
                    dilation=dilation_base**j,
                    activation_alpha=activation_alpha,
                    norm=norm,
                    causal=causal,
                    pad_mode=pad_mode,
                    compress=compress,
                    true_skip=true_skip,
                )
                for j in range(n_residual_layers)
            ]
        layers += [nn.ELU(activation_alpha), conv(width, channels, last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, T') -> (B, C, T' * hop_length).

        In streaming: the samples completed by this chunk, (B, C, n).
        """
        if z.dim() != 3 or z.shape[1] != self.dimension:
            raise ValueError(f"z must be (batch, {self.dimension}, frames) latents, got shape {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"z must be a floating point tensor, got {z.dtype}")
        return self.model(z)
