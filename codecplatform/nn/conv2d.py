"""2D (time x frequency) layers that are causal in time and stream along it.

Layout: (B, C, T, F): time on axis 2, frequency on axis 3. Only the time axis streams; every chunk
carries all frequency bins. Padding follows google/sequence-layers as SpectroStream uses it
(magenta_rt/jax/spectrostream.py ``conv2d``; sequence-layers ``utils.convolution_explicit_padding``
and ``convolution.transpose_conv_explicit_padding``):

* convolution, time: causal = sequence-layers' 'semicausal': ``k_t - s_t`` frames on the left, and
  on the right only what completes the last window, so T frames give ``ceil(T / s_t)``;
  non-causal = 'same': ``(k_t - 1) // 2`` on the left, ``k_t - 1 - that`` on the right.
* convolution, frequency: ``max(k_f - s_f, 0)`` bins, ``// 2`` of them on the low side, the rest on
  the high side (F bins -> ``ceil(F / s_f)``).
* transposed convolution, time: causal keeps the first ``T * s_t`` frames of the full output (trims
  ``k_t - s_t`` at the end); non-causal trims ``(k_t - s_t) // 2`` at the start, the rest at the end.
* transposed convolution, frequency ('same'): trims ``(k_f - s_f) // 2`` bins at the low end and the
  rest at the high end (F -> ``F * s_f``).

All padding is zeros. Streaming (causal only), as :class:`codecplatform.nn.conv.StreamableConv1d`:
a convolution keeps the frames it cannot consume yet; a transposed convolution keeps the
overlapping tail of its output and adds it to the next chunk. Over a stream whose length is a
multiple of the stride the concatenated outputs equal the whole-signal output.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from codecplatform.nn.streaming import StreamingModule

Conv2dNorm = Literal["none", "weight_norm"]


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or any(v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or two positive ints (time, freq), got {value}")
    return pair  # type: ignore[return-value]


def _check_norm(norm: str) -> None:
    if norm not in get_args(Conv2dNorm):
        raise ValueError(f"norm must be one of {get_args(Conv2dNorm)}, got {norm!r}")


def _empty(x: Tensor, channels: int, freq: int) -> Tensor:
    return x.new_zeros(x.shape[0], channels, 0, freq)


class StreamableConv2d(StreamingModule):
    """Conv2d, causal (or 'same') in time and 'same' in frequency:
    (B, C_in, T, F) -> (B, C_out, ceil(T / s_t), ceil(F / s_f)).

    Parameters live in ``conv`` (an ``nn.Conv2d``; with weight norm its weight is
    ``conv.parametrizations.weight.original0`` = g (C_out, 1, 1, 1) and ``original1`` = v).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        causal: bool = True,
        norm: Conv2dNorm = "weight_norm",
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if self.kernel_size[0] < self.stride[0]:
            raise ValueError(f"time kernel {self.kernel_size[0]} is smaller than the time stride {self.stride[0]}")
        conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, bias=bias)
        self.conv = weight_norm(conv) if norm == "weight_norm" else conv
        self.out_channels = out_channels
        self.causal = causal
        k_t, k_f = self.kernel_size
        s_t, s_f = self.stride
        pad_f = max(k_f - s_f, 0)
        self.freq_padding = (pad_f // 2, pad_f - pad_f // 2)
        self.time_left = k_t - s_t if causal else (k_t - 1) // 2
        self.time_right = 0 if causal else k_t - 1 - (k_t - 1) // 2

    def check_streamable(self) -> None:
        if not self.causal:
            raise RuntimeError("StreamableConv2d(causal=False) cannot stream: its padding looks into the future")

    def _pad_freq(self, x: Tensor) -> Tensor:
        """(B, C, T, F) -> (B, C, T, F') padded so that ceil(F / s_f) windows fit."""
        low, high = self.freq_padding
        f = x.shape[-1]
        windows = -(-f // self.stride[1])
        needed = (windows - 1) * self.stride[1] + self.kernel_size[1]
        return F.pad(x, (low, max(high, needed - f - low)))[..., : max(needed, 0)]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, F) -> (B, C_out, ceil(T / s_t), ceil(F / s_f)); in streaming, the frames this
        chunk completes."""
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, T, F), got shape {tuple(x.shape)}")
        x = self._pad_freq(x)
        k_t, s_t = self.kernel_size[0], self.stride[0]
        if self.is_streaming:
            state = self.stream_state
            if "buffer" in state:
                buffer = torch.cat([state["buffer"], x], dim=2)
            else:
                buffer = F.pad(x, (0, 0, self.time_left, 0))
            n = max(0, (buffer.shape[2] - k_t) // s_t + 1)
            state["buffer"] = buffer[:, :, n * s_t :]
            freq_out = (x.shape[-1] - self.kernel_size[1]) // self.stride[1] + 1
            if n == 0:
                return _empty(x, self.out_channels, freq_out)
            return self.conv(buffer[:, :, : (n - 1) * s_t + k_t])
        t = x.shape[2]
        frames = -(-t // s_t)
        right = max(self.time_right, (frames - 1) * s_t + k_t - t - self.time_left)
        x = F.pad(x, (0, 0, self.time_left, right))
        return self.conv(x)[:, :, :frames]


class StreamableConvTranspose2d(StreamingModule):
    """ConvTranspose2d, causal (or 'same') in time, 'same' in frequency:
    (B, C_in, T, F) -> (B, C_out, T * s_t, F * s_f).

    With weight norm, g has one entry per *output* channel (``dim=1`` of the (C_in, C_out, k_t, k_f)
    weight).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        causal: bool = True,
        norm: Conv2dNorm = "weight_norm",
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_norm(norm)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        if any(k < s for k, s in zip(self.kernel_size, self.stride)):
            raise ValueError(f"kernel_size {self.kernel_size} must be >= stride {self.stride} on both axes")
        conv = nn.ConvTranspose2d(in_channels, out_channels, self.kernel_size, self.stride, bias=bias)
        self.convtr = weight_norm(conv, dim=1) if norm == "weight_norm" else conv
        self.out_channels = out_channels
        self.causal = causal
        extra_t = self.kernel_size[0] - self.stride[0]
        extra_f = self.kernel_size[1] - self.stride[1]
        self.time_trim = (0, extra_t) if causal else (extra_t // 2, extra_t - extra_t // 2)
        self.freq_trim = (extra_f // 2, extra_f - extra_f // 2)

    def check_streamable(self) -> None:
        if not self.causal:
            raise RuntimeError("StreamableConvTranspose2d(causal=False) cannot stream")

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T, F) -> (B, C_out, T * s_t, F * s_f); in streaming, the frames of this chunk."""
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, T, F), got shape {tuple(x.shape)}")
        low, high = self.freq_trim
        freq_out = x.shape[-1] * self.stride[1]
        if self.is_streaming:
            state = self.stream_state
            if x.shape[2] == 0:
                return _empty(x, self.out_channels, freq_out)
            y = self.convtr(x)[..., low : low + freq_out]  # (B, C_out, T * s_t + k_t - s_t, F * s_f)
            if "tail" in state:
                n = state["tail"].shape[2]
                y = torch.cat([y[:, :, :n] + state["tail"], y[:, :, n:]], dim=2)
            n_out = x.shape[2] * self.stride[0]
            tail = y[:, :, n_out:]
            bias = self.convtr.bias
            state["tail"] = tail if bias is None else tail - bias[:, None, None]
            return y[:, :, :n_out]
        y = self.convtr(x)
        start = self.time_trim[0]
        return y[:, :, start : start + x.shape[2] * self.stride[0], low : low + freq_out]


class CausalAvgPool2d(StreamingModule):
    """Average pooling with kernel = stride (s_t, s_f), no overlap: (B, C, T, F) ->
    (B, C, ceil(T / s_t), F // s_f). A last incomplete time window is zero-padded (sequence-layers
    'semicausal' with kernel = stride: no left padding)."""

    def __init__(self, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.stride = _pair(stride, "stride")

    def forward(self, x: Tensor) -> Tensor:
        s_t, s_f = self.stride
        if self.is_streaming:
            state = self.stream_state
            if "buffer" in state:
                x = torch.cat([state["buffer"], x], dim=2)
            n = x.shape[2] // s_t
            state["buffer"] = x[:, :, n * s_t :]
            if n == 0:
                return _empty(x, x.shape[1], x.shape[-1] // s_f)
            return F.avg_pool2d(x[:, :, : n * s_t], self.stride)
        pad = -x.shape[2] % s_t
        return F.avg_pool2d(F.pad(x, (0, 0, 0, pad)), self.stride)


class Upsample2d(nn.Module):
    """Nearest-neighbour upsampling by (s_t, s_f): (B, C, T, F) -> (B, C, T * s_t, F * s_f)
    (stateless, so it streams as is)."""

    def __init__(self, stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.stride = _pair(stride, "stride")

    def forward(self, x: Tensor) -> Tensor:
        return x.repeat_interleave(self.stride[0], dim=2).repeat_interleave(self.stride[1], dim=3)


class DropFirstFrames(StreamingModule):
    """Drops the first ``n`` time frames (sequence-layers ``Lookahead``): (B, C, T, F) -> (B, C, T - n, F);
    in streaming, the first ``n`` frames of the stream."""

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 0:
            raise ValueError(f"n (frames to drop) must be >= 0, got {n}")
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_streaming:
            return x[:, :, self.n :]
        state = self.stream_state
        left = state.get("to_drop", self.n)
        cut = min(left, x.shape[2])
        state["to_drop"] = left - cut
        return x[:, :, cut:]


class AlignedSum(StreamingModule):
    """``main(x) + shortcut(x)`` over time frames (axis 2). In streaming the two branches may emit
    different numbers of frames per chunk; the surplus of either is kept until the other catches up,
    so only frames both have completed are summed."""

    def __init__(self, main: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.main(x), self.shortcut(x)
        if not self.is_streaming:
            return a + b
        state = self.stream_state
        if "a" in state:
            a, b = torch.cat([state["a"], a], dim=2), torch.cat([state["b"], b], dim=2)
        n = min(a.shape[2], b.shape[2])
        state["a"], state["b"] = a[:, :, n:], b[:, :, n:]
        return a[:, :, :n] + b[:, :, :n]
