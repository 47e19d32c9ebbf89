"""SpectroStream's multi-scale STFT discriminator.

Li et al. 2025, "SpectroStream: A Versatile Neural Codec for General Audio", section 3 and Figure 2:
one 2D conv discriminator per STFT window length (no shared parameters) on [re, im, |X|] of each
audio channel; layer norm after each conv (over all non-batch dims), LeakyReLU, symmetric padding;
the encoder's delayed fusion emulated (early layers per channel with shared weights, later layers
on the channels concatenated). The paper's text gives no windows, widths, strides, kernels, slope,
fusion point or STFT normalization, and the official code (magenta/magenta-realtime) is inference
only, so they are constructor arguments. Defaults chosen here: windows 256..4096 (EnCodec's 48 kHz
set), hop window / 4, widths 32-32-64-64-128-128, strides mirroring the encoder's, fusion before
the last strided conv, slope 0.2, STFT normalized by the window's L2 norm.

Per scale: audio (B, C, T) -> STFT (B, C, F, N) -> (B*C, 3, N, F) -> convs (GroupNorm(1, C) as the
layer norm, whose per-channel affine fits variable lengths; LeakyReLU) -> at ``fusion_layer`` the
channels concatenated to (B, C * width, N', F') -> 3x3 output conv -> logits (B, 1, N', F').
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from codecplatform.discriminators.base import Discriminator
from codecplatform.dsp.spectral import stft
from codecplatform.types import DiscriminatorOutput, check_audio

DEFAULT_WINDOWS = (256, 512, 1024, 2048, 4096)
DEFAULT_WIDTHS = (32, 32, 64, 64, 128, 128)
DEFAULT_STRIDES = ((1, 2), (1, 2), (2, 2), (1, 2), (2, 2))


def _symmetric_conv(c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int]) -> nn.Module:
    """Conv2d with zero padding ``k - s`` split evenly (the odd one on the high side) on both axes:
    (B, c_in, N, F) -> (B, c_out, ceil(N / s_t), ceil(F / s_f)) for sizes divisible by the stride."""
    pad_t, pad_f = max(kernel[0] - stride[0], 0), max(kernel[1] - stride[1], 0)
    return nn.Sequential(
        nn.ZeroPad2d((pad_f // 2, pad_f - pad_f // 2, pad_t // 2, pad_t - pad_t // 2)),
        nn.Conv2d(c_in, c_out, kernel, stride),
    )


class STFT2dScale(nn.Module):
    """One scale: audio (B, C, T) -> (logits (B, 1, N', F'), feature maps [(B, C_l, N_l, F_l)]).

    Per-channel feature maps are returned with the channels stacked: (B, C * width, N_l, F_l).
    """

    def __init__(
        self,
        window_length: int,
        hop_length: int,
        channels: int = 2,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        strides: Sequence[tuple[int, int]] = DEFAULT_STRIDES,
        kernel_size: tuple[int, int] = (7, 7),
        fusion_layer: int = -2,
        negative_slope: float = 0.2,
        normalized: bool = True,
    ):
        super().__init__()
        widths, strides = [int(w) for w in widths], [tuple(int(v) for v in s) for s in strides]
        if len(widths) != len(strides) + 1 or any(w < 1 for w in widths):
            raise ValueError(f"widths must hold len(strides) + 1 = {len(strides) + 1} positive ints, got {widths}")
        if any(len(s) != 2 or min(s) < 1 for s in strides):
            raise ValueError(f"strides must be (time, freq) pairs >= 1, got {strides}")
        n_convs = len(strides) + 1
        fusion = fusion_layer % (n_convs + 1) if fusion_layer < 0 else fusion_layer
        if not 1 <= fusion <= n_convs:
            raise ValueError(
                f"fusion_layer must be in 1..{n_convs} (index of the first joint conv; {n_convs} = the output "
                f"conv) or negative from the end, got {fusion_layer}"
            )
        self.window_length = window_length
        self.hop_length = hop_length
        self.channels = channels
        self.fusion_layer = fusion
        self.normalized = normalized
        self.register_buffer("window", torch.hann_window(window_length), persistent=False)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = 3
        for i in range(n_convs):
            kernel = tuple(kernel_size) if i == 0 else (max(3, 2 * strides[i - 1][0]), max(3, 2 * strides[i - 1][1]))
            stride = (1, 1) if i == 0 else strides[i - 1]
            self.convs.append(_symmetric_conv(c_in * (channels if i == fusion else 1), widths[i], kernel, stride))
            self.norms.append(nn.GroupNorm(1, widths[i]))
            c_in = widths[i]
        self.post = _symmetric_conv(c_in * (channels if fusion == n_convs else 1), 1, (3, 3), (1, 1))
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        batch, channels, _ = x.shape
        if channels != self.channels:
            raise ValueError(f"this discriminator was built for {self.channels} channels, got {channels}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = stft(
                x.float(), self.window_length, self.hop_length, window=self.window.float(), normalized=self.normalized
            )  # (B, C, F, N) complex
            re, im = spec.real, spec.imag
            planes = torch.stack([re, im, (re.pow(2) + im.pow(2) + 1e-12).sqrt()], dim=2)  # (B, C, 3, F, N)
        h = planes.transpose(-1, -2).reshape(batch * channels, 3, planes.shape[-1], planes.shape[-2])  # (B*C,3,N,F)
        features = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i == self.fusion_layer:
                h = h.reshape(batch, channels * h.shape[1], *h.shape[2:])  # fusion: [L, R] channels
            h = self.activation(norm(conv(h)))
            joint = i >= self.fusion_layer
            features.append(h if joint else h.reshape(batch, channels * h.shape[1], *h.shape[2:]))
        if self.fusion_layer == len(self.convs):
            h = h.reshape(batch, channels * h.shape[1], *h.shape[2:])
        return self.post(h), features


class MultiScaleSTFT2dDiscriminator(Discriminator):
    """SpectroStream's multi-scale STFT discriminator: (B, C, T) -> DiscriminatorOutput with one
    entry per window length, named ``f"{name}_{window}"``; logits (B, 1, N', F') (the channels are
    fused inside, so the batch stays B), features [(B, C_l, N_l, F_l)] * (len(strides) + 1).

    Args (none given by the paper; see the module docstring for the chosen defaults):
        channels: audio channels C (2).
        window_lengths: STFT window (= n_fft) of each scale.
        hop_divisor: hop = window // hop_divisor.
        widths, strides, kernel_size, fusion_layer, negative_slope, normalized: see :class:`STFT2dScale`.
    """

    def __init__(
        self,
        channels: int = 2,
        window_lengths: Sequence[int] = DEFAULT_WINDOWS,
        hop_divisor: int = 4,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        strides: Sequence[tuple[int, int]] = DEFAULT_STRIDES,
        kernel_size: tuple[int, int] = (7, 7),
        fusion_layer: int = -2,
        negative_slope: float = 0.2,
        normalized: bool = True,
        name: str = "stft2d",
    ):
        super().__init__()
        window_lengths = [int(w) for w in window_lengths]
        if not window_lengths or len(set(window_lengths)) != len(window_lengths):
            raise ValueError(f"window_lengths must be distinct and non-empty, got {window_lengths}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if hop_divisor < 1 or any(w < 4 or w // hop_divisor < 1 for w in window_lengths):
            raise ValueError(
                f"window_lengths must be >= 4 with a hop (window // {hop_divisor}) >= 1, got {window_lengths}"
            )
        self.window_lengths = window_lengths
        self.name = name
        self.discriminators = nn.ModuleList(
            STFT2dScale(
                w, w // hop_divisor, channels, widths, strides, kernel_size, fusion_layer, negative_slope, normalized
            )
            for w in window_lengths
        )

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        check_audio(x)
        if x.shape[-1] <= max(self.window_lengths) // 2:
            raise ValueError(
                f"x has {x.shape[-1]} samples; the largest STFT needs more than {max(self.window_lengths) // 2}"
            )
        outputs = [disc(x) for disc in self.discriminators]
        return DiscriminatorOutput(
            logits=[logits for logits, _ in outputs],
            features=[features for _, features in outputs],
            names=[f"{self.name}_{w}" for w in self.window_lengths],
        )
