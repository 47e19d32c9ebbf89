"""1D convolutions with EnCodec's padding rules, normalization choices and streaming.

Padding (per convolution, k_eff = (kernel_size - 1) * dilation + 1, s = stride):

* ``padding_total = k_eff - s``; non-causal: ``padding_total // 2`` on the right and the rest on
  the left; causal: everything on the left. Extra right padding completes the last window, so a
  signal of T samples gives exactly ``ceil(T / s)`` frames and a transposed convolution of the
  same stride brings them back to ``ceil(T / s) * s`` samples.
* Transposed convolutions produce ``T * s + (k - s)`` samples and trim ``k - s`` of them:
  non-causal ``(k - s) // 2`` on the right and the rest on the left; causal
  ``ceil((k - s) * trim_right_ratio)`` on the right and the rest on the left.

Normalization: ``"none"``, ``"weight_norm"`` (``torch.nn.utils.parametrizations.weight_norm``
on the weight; streamable) or ``"time_layer_norm"`` (``GroupNorm(1, C)`` after the convolution,
statistics over channels and time, as EnCodec's non-streamable models; not streamable).

Attribute layout (for checkpoint key maps): ``conv``/``convtr`` is the ``nn.Conv1d`` /
``nn.ConvTranspose1d`` (with weight norm its parameters are
``parametrizations.weight.original0`` = g and ``.original1`` = v), ``norm`` the ``GroupNorm`` or
an ``nn.Identity`` without parameters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from codecplatform.nn.streaming import StreamingModule

ConvNorm = Literal["none", "weight_norm", "time_layer_norm"]
PadMode = Literal["constant", "reflect", "replicate"]


def pad1d(x: Tensor, left: int, right: int, mode: str = "constant") -> Tensor:
    """Pad the last (time) axis; reflect also works on signals shorter than the padding.

    F.pad refuses to reflect more samples than the signal has, so in that case zeros are
    appended first, the reflection is taken, and the zeros are removed again (as EnCodec does).
    (..., T) -> (..., left + T + right).

    At inference (:func:`fast_paths_allowed`) reflection is written as copies into one
    preallocated tensor: equal to ``F.pad(mode="reflect")`` and several times faster on CPU.
    """
    if mode == "reflect":
        length = x.shape[-1]
        extra = max(left, right) - length + 1
        if extra > 0:
            padded = F.pad(F.pad(x, (0, extra)), (left, right), mode="reflect")
            return padded[..., : padded.shape[-1] - extra]
        if left == 0 and right == 0:
            return x
        if not fast_paths_allowed():
            return F.pad(x, (left, right), mode="reflect")
        out = x.new_empty(*x.shape[:-1], left + length + right)
        out[..., left : left + length] = x
        if left:
            out[..., :left] = x[..., 1 : left + 1].flip(-1)
        if right:
            out[..., left + length :] = x[..., length - 1 - right : length - 1].flip(-1)
        return out
    if left == 0 and right == 0:
        return x
    return F.pad(x, (left, right), mode=mode)


def fold_weight_norm(module: nn.Module) -> int:
    """Replace every weight-norm parametrization inside ``module`` by the plain weight it computes
    (``g * v / ||v||``), in place; returns how many were folded.

    For inference: the outputs are unchanged (up to float rounding) and no call recomputes the
    weight any more, but the state dict then holds ``weight`` instead of ``original0``/``original1``
    (fold after saving or checksumming, never before training).
    """
    from torch.nn.utils import parametrize

    folded = 0
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
            folded += 1
    return folded


#: Inputs with at most this many ``in_channels * kernel_size`` taps (the first convolution of an
#: encoder: 1 or 2 audio channels) are convolved as one matrix product over unfolded windows,
#: which is ~10x faster on CPU than oneDNN's direct convolution of so few input channels.
SMALL_INPUT_TAPS = 14
#: Transposed convolutions with at most this many input channels (the late, long decoder stages)
#: are computed as one matrix product and an overlap-add of ``kernel_size / stride`` shifted parts
#: (2-3x faster on CPU there; oneDNN wins on the short, wide early stages), and every short input
#: (streaming chunks of a few frames: one matrix-vector product with a cached weight).
MATMUL_TRANSPOSE_CHANNELS = 192


#: Convolutions with at most this many output (or transposed: input) frames per call, i.e. streaming
#: chunks, are one matrix product over unfolded windows with the batch folded into its columns: the
#: weights are read once per call for all streams of a batch (oneDNN pays its set-up per call there).
SHORT_FRAMES = 16


def _weight_matmul(weight: Tensor, x: Tensor) -> Tensor:
    """(O, I) @ (B, I, n) -> (B, O, n); short inputs of several streams as ONE matrix product."""
    batch, channels, n = x.shape
    if batch > 1 and n <= SHORT_FRAMES:
        y = torch.mm(weight, x.transpose(0, 1).reshape(channels, batch * n))  # (O, B * n)
        return y.view(-1, batch, n).transpose(0, 1)
    return torch.matmul(weight, x)


_ITEM_LENGTHS: ContextVar[tuple[Tensor, int] | None] = ContextVar("codecplatform_item_lengths", default=None)


@contextmanager
def item_lengths(lengths: Tensor, total: int) -> Iterator[None]:
    """Within the block, a padded batch carries items of ``lengths`` (B,) out of ``total`` steps
    (the time axis where the block starts): every convolution of this module (and :func:`mask_beyond`)
    zeroes each item's steps beyond its own length, scaled to its own time axis, so that with zero
    padding an item's outputs equal those of the item alone (see
    :mod:`codecplatform.models.batching`)."""
    token = _ITEM_LENGTHS.set((lengths, total))
    try:
        yield
    finally:
        _ITEM_LENGTHS.reset(token)


def steps_in_use(steps: int, device: torch.device) -> Tensor | None:
    """Inside :func:`item_lengths`: (B, 1, steps) bool, True on each item's own steps of a time axis
    of ``steps`` (``ceil(length * steps / total)``); None outside."""
    context = _ITEM_LENGTHS.get()
    if context is None:
        return None
    lengths, total = context
    own = (lengths.to(device) * steps + total - 1) // total  # (B,)
    return (torch.arange(steps, device=device) < own[:, None])[:, None, :]


def mask_beyond(x: Tensor) -> Tensor:
    """(B, C, T) with each item's steps beyond its length zeroed inside :func:`item_lengths`; else ``x``."""
    keep = steps_in_use(x.shape[-1], x.device)
    return x if keep is None else x * keep


def fast_paths_allowed() -> bool:
    """Whether the inference-only kernels below may replace the plain modules: no autograd (the
    training graph stays the standard one) and no tracing (torch.compile, torch.export and the
    ONNX exporters see the plain modules)."""
    if torch.is_grad_enabled():
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())  # both exporters trace


def _conv1d_small_input(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """``conv(x)`` (no padding) as unfold + matmul: (B, C_in, T) -> (B, C_out, n)."""
    (k,), (d,), (s,) = conv.kernel_size, conv.dilation, conv.stride
    span = (k - 1) * d + 1
    cols = x.unfold(-1, span, s)  # (B, C_in, n, span)
    if d > 1:
        cols = cols[..., ::d]
    batch, c_in, n, _ = cols.shape
    cols = cols.permute(0, 1, 3, 2).reshape(batch, c_in * k, n)  # (B, C_in * k, n)
    weight = conv.weight.reshape(conv.out_channels, c_in * k)
    if batch == 1:  # a plain matrix product (matmul would broadcast into a batched one)
        y = (torch.mm(weight, cols[0]) if conv.bias is None else torch.addmm(conv.bias[:, None], weight, cols[0]))[None]
        return y
    y = _weight_matmul(weight, cols)  # (B, C_out, n)
    if conv.bias is not None:
        y += conv.bias[:, None]
    return y


def _conv1d_pointwise(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """A 1x1 ``conv(x)`` as one matrix product: (B, C_in, T) -> (B, C_out, T)."""
    weight = conv.weight[:, :, 0]  # (C_out, C_in)
    if x.shape[0] == 1:
        y = torch.mm(weight, x[0]) if conv.bias is None else torch.addmm(conv.bias[:, None], weight, x[0])
        return y[None]
    y = _weight_matmul(weight, x)
    return y if conv.bias is None else y.add_(conv.bias[:, None])


def _conv_transpose1d_matmul(x: Tensor, convtr: nn.ConvTranspose1d, cache: dict | None = None) -> Tensor:
    """``convtr(x)`` for ``kernel_size = P * stride`` as one matmul and P shifted additions:
    (B, C_in, T) -> (B, C_out, (T + P - 1) * stride), the full (untrimmed) output. ``cache``: a
    dict that keeps the rearranged weight between calls (while the weight is unchanged)."""
    weight, bias = convtr.weight, convtr.bias  # (C_in, C_out, k)
    (k,), (s,) = convtr.kernel_size, convtr.stride
    c_in, c_out, parts = weight.shape[0], weight.shape[1], k // s
    batch, _, frames = x.shape
    # an inference tensor (a weight computed by weight norm inside inference_mode) has no version
    cacheable = cache is not None and not weight.requires_grad and not weight.is_inference()
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device) if cacheable else None
    if cacheable and cache.get("key") == key:
        w2 = cache["w2"]
    else:
        w2 = weight.permute(1, 2, 0).reshape(c_out * k, c_in)  # rows (C_out, part, phase)
        if cacheable:
            cache["key"], cache["w2"] = key, w2
    y = torch.mm(w2, x[0])[None] if batch == 1 else _weight_matmul(w2, x)
    y = y.view(batch, c_out, parts, s, frames)  # (B, C_out, P, s, T)
    out = x.new_empty(batch, c_out, frames + parts - 1, s)
    out[:, :, :frames] = y[:, :, 0].transpose(-1, -2)
    out[:, :, frames:] = 0
    for p in range(1, parts):
        out[:, :, p : p + frames] += y[:, :, p].transpose(-1, -2)
    out = out.view(batch, c_out, (frames + parts - 1) * s)
    if bias is not None:
        out += bias[:, None]
    return out


def _check_options(norm: str, pad_mode: str | None = None) -> None:
    if norm not in get_args(ConvNorm):
        raise ValueError(f"norm must be one of {get_args(ConvNorm)}, got {norm!r}")
    if pad_mode is not None and pad_mode not in get_args(PadMode):
        raise ValueError(f"pad_mode must be one of {get_args(PadMode)}, got {pad_mode!r}")


def _parametrize(conv: nn.Conv1d | nn.ConvTranspose1d, norm: str) -> nn.Module:
    return weight_norm(conv) if norm == "weight_norm" else conv


def _norm_module(norm: str, channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels) if norm == "time_layer_norm" else nn.Identity()


class StreamableConv1d(StreamingModule):
    """Conv1d with EnCodec padding: (B, C_in, T) -> (B, C_out, ceil(T / stride)).

    Streaming (causal only): the first chunk is left-padded like the whole signal (reflect
    padding needs ``padding_total + 1`` samples, so output starts once that many arrived); later
    chunks are appended to the unconsumed tail of the padded input; every complete window is
    emitted and the rest is kept. Over a stream whose length is a multiple of ``stride`` (and
    longer than ``padding_total``) the concatenated outputs equal the whole-signal output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        causal: bool = False,
        norm: ConvNorm = "none",
        pad_mode: PadMode = "reflect",
    ) -> None:
        super().__init__()
        _check_options(norm, pad_mode)
        self.kernel_size_eff = (kernel_size - 1) * dilation + 1
        if self.kernel_size_eff < stride:
            raise ValueError(
                f"effective kernel size {self.kernel_size_eff} is smaller than the stride {stride}:"
                " input samples would be skipped"
            )
        conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.conv = _parametrize(conv, norm)
        self.norm = _norm_module(norm, out_channels)
        self.out_channels = out_channels
        self.stride = stride
        self.causal = causal
        self.norm_type = norm
        self.pad_mode = pad_mode
        self.padding_total = self.kernel_size_eff - stride

    def check_streamable(self) -> None:
        if not self.causal:
            raise RuntimeError(
                "StreamableConv1d(causal=False) cannot stream: its padding looks into the future;"
                " build the model with causal=True"
            )
        if self.norm_type == "time_layer_norm":
            raise RuntimeError(
                "StreamableConv1d(norm='time_layer_norm') cannot stream: its statistics need the"
                " whole signal; use norm='weight_norm'"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) -> (B, C_out, ceil(T / stride)).

        In streaming: the frames completed by this chunk, (B, C_out, n).
        """
        if self.is_streaming:
            return self._forward_streaming(x)
        x = mask_beyond(x)
        extra = -x.shape[-1] % self.stride  # completes the last window (a traced Mod in ONNX export)
        if self.causal:
            left, right = self.padding_total, 0
        else:
            right = self.padding_total // 2
            left = self.padding_total - right
        if self.pad_mode == "constant" and left == right + extra and left and fast_paths_allowed():
            conv = self.conv  # symmetric zero padding inside the kernel: no padded copy of the input
            return self.norm(F.conv1d(x, conv.weight, conv.bias, conv.stride, left, conv.dilation, conv.groups))
        return self.norm(self._conv(pad1d(x, left, right + extra, self.pad_mode)))

    def _conv(self, x: Tensor) -> Tensor:
        """The convolution without padding; small inputs (:data:`SMALL_INPUT_TAPS`), short ones
        (:data:`SHORT_FRAMES`) and 1x1 convolutions as a matmul (at inference)."""
        conv = self.conv
        if conv.groups == 1 and x.shape[-1] >= self.kernel_size_eff and fast_paths_allowed():
            short = (x.shape[-1] - self.kernel_size_eff) // self.stride < SHORT_FRAMES  # streaming chunks
            if conv.in_channels * conv.kernel_size[0] <= SMALL_INPUT_TAPS or short:
                return _conv1d_small_input(x, conv)
            if conv.kernel_size[0] == 1 and conv.stride[0] == 1:  # PyTorch's slow_conv2d path otherwise
                return _conv1d_pointwise(x, conv)
        return conv(x)

    def _first_chunk_min(self) -> int:
        """Samples needed before the left padding of a stream can be computed."""
        if self.padding_total == 0 or self.pad_mode == "constant":
            return 0
        return self.padding_total + 1 if self.pad_mode == "reflect" else 1

    def _forward_streaming(self, x: Tensor) -> Tensor:
        state = self.stream_state
        if "buffer" in state:
            buffer = torch.cat([state["buffer"], x], dim=-1)
        else:
            head = torch.cat([state.pop("head"), x], dim=-1) if "head" in state else x
            if head.shape[-1] < self._first_chunk_min():
                state["head"] = head
                return x.new_zeros(x.shape[0], self.out_channels, 0)
            buffer = pad1d(head, self.padding_total, 0, self.pad_mode)
        n_frames = max(0, (buffer.shape[-1] - self.kernel_size_eff) // self.stride + 1)
        state["buffer"] = buffer[..., n_frames * self.stride :]
        if n_frames == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        used = (n_frames - 1) * self.stride + self.kernel_size_eff
        return self.norm(self._conv(buffer[..., :used]))


class StreamableConvTranspose1d(StreamingModule):
    """ConvTranspose1d with EnCodec trimming: (B, C_in, T) -> (B, C_out, T * stride).

    Streaming (causal only): each chunk of T frames emits T * stride samples; the last
    ``kernel_size - stride`` samples of its full output (without bias) are kept and added to the
    start of the next chunk's output. The first ``padding_left`` samples of the stream are
    dropped like in the whole-signal path; the right trim is simply never emitted, so the
    concatenated outputs equal the start of the whole-signal output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        bias: bool = True,
        causal: bool = False,
        norm: ConvNorm = "none",
        trim_right_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        _check_options(norm)
        if kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} must be >= stride {stride}")
        if not 0.0 <= trim_right_ratio <= 1.0:
            raise ValueError(f"trim_right_ratio must be in [0, 1], got {trim_right_ratio}")
        if not causal and trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        self.convtr = _parametrize(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, bias=bias), norm)
        self._weight_cache: dict = {}  # the matmul path's rearranged weight (inference only)
        self.norm = _norm_module(norm, out_channels)
        self.out_channels = out_channels
        self.stride = stride
        self.causal = causal
        self.norm_type = norm
        padding_total = kernel_size - stride
        if causal:
            self.padding_right = math.ceil(padding_total * trim_right_ratio)
        else:
            self.padding_right = padding_total // 2
        self.padding_left = padding_total - self.padding_right

    def check_streamable(self) -> None:
        if not self.causal:
            raise RuntimeError("StreamableConvTranspose1d(causal=False) cannot stream: build it with causal=True")
        if self.norm_type == "time_layer_norm":
            raise RuntimeError(
                "StreamableConvTranspose1d(norm='time_layer_norm') cannot stream: its statistics"
                " need the whole signal; use norm='weight_norm'"
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) -> (B, C_out, T * stride).

        In streaming: the samples completed by this chunk, (B, C_out, n).
        """
        if self.is_streaming:
            return self._forward_streaming(x)
        y = self.norm(self._convtr(mask_beyond(x)))  # (B, C_out, T * stride + kernel_size - stride)
        return y[..., self.padding_left : y.shape[-1] - self.padding_right]

    def _convtr(self, x: Tensor) -> Tensor:
        """The full transposed convolution; narrow inputs (:data:`MATMUL_TRANSPOSE_CHANNELS`) as a matmul."""
        convtr = self.convtr
        if (
            convtr.groups == 1
            and convtr.kernel_size[0] % convtr.stride[0] == 0
            and (convtr.in_channels <= MATMUL_TRANSPOSE_CHANNELS or x.shape[-1] <= SHORT_FRAMES)
            and convtr.padding == (0,)
            and convtr.output_padding == (0,)
            and convtr.dilation == (1,)
            and fast_paths_allowed()
        ):
            return _conv_transpose1d_matmul(x, convtr, self._weight_cache)
        return convtr(x)

    def _forward_streaming(self, x: Tensor) -> Tensor:
        state = self.stream_state
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        y = self._convtr(x)  # (B, C_out, T * stride + kernel_size - stride)
        if "tail" in state:
            n = state["tail"].shape[-1]
            y = torch.cat([y[..., :n] + state["tail"], y[..., n:]], dim=-1)
        n_out = x.shape[-1] * self.stride
        tail = y[..., n_out:]
        bias = self.convtr.bias
        state["tail"] = tail if bias is None else tail - bias[:, None]
        to_trim = state.get("to_trim", self.padding_left)
        cut = min(to_trim, n_out)
        state["to_trim"] = to_trim - cut
        return y[..., cut:n_out]
