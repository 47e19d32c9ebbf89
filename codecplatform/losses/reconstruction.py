"""Reconstruction losses between audio ``x`` and its reconstruction ``x_hat``, both (B, C, T).

Every loss is a callable ``loss(x, x_hat) -> scalar Tensor`` computed in float32, also under
``torch.autocast``. Channels are treated as extra batch items: every reduction is a mean over
batch and channels alike. Losses with buffers (windows, mel filterbanks) are ``nn.Module``s
whose buffers are non-persistent, so they never enter state dicts or checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codecplatform.dsp.spectral import MelNorm, MelScale, mel_filterbank, safe_log, stft
from codecplatform.types import check_audio

ScaleReduction = Literal["mean", "sum"]


def _check_pair(x: Tensor, x_hat: Tensor) -> None:
    check_audio(x, name="x")
    check_audio(x_hat, name="x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")


class TimeL1Loss(nn.Module):
    """EnCodec's time-domain loss l_t: the *mean* absolute error over all samples.

    The paper writes the L1 norm ||x - x_hat||_1 (a sum); like audiocraft (``nn.L1Loss``) this is
    the mean, so its scale does not depend on batch size, channels or duration. An ``nn.Module``
    (without parameters) like every reconstruction loss, so all of them share one type.
    """

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        _check_pair(x, x_hat)
        return (x.float() - x_hat.float()).abs().mean()


class _MultiScaleSpectralLoss(nn.Module):
    """Shared part of the multi-scale losses: Hann windows, hops, float32 context, reduction.

    Scale i uses win = ``window_lengths[i]``, n_fft = ``n_ffts[i]`` (default: the window; a larger
    n_fft zero-pads the centred window) and hop = ``window_lengths[i] // hop_divisor``.
    Subclasses implement ``_scale_loss(x, x_hat, i)`` on float32 (B, C, T) audio; the per-scale
    losses are multiplied by ``scale_weights`` (default all 1) before ``scale_reduction``.
    """

    def __init__(
        self,
        window_lengths: Sequence[int],
        hop_divisor: int,
        scale_reduction: ScaleReduction,
        center: bool,
        n_ffts: Sequence[int] | None = None,
        scale_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        window_lengths = list(window_lengths)
        if not window_lengths:
            raise ValueError("window_lengths: give at least one window length")
        if any(w < 2 for w in window_lengths):
            raise ValueError(f"window_lengths must all be >= 2, got {window_lengths}")
        if hop_divisor < 1 or any(w // hop_divisor < 1 for w in window_lengths):
            raise ValueError(
                f"hop_divisor={hop_divisor} must be >= 1 and leave a hop of at least one sample "
                f"for every window in {window_lengths}"
            )
        if scale_reduction not in ("mean", "sum"):
            raise ValueError(f"scale_reduction must be 'mean' or 'sum', got {scale_reduction!r}")
        n_ffts = list(window_lengths) if n_ffts is None else [int(n) for n in n_ffts]
        if len(n_ffts) != len(window_lengths) or any(n < w for n, w in zip(n_ffts, window_lengths)):
            raise ValueError(
                f"n_ffts must give one FFT size >= its window per scale, got {n_ffts} for {window_lengths}"
            )
        weights = [1.0] * len(window_lengths) if scale_weights is None else [float(v) for v in scale_weights]
        if len(weights) != len(window_lengths):
            raise ValueError(f"scale_weights has {len(weights)} entries but window_lengths has {len(window_lengths)}")
        self.window_lengths = window_lengths
        self.n_ffts = n_ffts
        self.scale_weights = weights
        self.hop_lengths = [w // hop_divisor for w in window_lengths]
        self.scale_reduction = scale_reduction
        self.center = center
        for i, w in enumerate(window_lengths):
            self.register_buffer(f"window_{i}", torch.hann_window(w), persistent=False)

    def _magnitudes(self, x: Tensor, x_hat: Tensor, i: int, normalized: bool = False) -> tuple[Tensor, Tensor]:
        """|STFT| of x and x_hat at scale i: two (B, C, F_i, N_i) tensors."""
        window: Tensor = getattr(self, f"window_{i}")
        both = torch.cat([x, x_hat])  # (2B, C, T): one STFT call for both signals
        mag = stft(
            both,
            n_fft=self.n_ffts[i],
            hop_length=self.hop_lengths[i],
            win_length=self.window_lengths[i],
            window=window.float(),
            center=self.center,
            normalized=normalized,
        ).abs()  # (2B, C, F, N)
        mag_x, mag_x_hat = mag.chunk(2)
        return mag_x, mag_x_hat

    def _scale_loss(self, x: Tensor, x_hat: Tensor, i: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _min_length(self) -> int:
        """Fewest samples the longest window accepts."""
        longest = max(self.n_ffts)
        return longest // 2 + 1 if self.center else longest

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """(B, C, T), (B, C, T) -> scalar float32 loss."""
        _check_pair(x, x_hat)
        needed = self._min_length()
        if x.shape[-1] < needed:
            raise ValueError(
                f"x has {x.shape[-1]} samples; the window of {max(self.window_lengths)} needs at least {needed}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, x_hat = x.float(), x_hat.float()
            per_scale = torch.stack([self._scale_loss(x, x_hat, i) for i in range(len(self.window_lengths))])
            if self.scale_weights != [1.0] * len(self.scale_weights):
                per_scale = per_scale * torch.tensor(self.scale_weights, device=per_scale.device)
        return per_scale.mean() if self.scale_reduction == "mean" else per_scale.sum()


class MultiScaleMelLoss(_MultiScaleSpectralLoss):
    """Multi-scale mel-spectrogram distance (EnCodec l_f, eq. 1; DAC mel loss).

    Per scale i: S_i = mel_i @ |STFT_i(x)|^power, (n_mels[i], N_i) per item and channel,
    optionally ``safe_log(S_i, clamp_eps, log_base)``; then
    ``l1_weight * mean|S_i(x) - S_i(x_hat)| + l2_weight * mean (S_i(x) - S_i(x_hat))^2``.
    The scales are combined with ``scale_reduction`` ("mean" or "sum").

    Choices and how the two reference configurations map onto the arguments:

    * L2 term: eq. 1 writes the L2 *norm*; the official implementation (audiocraft
      ``MultiScaleMelSpectrogramLoss``) uses the mean squared error, and so does this class.
    * EnCodec (paper-literal; audiocraft's own recipe is :class:`EncodecMelLoss`):
      ``window_lengths=[32, ..., 2048]`` (2^5..2^11), ``l1_weight=l2_weight=1``, ``normalized=True``
      and 64 mels where the window has the bins, e.g. ``n_mels=[17, 33, 64, 64, 64, 64, 64]``: more
      bands than bins is refused (all-zero filters that only dilute the mean).
    * DAC: ``window_lengths=[32, 64, 128, 256, 512, 1024, 2048]``,
      ``n_mels=[5, 10, 20, 40, 80, 160, 320]``, ``log_base=10``, ``clamp_eps=1e-5``, ``power=1``,
      ``l2_weight=0``, ``scale_reduction="sum"``. The official ``MelSpectrogramLoss``
      (``mag_weight=0, log_weight=1``) *sums* the per-scale L1 of ``log10(clamp(mel, 1e-5))``, so
      ``"sum"`` keeps DAC's loss weight of 15 meaningful; DAC's ``pow`` is applied after the mel
      filterbank, ``power`` here before it (torchaudio convention); at 1 they coincide.
    * MUFFIN: ``window_lengths=[1024, 512, 256, 128, 2048]``, ``n_ffts=[1025, 512, 256, 128, 2048]``
      (its weight-45 scale takes n_fft 1025 with a 1024 window), ``n_mels=[64, 64, 64, 32, 64]``,
      ``f_max=12000``, natural log, ``clamp_eps=1e-5``, ``l2_weight=0``, ``scale_reduction="sum"``
      with ``scale_weights=[45, 25, 10, 5, 1]``.
    * ``n_ffts``: FFT size per scale (default the window); ``scale_weights``: a factor per scale
      applied before ``scale_reduction`` (default 1).
    * STFT: periodic Hann window, ``center=True`` with reflect padding (as DAC; audiocraft pads
      by (n_fft - hop) / 2 with ``center=False``, the same frames up to the borders).
      ``normalized=True`` divides the STFT by the window's L2 norm (torchaudio/audiocraft).
    """

    def __init__(
        self,
        sample_rate: int,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: int | Sequence[int] = 64,
        hop_divisor: int = 4,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        log: bool = True,
        log_base: float | None = None,
        clamp_eps: float = 1e-5,
        power: float = 1.0,
        normalized: bool = False,
        f_min: float = 0.0,
        f_max: float | None = None,
        center: bool = True,
        mel_norm: MelNorm = "slaney",
        mel_scale: MelScale = "slaney",
        scale_reduction: ScaleReduction = "mean",
        n_ffts: Sequence[int] | None = None,
        scale_weights: Sequence[float] | None = None,
    ):
        super().__init__(window_lengths, hop_divisor, scale_reduction, center, n_ffts, scale_weights)
        n_scales = len(self.window_lengths)
        mels = [n_mels] * n_scales if isinstance(n_mels, int) else list(n_mels)
        if len(mels) != n_scales:
            raise ValueError(f"n_mels has {len(mels)} entries but window_lengths has {n_scales}")
        for i, (m, w, n) in enumerate(zip(mels, self.window_lengths, self.n_ffts)):
            if not 1 <= m <= n // 2 + 1:
                fft = f" (n_fft {n})" if n != w else ""
                raise ValueError(
                    f"n_mels[{i}]={m} must be between 1 and the {n // 2 + 1} frequency bins of "
                    f"window_lengths[{i}]={w}{fft}; give n_mels as a per-scale list"
                )
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        if clamp_eps <= 0:
            raise ValueError(f"clamp_eps must be > 0, got {clamp_eps}")
        self.sample_rate = sample_rate  # checked against the codec's by GANCodecModule
        self.n_mels = mels
        self.l1_weight = l1_weight
        self.l2_weight = l2_weight
        self.log = log
        self.log_base = log_base
        self.clamp_eps = clamp_eps
        self.power = power
        self.normalized = normalized
        for i, (m, w) in enumerate(zip(mels, self.n_ffts)):
            fb = mel_filterbank(sample_rate, w, m, f_min, f_max, norm=mel_norm, mel_scale=mel_scale)
            self.register_buffer(f"mel_{i}", fb, persistent=False)  # (n_mels, F)

    def _scale_loss(self, x: Tensor, x_hat: Tensor, i: int) -> Tensor:
        fb: Tensor = getattr(self, f"mel_{i}")
        mag_x, mag_x_hat = self._magnitudes(x, x_hat, i, normalized=self.normalized)
        mel_x = torch.matmul(fb.float(), mag_x.pow(self.power))  # (n_mels, F) @ (B, C, F, N) -> (B, C, n_mels, N)
        mel_x_hat = torch.matmul(fb.float(), mag_x_hat.pow(self.power))
        if self.log:
            mel_x = safe_log(mel_x, self.clamp_eps, self.log_base)
            mel_x_hat = safe_log(mel_x_hat, self.clamp_eps, self.log_base)
        diff = mel_x - mel_x_hat
        return self.l1_weight * diff.abs().mean() + self.l2_weight * diff.pow(2).mean()


class MultiScaleSTFTLoss(_MultiScaleSpectralLoss):
    """DAC's multi-scale STFT distance (audiotools ``MultiScaleSTFTLoss``).

    Per scale: ``log_weight * mean|power * log(max(|X|, eps)) - (same for x_hat)|
    + mag_weight * mean| |X| - |X_hat| |`` (the log of the clamped magnitude raised to ``power``,
    DAC's ``pow=2``), logs in ``log_base``; scales combined with ``scale_reduction`` ("sum" as DAC).
    Hann window, hop = window // hop_divisor, ``center=True``.
    """

    def __init__(
        self,
        window_lengths: Sequence[int] = (2048, 512),
        hop_divisor: int = 4,
        log_weight: float = 1.0,
        mag_weight: float = 1.0,
        clamp_eps: float = 1e-5,
        log_base: float | None = 10.0,
        power: float = 2.0,
        scale_reduction: ScaleReduction = "sum",
        center: bool = True,
    ):
        super().__init__(window_lengths, hop_divisor, scale_reduction, center)
        if clamp_eps <= 0:
            raise ValueError(f"clamp_eps must be > 0, got {clamp_eps}")
        self.log_weight = log_weight
        self.mag_weight = mag_weight
        self.clamp_eps = clamp_eps
        self.log_base = log_base
        self.power = power

    def _scale_loss(self, x: Tensor, x_hat: Tensor, i: int) -> Tensor:
        mag_x, mag_x_hat = self._magnitudes(x, x_hat, i)  # (B, C, F, N) each
        log_diff = self.power * (
            safe_log(mag_x, self.clamp_eps, self.log_base) - safe_log(mag_x_hat, self.clamp_eps, self.log_base)
        )
        return self.log_weight * log_diff.abs().mean() + self.mag_weight * (mag_x - mag_x_hat).abs().mean()


class EncodecMelLoss(_MultiScaleSpectralLoss):
    """EnCodec's official multi-scale mel loss: audiocraft's ``MultiScaleMelSpectrogramLoss`` with the
    ``msspec`` settings of its compression solver (``config/solver/compression/default.yaml``).

    Per scale i (window w_i = n_fft = win, hop h_i = w_i // ``hop_divisor``):

    * audio reflect-padded by (w_i - h_i) // 2 on both sides, then zero-padded at the end so that
      every frame is full (audiocraft's ``pad_for_conv1d``); STFT without centring, periodic Hann;
    * ``normalized``: the STFT divided by the window's L2 norm (torchaudio ``normalized=True``);
    * S_i = mel_i @ |STFT_i|^``power`` with torchaudio's defaults: HTK scale, no area
      normalization, ``n_mels`` bands from ``f_min`` to ``f_max`` (default sample_rate // 2) at every
      scale (at short windows many bands are empty, all-zero filters, as in audiocraft);
    * l_i = mean|S_i(x) - S_i(x_hat)| + alpha_i * mean(log10(floor + S_i(x)) - log10(floor + S_i(x_hat)))^2,
      alpha_i = sqrt(w_i - 1) if ``alphas`` else 1.

    The loss is sum_i l_i, divided by sum_i (alpha_i + 1) when ``normalized`` (audiocraft's one flag does
    both: STFT normalization and this division). Defaults are the EnCodec solver's: windows 2^6..2^10
    (``range_start=6, range_end=11``), 64 mels, ``f_min=64``, ``normalized=True``, ``alphas=False``,
    ``floor_level=1e-5``, power spectrogram. Means run over batch, channels, bands and frames.
    The paper's variant (eq. 1: L1 + L2 on the linear mel, windows 2^5..2^11) is ``MultiScaleMelLoss``.
    """

    def __init__(
        self,
        sample_rate: int,
        window_lengths: Sequence[int] = (64, 128, 256, 512, 1024),
        n_mels: int = 64,
        f_min: float = 64.0,
        f_max: float | None = None,
        power: float = 2.0,
        normalized: bool = True,
        alphas: bool = False,
        floor_level: float = 1e-5,
        hop_divisor: int = 4,
    ):
        super().__init__(window_lengths, hop_divisor, scale_reduction="sum", center=False)
        if n_mels < 1:
            raise ValueError(f"n_mels must be >= 1, got {n_mels}")
        if power <= 0:
            raise ValueError(f"power must be > 0, got {power}")
        if floor_level <= 0:
            raise ValueError(f"floor_level must be > 0, got {floor_level}")
        self.sample_rate = sample_rate  # checked against the codec's by GANCodecModule
        self.n_mels = n_mels
        self.power = power
        self.normalized = normalized
        self.floor_level = floor_level
        self.alphas = [math.sqrt(w - 1) if alphas else 1.0 for w in self.window_lengths]
        self.total = sum(a + 1 for a in self.alphas)
        f_max = float(sample_rate // 2) if f_max is None else f_max  # torchaudio's MelSpectrogram default
        for i, w in enumerate(self.window_lengths):
            fb = mel_filterbank(sample_rate, w, n_mels, f_min, f_max, norm=None, mel_scale="htk")
            self.register_buffer(f"mel_{i}", fb, persistent=False)  # (n_mels, F)

    def _min_length(self) -> int:
        # reflect padding needs more samples than it pads
        return max((w - h) // 2 for w, h in zip(self.window_lengths, self.hop_lengths)) + 1

    def _mel(self, x: Tensor, i: int) -> Tensor:
        """(B, C, T) -> (B, C, n_mels, N) mel power spectrogram at scale i, audiocraft's framing."""
        n_fft, hop = self.window_lengths[i], self.hop_lengths[i]
        pad = (n_fft - hop) // 2
        x = F.pad(x, (pad, pad), mode="reflect")
        frames = math.ceil((x.shape[-1] - n_fft) / hop + 1)
        x = F.pad(x, (0, (frames - 1) * hop + n_fft - x.shape[-1]))  # full last frame (zeros)
        window: Tensor = getattr(self, f"window_{i}")
        spec = stft(x, n_fft=n_fft, hop_length=hop, window=window.float(), center=False, normalized=self.normalized)
        fb: Tensor = getattr(self, f"mel_{i}")
        return torch.matmul(fb.float(), spec.abs().pow(self.power))  # (n_mels, F) @ (B, C, F, N)

    def _scale_loss(self, x: Tensor, x_hat: Tensor, i: int) -> Tensor:
        mel_x, mel_x_hat = self._mel(torch.cat([x, x_hat]), i).chunk(2)
        linear = (mel_x - mel_x_hat).abs().mean()
        log = (torch.log10(self.floor_level + mel_x) - torch.log10(self.floor_level + mel_x_hat)).pow(2).mean()
        loss = linear + self.alphas[i] * log
        return loss / self.total if self.normalized else loss
