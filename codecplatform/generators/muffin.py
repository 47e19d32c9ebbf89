"""MUFFIN encoder and decoder: 24 kHz mono, 512-d latents.

Ng et al. 2024, "MUFFIN: Multi-band Frequency Reconstruction for Neural Psychoacoustic Coding";
structure as the official dianwen-ng/MUFFIN ``muffin/model.py`` (``Encoder``, ``Generator``,
``ResBlock1``), configurations from ``egs/configs/config_24k_*.json``::

    frame rate   encoder strides    kernels           decoder rates     MBS scales
    75 Hz        2, 4, 5, 8         4, 8, 11, 16      8, 5, 4, 2        4, 2, 1, 1
    12.5 Hz      3, 5, 8, 16        7, 11, 16, 32     16, 8, 5, 3       4, 4, 2, 2, 1, 1, 1, 1
    6.25 Hz      4, 5, 12, 16       8, 11, 24, 32     16, 12, 5, 4      4, 4, 2, 2, 1, 1, 1, 1

Kernel rule of every official config: ``2 s`` for an even stride, ``2 s + 1`` for an odd one
(:func:`kernel_for_stride`); ``kernel_sizes`` overrides it. Every conv is weight-normed and
zero-padded "same", every activation the modified snake, each stage is a multi-receptive-field
block (:class:`MuffinResBlock`, GRN) plus a grouped inverted bottleneck. MRF dilations: (1, 3, 3, 5)
in every 1024-code config (the default), (1, 3, 5) in config_24k_512codes_75hz. Attribute names
are the official ones (``conv_pre``, ``downs``/``ups``, ``resblocks``, ``resblock_post``,
``conv_post``), so official keys map as for DAC (``.conv``/``.convtr`` inserted). Parameters at
75 Hz: encoder 34.2M, decoder 11.9M.

With the official weights (converted as above) the outputs are the official ones
(``tests/generators/test_muffin_golden.py``).

Lengths: the official ``(k - s) // 2`` padding equals our symmetric ``k - s`` split under this
kernel rule, so on a multiple of the hop the outputs are the official ones; the encoder
right-pads to a multiple of the hop (any T gives ``ceil(T / hop)`` frames) and the decoder
returns exactly ``T' * hop`` samples.

Initialisation: PyTorch defaults (the official ``init_weights`` writes into the weight that
weight norm recomputes from g and v, so it has no lasting effect).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.generators.base import Decoder, Encoder
from codecplatform.nn.conv import StreamableConv1d, StreamableConvTranspose1d
from codecplatform.nn.grn import GRN
from codecplatform.nn.snake import ModifiedSnake1d
from codecplatform.types import check_audio


def kernel_for_stride(stride: int) -> int:
    """The official configs' kernel for a (transposed) strided conv: 2 s (even s), 2 s + 1 (odd s)."""
    return 2 * stride if stride % 2 == 0 else 2 * stride + 1


def _wn_conv(c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Module:
    """Weight-normed, zero-padded, non-causal conv: (B, c_in, T) -> (B, c_out, ceil(T / stride))."""
    return StreamableConv1d(
        c_in,
        c_out,
        kernel_size,
        stride=stride,
        dilation=dilation,
        groups=groups,
        norm="weight_norm",
        pad_mode="constant",
    )


def _positive_ints(values: Sequence[int], name: str) -> list[int]:
    values = [int(v) for v in values]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {values}")
    return values


def _kernels(strides: list[int], kernel_sizes: Sequence[int] | None, name: str) -> list[int]:
    if kernel_sizes is None:
        return [kernel_for_stride(s) for s in strides]
    kernels = _positive_ints(kernel_sizes, name)
    if len(kernels) != len(strides):
        raise ValueError(f"{name} has {len(kernels)} entries for {len(strides)} strides")
    for k, s in zip(kernels, strides):
        if k < s or (k - s) % 2:
            raise ValueError(f"{name}: kernel {k} for stride {s} must be >= the stride with k - s even")
    return kernels


def _check_groups(widths: list[int], groups: int) -> None:
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    bad = [c for c in widths if c % groups]
    if bad:
        raise ValueError(f"groups={groups} must divide every stage width, not {bad} (stage widths {widths})")


class MuffinResBlock(nn.Module):
    """One multi-receptive-field branch (official ``ResBlock1``): (B, C, T) -> (B, C, T).

    For each dilation d: ``x = x + conv(C/2 -> C, k)(snake(conv(C -> C/2, k, dilation d)(snake(x))))``;
    then GRN. The output includes the input (the stage adds the branch mean to x once more).
    """

    def __init__(self, channels: int, kernel_size: int = 3, dilations: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"channels must be >= 2 (the branch halves them), got {channels}")
        half = channels // 2
        dilations = _positive_ints(dilations, "dilations")
        self.convs1 = nn.ModuleList(
            nn.Sequential(ModifiedSnake1d(channels), _wn_conv(channels, half, kernel_size, dilation=d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Sequential(ModifiedSnake1d(half), _wn_conv(half, channels, kernel_size)) for _ in dilations
        )
        self.norm = GRN(channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T)."""
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(c1(x))
        return self.norm(x)


def _bottleneck(channels: int, groups: int, expansion: int) -> nn.Sequential:
    """Inverted bottleneck (without its residual): GRN -> grouped conv k7 C -> eC -> snake ->
    grouped conv k7 eC -> C: (B, C, T) -> (B, C, T)."""
    wide = channels * expansion
    return nn.Sequential(
        GRN(channels),
        _wn_conv(channels, wide, 7, groups=groups),
        ModifiedSnake1d(wide),
        _wn_conv(wide, channels, 7, groups=groups),
    )


class _MuffinStages(nn.Module):
    """The shared stage loop of encoder and decoder (attributes set by the subclasses)."""

    resamplers: nn.ModuleList
    resblocks: nn.ModuleList
    resblock_post: nn.ModuleList
    num_kernels: int

    def _build_stages(
        self,
        widths: list[int],
        kernel_sizes: Sequence[int],
        dilations: Sequence[int],
        groups: int,
        expansion: int,
    ) -> tuple[nn.ModuleList, nn.ModuleList]:
        """Res blocks (flat) and bottlenecks for stages of the given output widths."""
        kernels = _positive_ints(kernel_sizes, "resblock_kernel_sizes")
        if expansion < 1:
            raise ValueError(f"expansion must be >= 1, got {expansion}")
        resblocks = nn.ModuleList(MuffinResBlock(c, k, dilations) for c in widths for k in kernels)
        posts = nn.ModuleList(_bottleneck(c, groups, expansion) for c in widths)
        return resblocks, posts

    def _stage(self, i: int, x: Tensor) -> Tensor:
        """Stage i after its resampling conv: MRF mean then inverted bottleneck, (B, C, T) -> (B, C, T)."""
        k = self.num_kernels
        xs = self.resblocks[i * k](x)
        for j in range(1, k):
            xs = xs + self.resblocks[i * k + j](x)
        x = x + xs / k
        return x + self.resblock_post[i](x)


class MuffinEncoder(Encoder, _MuffinStages):
    """MUFFIN encoder: (B, C, T) -> (B, D, ceil(T / hop_length)), hop_length = prod(strides).

    Args:
        channels: audio channels (MUFFIN: 1).
        d_model: width after ``conv_pre`` (official: hidden_dims / 2**len(strides) = 32); doubles at
            each stride.
        strides: from the audio side (75 Hz: 2, 4, 5, 8).
        kernel_sizes: per stride; None: :func:`kernel_for_stride`.
        dimension: latent size D (None: ``d_model * 2**len(strides)``, 512 officially).
        resblock_kernel_sizes: kernels of the multi-receptive-field branches (3, 7, 11).
        resblock_dilations: dilations inside each branch (1024-code configs (1, 3, 3, 5); 512-code (1, 3, 5)).
        groups: groups of the bottleneck convs (32); must divide every stage width.
        expansion: bottleneck expansion (3).
    """

    def __init__(
        self,
        channels: int = 1,
        d_model: int = 32,
        strides: Sequence[int] = (2, 4, 5, 8),
        kernel_sizes: Sequence[int] | None = None,
        dimension: int | None = None,
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilations: Sequence[int] = (1, 3, 3, 5),
        groups: int = 32,
        expansion: int = 3,
    ) -> None:
        super().__init__()
        if channels < 1 or d_model < 1:
            raise ValueError(f"channels and d_model must be >= 1, got {channels}, {d_model}")
        self.strides = _positive_ints(strides, "strides")
        self.kernel_sizes = _kernels(self.strides, kernel_sizes, "kernel_sizes")
        widths = [d_model * 2 ** (i + 1) for i in range(len(self.strides))]
        _check_groups(widths, groups)
        self.channels = channels
        self.d_model = d_model
        self.dimension = widths[-1] if dimension is None else int(dimension)
        if self.dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {self.dimension}")
        self.hop_length = math.prod(self.strides)
        self.num_kernels = len(resblock_kernel_sizes)

        self.conv_pre = _wn_conv(channels, d_model, 7)
        self.downs = nn.ModuleList(
            nn.Sequential(ModifiedSnake1d(c // 2), _wn_conv(c // 2, c, k, stride=s))
            for c, k, s in zip(widths, self.kernel_sizes, self.strides)
        )
        self.resblocks, self.resblock_post = self._build_stages(
            widths, resblock_kernel_sizes, resblock_dilations, groups, expansion
        )
        self.conv_post = nn.Sequential(ModifiedSnake1d(widths[-1]), _wn_conv(widths[-1], self.dimension, 7))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, D, ceil(T / hop_length)); the input is right-padded with zeros to a
        multiple of the hop."""
        check_audio(x, self.channels)
        if x.shape[-1] == 0:
            raise ValueError("x has no samples")
        x = F.pad(x, (0, -x.shape[-1] % self.hop_length))  # (B, C, T) -> (B, C, T' * hop)
        x = self.conv_pre(x)
        for i, down in enumerate(self.downs):
            x = self._stage(i, down(x))
        return self.conv_post(x)


class MuffinDecoder(Decoder, _MuffinStages):
    """MUFFIN decoder: (B, D, T') -> (B, C, T' * hop_length) in [-1, 1], hop_length = prod(rates).

    Args:
        channels: audio channels (1).
        dimension: latent size D (512).
        decoder_dim: width after ``conv_pre`` (None: ``dimension``, as officially); halves at each rate.
        rates: from the latent side (75 Hz: 8, 5, 4, 2).
        kernel_sizes: per rate; None: :func:`kernel_for_stride`.
        resblock_kernel_sizes, resblock_dilations, groups, expansion: as :class:`MuffinEncoder`.
    """

    def __init__(
        self,
        channels: int = 1,
        dimension: int = 512,
        decoder_dim: int | None = None,
        rates: Sequence[int] = (8, 5, 4, 2),
        kernel_sizes: Sequence[int] | None = None,
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
        resblock_dilations: Sequence[int] = (1, 3, 3, 5),
        groups: int = 32,
        expansion: int = 3,
    ) -> None:
        super().__init__()
        if channels < 1 or dimension < 1:
            raise ValueError(f"channels and dimension must be >= 1, got {channels}, {dimension}")
        self.rates = _positive_ints(rates, "rates")
        self.kernel_sizes = _kernels(self.rates, kernel_sizes, "kernel_sizes")
        width = dimension if decoder_dim is None else int(decoder_dim)
        if width // 2 ** len(self.rates) < 1:
            raise ValueError(
                f"decoder_dim {width} is halved {len(self.rates)} times: it must be at least {2 ** len(self.rates)}"
            )
        widths = [width // 2 ** (i + 1) for i in range(len(self.rates))]
        _check_groups(widths, groups)
        self.channels = channels
        self.dimension = dimension
        self.decoder_dim = width
        self.hop_length = math.prod(self.rates)
        self.num_kernels = len(resblock_kernel_sizes)

        self.conv_pre = _wn_conv(dimension, width, 7)
        inputs = [width] + widths[:-1]
        self.ups = nn.ModuleList(
            nn.Sequential(ModifiedSnake1d(c_in), StreamableConvTranspose1d(c_in, c_out, k, r, norm="weight_norm"))
            for c_in, c_out, k, r in zip(inputs, widths, self.kernel_sizes, self.rates)
        )
        self.resblocks, self.resblock_post = self._build_stages(
            widths, resblock_kernel_sizes, resblock_dilations, groups, expansion
        )
        self.conv_post = nn.Sequential(ModifiedSnake1d(widths[-1]), _wn_conv(widths[-1], channels, 7))

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, T') -> (B, C, T' * hop_length)."""
        if z.dim() != 3 or z.shape[1] != self.dimension:
            raise ValueError(f"z must be (batch, {self.dimension}, frames) latents, got shape {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"z must be a floating point tensor, got {z.dtype}")
        x = self.conv_pre(z)
        for i, up in enumerate(self.ups):
            x = self._stage(i, up(x))
        return torch.tanh(self.conv_post(x))
