"""MuCodec's Mel-VAE (Xu et al. 2024; xuyaoxun/MuCodec): a diffusers ``AutoencoderKL`` over log-mel
spectrograms (AudioLDM 48 kHz geometry).

Shapes (defaults: 48 kHz, hop 480 -> 100 Hz mel, 256 bins, x8 down -> 12.5 Hz x 32 bins):

    audio  x     (B, C, T)                      C audio channels (2: stereo)
    log-mel      (B, C, N, n_mels)              time major (the VAE sees an image of height N), N a
                                                multiple of the downsampling factor d (``crop_frames``)
    latent z     (B, C * L, N / d, n_mels / d)  L = ``latent_channels`` (16) per audio channel; each
                                                channel is encoded on its own, then L and R are
                                                stacked on the channel axis (left first): 32 channels
    normalized z (B, C * L, N / d, n_mels / d)  ``(z - mean) / std`` per (channel, bin)

The mel (:func:`codecplatform.dsp.spectral.log_mel_spectrogram`) is AudioLDM's ``TacotronSTFT``: n_fft
= window 2048, hop 480, periodic Hann, reflect padding n_fft / 2, magnitude, librosa (slaney) mel
filters 20 Hz .. 24 kHz, natural log of ``max(mel, 1e-5)``. The VAE is AudioLDM's ``ddconfig``
(ch 128, ch_mult [1, 2, 4, 8], 2 res blocks per level, attention only in the mid block, 16 latent
channels, double_z) expressed as diffusers ``AutoencoderKL`` (its decoder has layers_per_block + 1
res blocks per level, as LDM's). AudioLDM's ``scale_factor`` is not used: the per-(channel, bin)
statistics replace it.

Latent statistics (``LatentNormalizer``, official ``Feature2DProcessor`` in MuCodec's model.py): running
sums over the first ``statistics_samples`` latent windows (each window contributes its time-mean of z
and z^2), frozen afterwards; buffers, so they live in every checkpoint and in ``save_pretrained``. They
are collected where the VAE is frozen: in the flow stage's training (as in the official code, where the
normalizer belongs to the flow model), never while the VAE itself trains (its latents still move).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.discriminators.base import Discriminator
from codecplatform.dsp.spectral import log_mel_spectrogram, mel_filterbank
from codecplatform.types import DiscriminatorOutput

CONFIG_FILE = "melvae.json"
STATISTICS_FILE = "statistics.safetensors"
VAE_FOLDER = "vae"
CHECKPOINT_CONFIG_KEY = "melvae_config"  # a Lightning checkpoint's copy of MelVAE.config()


class LatentNormalizer(nn.Module):
    """Per-(channel, bin) mean/std of latents (B, C, T, F), collected over the first ``max_samples``
    windows and frozen afterwards (official ``Feature2DProcessor``, num_samples 100k).

    Buffers: ``count`` (windows seen), ``sum`` and ``sum_sq`` (C, F): sums over windows of the time
    means of z and z^2. ``mean = sum / count``, ``std = sqrt(max(sum_sq / count - mean^2, 0))``.
    Under DDP, :meth:`update` all-reduces the batch sums, so every rank holds the same statistics.
    """

    def __init__(self, channels: int, bins: int, max_samples: int = 100_000, min_std: float = 1e-12):
        super().__init__()
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.channels, self.bins, self.max_samples, self.min_std = channels, bins, max_samples, min_std
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("sum", torch.zeros(channels, bins))
        self.register_buffer("sum_sq", torch.zeros(channels, bins))

    @property
    def frozen(self) -> bool:
        return int(self.count) >= self.max_samples

    @property
    def mean(self) -> Tensor:
        self._check_ready()
        return self.sum / self.count

    @property
    def std(self) -> Tensor:
        mean = self.mean
        return (self.sum_sq / self.count - mean.pow(2)).clamp(min=0).sqrt()

    def _check_ready(self) -> None:
        if int(self.count) == 0:
            raise RuntimeError(
                "latent statistics are empty (count 0): they are collected in the flow stage's training "
                "(update=True) or loaded with the Mel-VAE; normalize after at least one update"
            )

    def _check(self, z: Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.channels or z.shape[3] != self.bins:
            raise ValueError(f"latents must be (B, {self.channels}, T, {self.bins}), got {tuple(z.shape)}")

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """Add the windows of ``z`` (B, C, T, F) to the statistics unless they are frozen."""
        self._check(z)
        if self.frozen:
            return
        z = z.detach().float()
        packed = torch.cat(
            [
                torch.tensor([float(z.shape[0])], device=z.device),
                z.mean(dim=2).sum(dim=0).flatten(),  # (C*F,)
                z.pow(2).mean(dim=2).sum(dim=0).flatten(),
            ]
        )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        n = self.channels * self.bins
        self.count += int(round(float(packed[0])))
        self.sum += packed[1 : 1 + n].view_as(self.sum).to(self.sum)
        self.sum_sq += packed[1 + n :].view_as(self.sum_sq).to(self.sum_sq)

    def normalize(self, z: Tensor) -> Tensor:
        """(z - mean) / std per (channel, bin): (B, C, T, F) -> (B, C, T, F)."""
        self._check(z)
        mean, std = self.mean[None, :, None, :], self.std[None, :, None, :]
        return (z - mean.to(z)) / std.clamp(min=self.min_std).to(z)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`."""
        self._check(z)
        mean, std = self.mean[None, :, None, :], self.std[None, :, None, :]
        return z * std.to(z) + mean.to(z)


@dataclass
class MelVAEOutput:
    """One VAE pass over a log-mel (B, C, N, n_mels).

    mel_hat: (B, C, N, n_mels) reconstruction.
    mean, logvar: (B, C * L, N / d, n_mels / d) posterior parameters (logvar clamped to [-30, 20]).
    z: the latent decoded (a posterior sample, or the mean).
    """

    mel_hat: Tensor
    mean: Tensor
    logvar: Tensor
    z: Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all elements (LDM sums; a mean keeps the
    weight independent of the latent size)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class LogMelL1Loss(nn.Module):
    """Mean |x - x_hat| of two log-mels (or any tensors of one shape): ``loss(x, x_hat)``."""

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
        return (x.float() - x_hat.float()).abs().mean()


class MelVAE(nn.Module):
    """Log-mel front end + diffusers ``AutoencoderKL`` + latent statistics (see the module docstring).

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max, clamp_eps: the mel.
        audio_channels: channels of the audio (2: stereo); each is encoded separately and the latents
            are stacked: ``audio_channels * latent_channels`` latent channels.
        block_out_channels: channels per level (ch * ch_mult); len - 1 downsamplings by 2 in time
            and frequency.
        layers_per_block, latent_channels, norm_num_groups, mid_block_add_attention: the VAE.
        statistics_samples: latent windows after which the normalization statistics freeze.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        n_fft: int = 2048,
        win_length: int = 2048,
        hop_length: int = 480,
        n_mels: int = 256,
        f_min: float = 20.0,
        f_max: float = 24000.0,
        clamp_eps: float = 1e-5,
        audio_channels: int = 2,
        block_out_channels: Sequence[int] = (128, 256, 512, 1024),
        layers_per_block: int = 2,
        latent_channels: int = 16,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        statistics_samples: int = 100_000,
    ):
        super().__init__()
        block_out_channels = [int(c) for c in block_out_channels]
        self.downsample = 2 ** (len(block_out_channels) - 1)
        if n_mels % self.downsample:
            raise ValueError(f"n_mels={n_mels} must be a multiple of the downsampling factor {self.downsample}")
        self._config = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "win_length": win_length,
            "hop_length": hop_length,
            "n_mels": n_mels,
            "f_min": float(f_min),
            "f_max": float(f_max),
            "clamp_eps": clamp_eps,
            "audio_channels": audio_channels,
            "block_out_channels": block_out_channels,
            "layers_per_block": layers_per_block,
            "latent_channels": latent_channels,
            "norm_num_groups": norm_num_groups,
            "mid_block_add_attention": mid_block_add_attention,
            "statistics_samples": statistics_samples,
        }
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.clamp_eps, self.audio_channels = n_mels, clamp_eps, audio_channels
        self.latent_channels = latent_channels
        levels = len(block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=n_mels,
            scaling_factor=1.0,
            mid_block_add_attention=mid_block_add_attention,
        )
        with torch.device("cpu"):  # also when built under a meta-device context (parameter counts)
            fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)  # slaney: librosa, as AudioLDM
        self.register_buffer("filterbank", fb, persistent=False)
        self.normalizer = LatentNormalizer(self.stacked_channels, self.latent_bins, statistics_samples)

    # -- geometry ------------------------------------------------------------------------------
    @property
    def stacked_channels(self) -> int:
        """Latent channels of all audio channels together (32 for stereo x 16)."""
        return self.audio_channels * self.latent_channels

    @property
    def latent_bins(self) -> int:
        return self.n_mels // self.downsample

    @property
    def mel_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (12.5 by default)."""
        return self.mel_rate / self.downsample

    def config(self) -> dict[str, Any]:
        """The init arguments (JSON-able): ``MelVAE(**config())`` rebuilds this architecture."""
        return json.loads(json.dumps(self._config))

    def latent_frames(self, num_samples: int) -> int:
        """Latent frames of ``num_samples`` audio samples (mel frames 1 + T // hop, cropped to d)."""
        return (1 + num_samples // self.hop_length) // self.downsample

    # -- mel -----------------------------------------------------------------------------------
    def mel(self, x: Tensor) -> Tensor:
        """(B, C, T) audio at ``sample_rate`` -> (B, C, N, n_mels) log-mel, float32, N cropped to a
        multiple of the downsampling factor (at least one latent frame)."""
        if x.dim() != 3 or x.shape[1] != self.audio_channels:
            raise ValueError(f"x must be (B, {self.audio_channels}, T) audio, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):  # float32 under mixed precision
            mel = log_mel_spectrogram(
                x.float(), self.filterbank, self.n_fft, self.hop_length, self.win_length, self.clamp_eps
            )
        return self.crop_frames(mel)

    def crop_frames(self, mel: Tensor) -> Tensor:
        frames = mel.shape[-2] // self.downsample * self.downsample
        if frames == 0:
            raise ValueError(
                f"{mel.shape[-2]} mel frames: need at least {self.downsample} (one latent frame); give longer audio"
            )
        return mel[..., :frames, :]

    # -- VAE -------------------------------------------------------------------------------------
    def _check_mel(self, mel: Tensor) -> None:
        if mel.dim() != 4 or mel.shape[1] != self.audio_channels or mel.shape[3] != self.n_mels:
            raise ValueError(f"mel must be (B, {self.audio_channels}, N, {self.n_mels}), got {tuple(mel.shape)}")
        if mel.shape[2] % self.downsample:
            raise ValueError(f"mel frames {mel.shape[2]} must be a multiple of {self.downsample} (crop_frames)")

    def posterior(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, N, n_mels) -> posterior (mean, logvar), each (B, C * L, N / d, n_mels / d)."""
        self._check_mel(mel)
        b, c, n, f = mel.shape
        dist = self.vae.encode(mel.reshape(b * c, 1, n, f)).latent_dist  # (B*C, 1, N, F) -> (B*C, L, N', F')

        def stack(t: Tensor) -> Tensor:  # (B*C, L, N', F') -> (B, C*L, N', F'): channel 0's L first
            return t.reshape(b, c * t.shape[1], *t.shape[2:])

        return stack(dist.mean), stack(dist.logvar)

    def encode_mel(self, mel: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, N, n_mels) -> latent (B, C * L, N / d, n_mels / d): the posterior mean, or a sample."""
        mean, logvar = self.posterior(mel)
        return _sample(mean, logvar, generator) if sample else mean

    def encode(self, x: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, T) audio -> latent (B, C * L, T', n_mels / d)."""
        return self.encode_mel(self.mel(x), sample, generator)

    def decode(self, z: Tensor) -> Tensor:
        """(B, C * L, N', F') latent -> (B, C, N' * d, F' * d) log-mel."""
        if z.dim() != 4 or z.shape[1] != self.stacked_channels or z.shape[3] != self.latent_bins:
            raise ValueError(f"z must be (B, {self.stacked_channels}, T, {self.latent_bins}), got {tuple(z.shape)}")
        b, _, t, f = z.shape
        mel = self.vae.decode(z.reshape(b * self.audio_channels, self.latent_channels, t, f)).sample
        return mel.reshape(b, self.audio_channels, *mel.shape[-2:])

    def forward(self, mel: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> MelVAEOutput:
        """Encode and decode a log-mel (B, C, N, n_mels)."""
        mean, logvar = self.posterior(mel)
        z = _sample(mean, logvar, generator) if sample else mean
        return MelVAEOutput(mel_hat=self.decode(z), mean=mean, logvar=logvar, z=z)

    def normalize(self, z: Tensor, update: bool = False) -> Tensor:
        """Normalized latents; ``update``: first add ``z`` to the statistics (until they freeze)."""
        if update:
            self.normalizer.update(z)
        return self.normalizer.normalize(z)

    def denormalize(self, z: Tensor) -> Tensor:
        return self.normalizer.denormalize(z)

    # -- files -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``<dir>/vae/`` (diffusers' own ``save_pretrained``), ``<dir>/melvae.json`` (the
        config) and ``<dir>/statistics.safetensors`` (the normalizer's buffers)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(directory / VAE_FOLDER, safe_serialization=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        stats = {name: buf.detach().cpu().contiguous() for name, buf in self.normalizer.state_dict().items()}
        save_file(stats, str(directory / STATISTICS_FILE))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MelVAE:
        """Load what :meth:`save_pretrained` wrote (a local directory)."""
        directory = Path(directory)
        for name in (CONFIG_FILE, STATISTICS_FILE, f"{VAE_FOLDER}/config.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; not a MelVAE.save_pretrained directory")
        config = json.loads((directory / CONFIG_FILE).read_text())
        model = cls(**config)
        vae = AutoencoderKL.from_pretrained(directory / VAE_FOLDER)
        for key in ("block_out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            mine, theirs = _plain(getattr(model.vae.config, key)), _plain(getattr(vae.config, key))
            if mine != theirs:
                raise ValueError(f"{directory}: {VAE_FOLDER}/config.json {key}={theirs} but {CONFIG_FILE} says {mine}")
        model.vae = vae
        model.normalizer.load_state_dict(load_file(str(directory / STATISTICS_FILE)))
        return model

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> MelVAE:
        """A save_pretrained directory, or a Lightning checkpoint of the Mel-VAE stage (state under
        ``vae.``) or of the flow stage (state under ``melvae.``), which store ``melvae_config``; read
        by :func:`~codecplatform.checkpoints.io.read_checkpoint` (tensors and plain data only).
        ValueError naming the file when it is missing, refused or not such a checkpoint."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path)
        checkpoint = read_checkpoint(
            path, "Mel-VAE or flow stage checkpoint", required={CHECKPOINT_CONFIG_KEY: dict, "state_dict": dict}
        )
        config = checkpoint[CHECKPOINT_CONFIG_KEY]
        state = checkpoint["state_dict"]
        for prefix in ("vae.", "melvae."):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                model = cls(**config)
                model.load_state_dict(sub, strict=True)
                return model
        raise ValueError(f"{path}: no Mel-VAE weights (keys starting with 'vae.' or 'melvae.')")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


class MelPatchDiscriminator(Discriminator):
    """PatchGAN on log-mels (LDM's ``NLayerDiscriminator`` shape, without BatchNorm): every audio
    channel is its own example. (B, C, N, n_mels) -> one sub-discriminator, logits (B*C, 1, N', F').

    Args:
        channels: output channels of the strided 4x4 convolutions (stride 2, LeakyReLU 0.2); a last
            stride-1 4x4 conv gives one logit per patch.
    """

    name = "mel_patch"

    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        layers, previous = [], 1
        for i, c in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers.append(nn.Conv2d(previous, c, 4, stride=stride, padding=1))
            previous = c
        self.layers = nn.ModuleList(layers)
        self.post = nn.Conv2d(previous, 1, 4, stride=1, padding=1)

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        if x.dim() != 4:
            raise ValueError(f"MelPatchDiscriminator takes (B, C, N, n_mels) log-mels, got {tuple(x.shape)}")
        h = x.reshape(-1, 1, *x.shape[-2:])  # (B*C, 1, N, F)
        features = []
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            features.append(h)
        return DiscriminatorOutput(logits=[self.post(h)], features=[features], names=[self.name])
