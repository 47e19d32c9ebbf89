"""SpectroStream encoder and decoder (Li et al. 2025, "SpectroStream: A Versatile Neural Codec for
General Audio"): a 2D time-frequency codec.

Written from the paper and from the layout of magenta/magenta-realtime
``magenta_rt/jax/spectrostream.py`` (config ``stft_spectrostream_40ms_generic_48khz_stereo_config``;
that code is inference only and refuses weight norm, which the paper trains with); with its weights
converted, ours gives its outputs (``tests/generators/test_spectrostream_golden.py``).

Encoder, (B, C, T) audio -> (B, D, ceil(T / hop)) latents, hop = prod(time strides) * stft_hop::

    STFT (frame 960, hop 480, reverse-causal framing, DC kept, Nyquist dropped)
                                  (B, 2C, N, 480), channels [L.re, L.im, R.re, R.im]
    fold channels into batch      (B*C, 2, N, 480)        -- per channel, shared weights --
    base conv 7x7, 2 -> 32        (no pre-activation: the network's first layer)
    block i < fusion_block:       residual unit i (below)
    fusion: concatenate L, R      (B, C*W, N', F')        -- joint from here --
    block i >= fusion_block:      residual unit i (input C*W at the fusion block)
    bottleneck: residual unit 256 -> 256, stride (1, 1)
    flatten (F'=5 bins x 256)     (B, 1280, T')
    out = 1x1(1280 -> D) + [ELU, 1x1(1280 -> 1280), ELU, 1x1(1280 -> D)]

Encoder residual unit (in -> out, stride (s_t, s_f)): ``main`` = ELU, 3x3 conv in -> in, ELU,
conv in -> out with kernel (max(3, 2 s_t), max(3, 2 s_f)) and the stride; ``shortcut`` = average
pool (stride) when strided, then a 1x1 conv when in != out (identity when neither).

Real config (``ratios``/``mults`` official): blocks enc0..enc6 with strides (1,2) (1,2) (1,3) (1,2)
(1,2) (2,2) (2,1) and widths 32 -> 64 -> 64 -> 128 -> 128 -> 128 -> 256 | fusion | 512 -> 256;
480 bins / 96 = 5, 100 Hz / 4 = 25 Hz, D = 256.

Decoder, (B, D, T') -> (B, C, T' * hop), the mirror::

    z padded with ``lookahead`` zero frames at the end (offline; see streaming below)
    in = 1x1(D -> F'*W) + [1x1(D -> F'*W), ELU, 1x1(F'*W -> F'*W)]; reshape (B, W=512, T', F'=5)
    joint: unit 512 -> 512 stride (1, 1) (two 3x3 convs), then the mirrors of the joint encoder
    blocks; the mirror of the fusion block outputs C*W channels: dec0 512 -> 1024, stride (2, 1)
    split into L, R                (B*C, 512, N/2, 5)     -- per channel, shared weights --
    mirrors of the remaining blocks: 512 -> 256 (2,2) -> 256 (1,2) -> 256 (1,2) -> 128 (1,3)
                                     -> 128 (1,2) -> 64 (1,2)
    ELU, conv 7x7 64 -> 2 (no weight norm, as the official output layer)
    drop the first lookahead * prod(time strides) frames (the look-ahead), unfold to (B, 2C, N, 480)
    inverse STFT (causal overlap-add, dual window)

Decoder (transposed) unit (in -> out, stride): ``main`` = ELU, transposed conv in -> out, kernel
(max(3, 2 s_t), max(3, 2 s_f)), stride (or a 3x3 conv when stride is (1, 1)), ELU, 3x3 conv
out -> out; ``shortcut`` = 1x1 conv when in != out, then nearest upsampling when strided.

Look-ahead and latency: the decoder's output for embedding j is made when embedding j + 1 is in
(``lookahead`` = 1 embedding), so the architectural latency is two embeddings, 80 ms at 48 kHz
(:func:`architectural_latency_ms`). The reverse-causal analysis STFT also looks
``frame_length - hop`` samples (10 ms) past each embedding; the paper's 80 ms does not count it
(``architectural_latency_ms(..., include_stft_lookahead=True)`` gives 90 ms).

Streaming: every time-axis layer is a :class:`codecplatform.nn.streaming.StreamingModule`, so
``with streaming(encoder): ...`` works chunk by chunk. Because of the look-ahead, a stream must be
*flushed* to give every frame the offline path gives: feed the encoder ``encoder.stream_flush_samples``
zeros (480) after the signal and the decoder ``decoder.stream_flush_frames`` zero latent frames (1)
after the latents; then the outputs equal the offline outputs (signal lengths multiple of hop).

The real config has about 9.3M encoder and 35.7M decoder parameters, as the official model; its
codebooks (64 x 1024 x 256) are the quantizer's EMA buffers, not parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from codecplatform.dsp.stft2d import dual_window, frame_signal, frames_from_spectrum, hann_window, spectrum_from_frames
from codecplatform.generators.base import Decoder, Encoder
from codecplatform.nn.conv2d import (
    AlignedSum,
    CausalAvgPool2d,
    Conv2dNorm,
    DropFirstFrames,
    StreamableConv2d,
    StreamableConvTranspose2d,
    Upsample2d,
)
from codecplatform.nn.streaming import StreamingModule
from codecplatform.types import check_audio

OFFICIAL_RATIOS: list[tuple[int, int]] = [(1, 2), (1, 2), (1, 3), (1, 2), (1, 2), (2, 2), (2, 1)]
OFFICIAL_MULTS: list[float] = [2, 1, 2, 1, 1, 2, 1]


# -- STFT front end as streaming modules -------------------------------------------------------------
class STFTAnalysis(StreamingModule):
    """Audio (B, C, T) -> (B, 2C, ceil(T / hop), fft_length // 2) with :mod:`codecplatform.dsp.stft2d`
    (reverse-causal framing). In streaming, the frames whose ``frame_length`` samples have all
    arrived; the rest of the samples wait in the state (so a stream lags ``frame_length - hop``
    samples behind and must be flushed with that many zeros)."""

    def __init__(self, frame_length: int, hop_length: int, fft_length: int, keep_dc: bool = True) -> None:
        super().__init__()
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.fft_length = fft_length
        self.keep_dc = keep_dc
        self.register_buffer("window", hann_window(frame_length), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_streaming:
            frames = frame_signal(x, self.frame_length, self.hop_length, "reverse_causal")  # (B, C, N, L)
        else:
            state = self.stream_state
            if "buffer" in state:
                x = torch.cat([state["buffer"], x], dim=-1)
            n = max(0, (x.shape[-1] - self.frame_length) // self.hop_length + 1)
            state["buffer"] = x[..., n * self.hop_length :]
            frames = (
                x.unfold(-1, self.frame_length, self.hop_length)[:, :, :n]
                if n
                else x.new_zeros(x.shape[0], x.shape[1], 0, self.frame_length)
            )
        return spectrum_from_frames(frames, self.window.to(x.dtype), self.fft_length, self.keep_dc)


class STFTSynthesis(StreamingModule):
    """(B, 2C, N, fft_length // 2) -> audio (B, C, N * hop): inverse FFT, dual window, causal
    overlap-add. In streaming, each frame completes ``hop`` samples; the frame's overlapping tail
    is kept and added to the next one (identical to the offline output)."""

    def __init__(self, frame_length: int, hop_length: int, fft_length: int, keep_dc: bool = True) -> None:
        super().__init__()
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.fft_length = fft_length
        self.keep_dc = keep_dc
        self.register_buffer("window", dual_window(hann_window(frame_length), hop_length), persistent=False)

    def forward(self, spec: Tensor) -> Tensor:
        frames = frames_from_spectrum(spec, self.window, self.fft_length, self.keep_dc)  # (B, C, N, L)
        b, c, n, length = frames.shape
        hop = self.hop_length
        if self.is_streaming and "tail" in self.stream_state:
            tail = self.stream_state["tail"]  # (B, C, L - hop)
        else:
            tail = frames.new_zeros(b, c, length - hop)
        # Overlap-add frame by frame block: out block t = frame t head + what earlier frames left.
        parts = []
        pending = tail
        for t in range(n):
            frame = frames[:, :, t]
            frame = torch.cat([frame[..., : length - hop] + pending, frame[..., length - hop :]], dim=-1)
            parts.append(frame[..., :hop])
            pending = frame[..., hop:]
        if self.is_streaming:
            self.stream_state["tail"] = pending
        return torch.cat(parts, dim=-1) if parts else frames.new_zeros(b, c, 0)


# -- residual units -------------------------------------------------------------------------------------
def _resample_kernel(stride: tuple[int, int]) -> tuple[int, int]:
    return (max(3, 2 * stride[0]), max(3, 2 * stride[1]))


def encoder_unit(
    in_channels: int, out_channels: int, stride: tuple[int, int], causal: bool, norm: Conv2dNorm
) -> AlignedSum:
    """Pre-activated residual unit, (B, in, T, F) -> (B, out, T / s_t, F / s_f) (see module docstring)."""
    main = nn.Sequential(
        nn.ELU(),
        StreamableConv2d(in_channels, in_channels, 3, 1, causal=causal, norm=norm),
        nn.ELU(),
        StreamableConv2d(in_channels, out_channels, _resample_kernel(stride), stride, causal=causal, norm=norm),
    )
    shortcut: list[nn.Module] = []
    if stride != (1, 1):
        shortcut.append(CausalAvgPool2d(stride))
    if in_channels != out_channels:
        shortcut.append(StreamableConv2d(in_channels, out_channels, 1, 1, causal=causal, norm=norm))
    return AlignedSum(main, nn.Sequential(*shortcut))


def decoder_unit(
    in_channels: int, out_channels: int, stride: tuple[int, int], causal: bool, norm: Conv2dNorm
) -> AlignedSum:
    """Pre-activated transposed residual unit, (B, in, T, F) -> (B, out, T * s_t, F * s_f)."""
    if stride == (1, 1):
        up: nn.Module = StreamableConv2d(in_channels, out_channels, 3, 1, causal=causal, norm=norm)
    else:
        up = StreamableConvTranspose2d(in_channels, out_channels, _resample_kernel(stride), stride, causal, norm)
    main = nn.Sequential(
        nn.ELU(),
        up,
        nn.ELU(),
        StreamableConv2d(out_channels, out_channels, 3, 1, causal=causal, norm=norm),
    )
    shortcut: list[nn.Module] = []
    if in_channels != out_channels:
        shortcut.append(StreamableConv2d(in_channels, out_channels, 1, 1, causal=causal, norm=norm))
    if stride != (1, 1):
        shortcut.append(Upsample2d(stride))
    return AlignedSum(main, nn.Sequential(*shortcut))


def _conv1x1(c_in: int, c_out: int, norm: Conv2dNorm) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, 1)
    return weight_norm(conv) if norm == "weight_norm" else conv


class _Sum(nn.Module):
    """``main(x) + shortcut(x)`` for frame-wise (1x1, stateless) branches: (B, C, T') -> (B, out, T')
    (an empty streaming chunk gives an empty output)."""

    def __init__(self, main: nn.Module, shortcut: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.main = main
        self.shortcut = shortcut
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[0], self.out_channels, 0)
        return self.main(x) + self.shortcut(x)


# -- configuration checks -------------------------------------------------------------------------------
def _check_common(
    channels: int,
    dimension: int,
    frame_length: int,
    hop: int,
    fft_length: int,
    ratios: Sequence[Sequence[int]],
    mults: Sequence[float],
    base_depth: int,
    kernel_size: int,
    fusion_block: int,
    norm: str,
) -> tuple[list[tuple[int, int]], list[float], int, int]:
    """Validate shared options -> (ratios, mults, fusion block index in 0..len(ratios), bins)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if dimension < 1:
        raise ValueError(f"dimension must be >= 1, got {dimension}")
    if not 1 <= hop <= frame_length <= fft_length:
        raise ValueError(
            f"need 1 <= stft_hop_length <= stft_frame_length <= stft_fft_length, got hop={hop}, "
            f"frame={frame_length}, fft={fft_length}"
        )
    if fft_length % 2:
        raise ValueError(f"stft_fft_length must be even (the Nyquist bin is dropped), got {fft_length}")
    ratios = [tuple(int(v) for v in r) for r in ratios]
    if not ratios or any(len(r) != 2 or min(r) < 1 for r in ratios):
        raise ValueError(f"ratios must be a non-empty list of (time, freq) strides >= 1, got {ratios}")
    mults = [float(m) for m in mults]
    if len(mults) != len(ratios) or any(m <= 0 for m in mults):
        raise ValueError(f"mults must hold one positive multiplier per ratio ({len(ratios)}), got {mults}")
    if base_depth < 1 or kernel_size < 1:
        raise ValueError(f"base_depth and kernel_size must be >= 1, got {base_depth}, {kernel_size}")
    if norm not in ("none", "weight_norm"):
        raise ValueError(f"norm must be 'none' or 'weight_norm', got {norm!r}")
    blocks = len(ratios) + 1  # the strided blocks and the bottleneck
    if not -blocks <= fusion_block < blocks:
        raise ValueError(
            f"fusion_block must be in [{-blocks}, {blocks}) (blocks: ratios + bottleneck), got {fusion_block}"
        )
    bins = fft_length // 2
    freq_stride = math.prod(r[1] for r in ratios)
    if bins % freq_stride:
        raise ValueError(f"ratios' frequency strides (product {freq_stride}) must divide the {bins} STFT bins")
    return ratios, mults, fusion_block % blocks, bins  # type: ignore[return-value]


def _widths(base: int, mults: Sequence[float]) -> list[int]:
    """[w_-1 = base, w_0, ..., w_{L-1}]: w_i = round(w_{i-1} * mults[i]) (official rounding)."""
    widths = [base]
    for m in mults:
        widths.append(int(round(widths[-1] * m)))
    return widths


class SpectroStreamEncoder(Encoder):
    """SpectroStream encoder: (B, C, T) -> (B, dimension, ceil(T / hop_length)),
    hop_length = prod(time strides) * stft_hop_length (1920 at 48 kHz: 25 Hz).

    Args (defaults: the official 48 kHz stereo model):
        channels: audio channels C (2; 1 = mono, no fusion).
        dimension: latent size D (256).
        stft_frame_length, stft_hop_length, stft_fft_length: 960, 480, 960.
        ratios: (time, freq) stride of each block (official list, 7 blocks).
        mults: channel multiplier of each block (official: 2, 1, 2, 1, 1, 2, 1).
        base_depth: width of the first conv (32).
        kernel_size: kernel of the first conv (7).
        fusion_block: index of the first joint block among ``ratios`` + the bottleneck
            (0..len(ratios)); negative counts from the end (official ``channel_recombo_block`` = -2:
            block 6, the last strided one). Blocks before it run per channel with shared weights.
        causal: causal convolutions in time (True; False = 'same' padding, not streamable).
        norm: "weight_norm" (the paper's training setup) or "none" (the released inference code).

    See the module docstring for the layer layout and streaming.
    """

    def __init__(
        self,
        channels: int = 2,
        dimension: int = 256,
        stft_frame_length: int = 960,
        stft_hop_length: int = 480,
        stft_fft_length: int = 960,
        ratios: Sequence[tuple[int, int]] = tuple(OFFICIAL_RATIOS),
        mults: Sequence[float] = tuple(OFFICIAL_MULTS),
        base_depth: int = 32,
        kernel_size: int = 7,
        fusion_block: int = -2,
        causal: bool = True,
        norm: Conv2dNorm = "weight_norm",
    ) -> None:
        super().__init__()
        self.ratios, self.mults, self.fusion_block, bins = _check_common(
            channels, dimension, stft_frame_length, stft_hop_length, stft_fft_length, ratios, mults,
            base_depth, kernel_size, fusion_block, norm,
        )  # fmt: skip
        self.channels = channels
        self.dimension = dimension
        self.time_stride = math.prod(r[0] for r in self.ratios)
        self.hop_length = self.time_stride * stft_hop_length
        self.stft_lookahead = stft_frame_length - stft_hop_length
        self.output_bins = bins // math.prod(r[1] for r in self.ratios)
        self.stft = STFTAnalysis(stft_frame_length, stft_hop_length, stft_fft_length, keep_dc=True)

        widths = _widths(base_depth, self.mults)
        per_channel: list[nn.Module] = [StreamableConv2d(2, base_depth, kernel_size, 1, causal=causal, norm=norm)]
        joint: list[nn.Module] = []
        for i, stride in enumerate(self.ratios):
            c_in = widths[i] * (channels if i == self.fusion_block else 1)
            unit = encoder_unit(c_in, widths[i + 1], stride, causal, norm)
            (per_channel if i < self.fusion_block else joint).append(unit)
        top = widths[-1]
        c_in = top * (channels if self.fusion_block == len(self.ratios) else 1)
        joint.append(encoder_unit(c_in, top, (1, 1), causal, norm))  # bottleneck
        self.per_channel = nn.Sequential(*per_channel)
        self.joint = nn.Sequential(*joint)
        flat = self.output_bins * top
        self.output = _Sum(
            _conv1x1(flat, dimension, norm),
            nn.Sequential(
                nn.ELU(),
                _conv1x1(flat, flat, norm),
                nn.ELU(),
                _conv1x1(flat, dimension, norm),
            ),
            dimension,
        )

    @property
    def stream_flush_samples(self) -> int:
        """Zeros to feed after the signal to complete a stream (the STFT's look-ahead)."""
        return self.stft_lookahead

    def per_channel_features(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, W, N', F'): the per-channel stage's output, before fusion."""
        check_audio(x, self.channels)
        spec = self.stft(x)  # (B, 2C, N, F), [c0.re, c0.im, c1.re, ...]
        b, _, n, f = spec.shape
        y = self.per_channel(spec.reshape(b * self.channels, 2, n, f))  # (B*C, W, N', F')
        return y.reshape(b, self.channels, *y.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, D, ceil(T / hop_length)); in streaming, the frames this chunk completes."""
        y = self.per_channel_features(x)  # (B, C, W, N', F')
        b, c, w, n, f = y.shape
        y = self.joint(y.reshape(b, c * w, n, f))  # fusion: [L features, R features] -> (B, W', T', F')
        b, w, t, f = y.shape
        flat = y.permute(0, 3, 1, 2).reshape(b, f * w, t)  # (B,W,T,F)->(B,F*W,T), index f * W + c
        return self.output(flat)


class SpectroStreamDecoder(Decoder):
    """SpectroStream decoder: (B, dimension, T') -> (B, C, T' * hop_length).

    Args (defaults: the official 48 kHz stereo model) as :class:`SpectroStreamEncoder`, plus:
        base_depth: width of the last per-channel block (64); the top width is
            base_depth * prod(mults) (512).
        lookahead: latent frames the decoder looks ahead (1: its output for embedding j waits for
            embedding j + 1). Offline, the latents are padded with that many zero frames.

    The mirror of the encoder's fusion block outputs C times its width and is split into the
    channels (early splitting); the blocks after it run per channel with shared weights.
    """

    def __init__(
        self,
        channels: int = 2,
        dimension: int = 256,
        stft_frame_length: int = 960,
        stft_hop_length: int = 480,
        stft_fft_length: int = 960,
        ratios: Sequence[tuple[int, int]] = tuple(OFFICIAL_RATIOS),
        mults: Sequence[float] = tuple(OFFICIAL_MULTS),
        base_depth: int = 64,
        kernel_size: int = 7,
        fusion_block: int = -2,
        lookahead: int = 1,
        causal: bool = True,
        norm: Conv2dNorm = "weight_norm",
    ) -> None:
        super().__init__()
        self.ratios, self.mults, self.fusion_block, bins = _check_common(
            channels, dimension, stft_frame_length, stft_hop_length, stft_fft_length, ratios, mults,
            base_depth, kernel_size, fusion_block, norm,
        )  # fmt: skip
        if lookahead < 0:
            raise ValueError(f"lookahead must be >= 0 latent frames, got {lookahead}")
        if lookahead and not causal:
            raise ValueError("lookahead only applies to a causal decoder (causal=True)")
        self.channels = channels
        self.dimension = dimension
        self.lookahead = lookahead
        self.time_stride = math.prod(r[0] for r in self.ratios)
        self.hop_length = self.time_stride * stft_hop_length
        self.input_bins = bins // math.prod(r[1] for r in self.ratios)

        top = int(round(base_depth * math.prod(self.mults)))
        # decoder widths mirroring the encoder: v[i] = width after the mirror of encoder block i - 1
        widths = [top]
        for m in reversed(self.mults):
            widths.append(int(round(widths[-1] / m)))
        widths = widths[::-1]  # widths[i]: input width of the mirror of block i - 1 ... widths[0] = final
        self.top_width = top
        flat = self.input_bins * top
        self.input = _Sum(
            _conv1x1(dimension, flat, norm),
            nn.Sequential(_conv1x1(dimension, flat, norm), nn.ELU(), _conv1x1(flat, flat, norm)),
            flat,
        )
        joint: list[nn.Module] = []
        per_channel: list[nn.Module] = []
        n_blocks = len(self.ratios)
        split_out = channels if self.fusion_block == n_blocks else 1
        joint.append(decoder_unit(top, top * split_out, (1, 1), causal, norm))  # mirror of bottleneck
        for i in reversed(range(n_blocks)):
            c_in, c_out = widths[i + 1], widths[i]
            if i == self.fusion_block:
                joint.append(decoder_unit(c_in, c_out * channels, self.ratios[i], causal, norm))
            else:
                unit = decoder_unit(c_in, c_out, self.ratios[i], causal, norm)
                (joint if i > self.fusion_block else per_channel).append(unit)
        per_channel += [
            nn.ELU(),
            StreamableConv2d(base_depth, 2, kernel_size, 1, causal=causal, norm="none"),  # no norm on the output
        ]
        self.joint = nn.Sequential(*joint)
        self.per_channel = nn.Sequential(*per_channel)
        self.drop_lookahead = DropFirstFrames(lookahead * self.time_stride)
        self.istft = STFTSynthesis(stft_frame_length, stft_hop_length, stft_fft_length, keep_dc=True)

    @property
    def stream_flush_frames(self) -> int:
        """Zero latent frames to feed after the latents to complete a stream (the look-ahead)."""
        return self.lookahead

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, T') -> (B, C, T' * hop_length); in streaming, the samples this chunk completes
        (the stream lags ``lookahead`` frames behind)."""
        if z.dim() != 3 or z.shape[1] != self.dimension:
            raise ValueError(f"z must be (batch, {self.dimension}, frames) latents, got shape {tuple(z.shape)}")
        if not torch.is_floating_point(z):
            raise TypeError(f"z must be a floating point tensor, got {z.dtype}")
        if not self.drop_lookahead.is_streaming and self.lookahead:
            z = torch.nn.functional.pad(z, (0, self.lookahead))  # (B, D, T' + lookahead)
        b, _, t = z.shape
        y = self.input(z)  # (B, F'*W, T')
        y = y.reshape(b, self.input_bins, self.top_width, t).permute(0, 2, 3, 1)  # (B, W, T', F')
        y = self.joint(y)  # (B, C*W, N', F')
        _, cw, n, f = y.shape
        y = self.per_channel(y.reshape(b * self.channels, cw // self.channels, n, f))  # split: (B*C, 2, N, F)
        y = self.drop_lookahead(y)
        spec = y.reshape(b, 2 * self.channels, y.shape[2], y.shape[3])  # (B, 2C, N, F)
        with torch.autocast(device_type=spec.device.type, enabled=False):
            return self.istft(spec.float())


def architectural_latency_ms(
    encoder: SpectroStreamEncoder,
    decoder: SpectroStreamDecoder,
    sample_rate: int,
    include_stft_lookahead: bool = False,
) -> float:
    """The paper's architectural latency: one embedding (the encoder needs a whole hop) plus the
    decoder's look-ahead, in ms: (1 + lookahead) * hop / sample_rate (80 ms at 48 kHz).

    ``include_stft_lookahead`` adds the reverse-causal analysis STFT's ``frame_length - hop``
    samples (10 ms), which a real stream also waits for (90 ms)."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    if encoder.hop_length != decoder.hop_length:
        raise ValueError(f"encoder hop {encoder.hop_length} != decoder hop {decoder.hop_length}")
    samples = (1 + decoder.lookahead) * decoder.hop_length
    if include_stft_lookahead:
        samples += encoder.stft_lookahead
    return 1000.0 * samples / sample_rate
