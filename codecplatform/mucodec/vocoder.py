"""MuCodec's vocoder: HiFi-GAN (transformers ``SpeechT5HifiGan``) from the Mel-VAE's log-mel to 48 kHz audio.

Geometry (AudioLDM 48 kHz ``hifigan_48k``, what MuCodec's ``tools/get_melvaehifigan48k.py`` builds;
Xu et al. 2024, xuyaoxun/MuCodec):
256 mel bins in, upsample rates [6, 5, 4, 2, 2] (x480 = the mel hop), kernels [12, 10, 8, 4, 4],
1536 initial channels, resblock type 1 with kernels [3, 7, 11, 15], dilations [1, 3, 5] each,
LeakyReLU 0.1 (0.01 before ``conv_post``, transformers' default), tanh; ``normalize_before=False``
(the log-mel goes in as it is). Weight norm on every convolution while training (HiFi-GAN).

The mel is the Mel-VAE's (:func:`codecplatform.dsp.spectral.log_mel_spectrogram` with the same
parameters as :class:`~codecplatform.mucodec.melvae.MelVAE`: n_fft = window 2048, hop 480,
256 slaney mels 20 Hz .. 24 kHz, natural log of max(mel, 1e-5)); :meth:`HifiGanVocoder.mel_config`
and :meth:`HifiGanVocoder.check_mel_matches` compare them with a Mel-VAE's.

Shapes:
    audio  (B, C, T)                 every channel is vocoded on its own (shared weights)
    mel    (B, C, N, n_mels)         time major, as the Mel-VAE's (``mel(x)``: N = 1 + T // hop)
    output (B, C, N * hop)           the generator gives N * hop + 16 samples (transformers' padding of
                                     the kernel-10 / rate-5 upsampler adds one sample there): cropped

Inference on long mels (:meth:`HifiGanVocoder.synthesize`) runs in crossfaded chunks of 1024 frames
every 256, as the official MuCodec inference does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.dsp.spectral import log_mel_spectrogram, mel_filterbank

CONFIG_FILE = "vocoder.json"
CHECKPOINT_CONFIG_KEY = "vocoder_config"  # a vocoder stage checkpoint's copy of HifiGanVocoder.config()
# official inference (https://github.com/xuyaoxun/MuCodec tools/get_melvaehifigan48k.py, vocoder_chunk_infer)
CHUNK_FRAMES, HOP_FRAMES = 1024, 256
MEL_FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max", "clamp_eps")


def _weight_normed_convs(model: SpeechT5HifiGan) -> list[nn.Module]:
    convs: list[nn.Module] = [model.conv_pre, *model.upsampler]
    for block in model.resblocks:
        convs += [*block.convs1, *block.convs2]
    return [*convs, model.conv_post]


class HifiGanVocoder(nn.Module):
    """Log-mel (B, C, N, n_mels) -> audio (B, C, N * hop) with a transformers ``SpeechT5HifiGan``.

    Args:
        sample_rate, n_fft, win_length, hop_length, n_mels, f_min, f_max, clamp_eps: the mel (the Mel-VAE's).
        upsample_initial_channel, upsample_rates, upsample_kernel_sizes, resblock_kernel_sizes,
            resblock_dilation_sizes, leaky_relu_slope: the HiFi-GAN (``SpeechT5HifiGanConfig``);
            the product of ``upsample_rates`` must be ``hop_length``.
        weight_norm: weight norm on every convolution (HiFi-GAN trains with it; saved files fold it in).
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
        upsample_initial_channel: int = 1536,
        upsample_rates: Sequence[int] = (6, 5, 4, 2, 2),
        upsample_kernel_sizes: Sequence[int] = (12, 10, 8, 4, 4),
        resblock_kernel_sizes: Sequence[int] = (3, 7, 11, 15),
        resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5), (1, 3, 5)),
        leaky_relu_slope: float = 0.1,
        weight_norm: bool = True,
    ):
        super().__init__()
        rates = [int(r) for r in upsample_rates]
        product = 1
        for r in rates:
            product *= r
        if product != hop_length:
            raise ValueError(
                f"the product of upsample_rates {rates} is {product}; it must equal hop_length={hop_length}"
            )
        if upsample_initial_channel // 2 ** len(rates) < 1:
            raise ValueError(
                f"upsample_initial_channel={upsample_initial_channel} halves {len(rates)} times: "
                f"give at least {2 ** len(rates)}"
            )
        if len(upsample_kernel_sizes) != len(rates):
            raise ValueError(f"upsample_kernel_sizes {list(upsample_kernel_sizes)} needs one kernel per rate {rates}")
        if len(resblock_dilation_sizes) != len(resblock_kernel_sizes):
            raise ValueError("resblock_dilation_sizes needs one dilation list per resblock kernel size")
        self._config = {
            "sample_rate": sample_rate,
            "n_fft": n_fft,
            "win_length": win_length,
            "hop_length": hop_length,
            "n_mels": n_mels,
            "f_min": float(f_min),
            "f_max": float(f_max),
            "clamp_eps": clamp_eps,
            "upsample_initial_channel": upsample_initial_channel,
            "upsample_rates": rates,
            "upsample_kernel_sizes": [int(k) for k in upsample_kernel_sizes],
            "resblock_kernel_sizes": [int(k) for k in resblock_kernel_sizes],
            "resblock_dilation_sizes": [[int(d) for d in ds] for ds in resblock_dilation_sizes],
            "leaky_relu_slope": leaky_relu_slope,
            "weight_norm": weight_norm,
        }
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.clamp_eps = n_mels, clamp_eps
        self.hifigan = SpeechT5HifiGan(self.hifigan_config())
        self.weight_norm = False
        if weight_norm:
            self.apply_weight_norm()
        with torch.device("cpu"):  # also when built under a meta-device context (parameter counts)
            fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)  # slaney: librosa, as AudioLDM
        self.register_buffer("filterbank", fb, persistent=False)

    # -- configuration ---------------------------------------------------------------------------
    def hifigan_config(self) -> SpeechT5HifiGanConfig:
        c = self._config
        return SpeechT5HifiGanConfig(
            model_in_dim=c["n_mels"],
            sampling_rate=c["sample_rate"],
            upsample_initial_channel=c["upsample_initial_channel"],
            upsample_rates=c["upsample_rates"],
            upsample_kernel_sizes=c["upsample_kernel_sizes"],
            resblock_kernel_sizes=c["resblock_kernel_sizes"],
            resblock_dilation_sizes=c["resblock_dilation_sizes"],
            leaky_relu_slope=c["leaky_relu_slope"],
            normalize_before=False,
        )

    def config(self) -> dict[str, Any]:
        """The init arguments (JSON-able): ``HifiGanVocoder(**config())`` rebuilds this architecture."""
        return json.loads(json.dumps(self._config))

    def mel_config(self) -> dict[str, Any]:
        return {k: self._config[k] for k in MEL_FIELDS}

    def check_mel_matches(self, melvae: nn.Module, source: str = "vocoder") -> None:
        """ValueError naming ``source`` and the field when a Mel-VAE's mel differs from this vocoder's."""
        theirs = melvae.config()
        for key in MEL_FIELDS:
            if float(theirs[key]) != float(self._config[key]):
                raise ValueError(
                    f"{source}: the vocoder's mel {key}={self._config[key]} but the Mel-VAE's is {theirs[key]}: "
                    "the vocoder must be trained on the Mel-VAE's log-mel"
                )

    # -- weight norm -----------------------------------------------------------------------------
    def apply_weight_norm(self) -> None:
        if not self.weight_norm:
            for conv in _weight_normed_convs(self.hifigan):
                parametrizations.weight_norm(conv)
            self.weight_norm = True

    def remove_weight_norm(self) -> None:
        """Fold the weight norm into plain weights (inference; transformers' own helper expects the old API)."""
        if self.weight_norm:
            for conv in _weight_normed_convs(self.hifigan):
                parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
            self.weight_norm = False

    # -- mel and synthesis -----------------------------------------------------------------------
    def mel(self, x: Tensor) -> Tensor:
        """(B, C, T) audio -> (B, C, 1 + T // hop, n_mels) log-mel (the Mel-VAE's), float32."""
        if x.dim() != 3:
            raise ValueError(f"x must be (B, C, T) audio, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return log_mel_spectrogram(
                x.float(), self.filterbank, self.n_fft, self.hop_length, self.win_length, self.clamp_eps
            )

    def forward(self, mel: Tensor) -> Tensor:
        """(B, C, N, n_mels) log-mel -> (B, C, N * hop) audio in [-1, 1]."""
        if mel.dim() != 4 or mel.shape[-1] != self.n_mels:
            raise ValueError(f"mel must be (B, C, N, {self.n_mels}), got {tuple(mel.shape)}")
        b, c, n, f = mel.shape
        audio = self.hifigan(mel.reshape(b * c, n, f))  # (B*C, N, F) -> (B*C, N * hop + extra)
        length = n * self.hop_length
        if audio.shape[-1] < length:
            audio = nn.functional.pad(audio, (0, length - audio.shape[-1]))
        return audio[:, :length].reshape(b, c, length)

    @torch.no_grad()
    def synthesize(self, mel: Tensor, chunk_frames: int | None = CHUNK_FRAMES, hop_frames: int = HOP_FRAMES) -> Tensor:
        """Inference on mels of any length: (B, C, N, n_mels) -> (B, C, N * hop), vocoded in chunks.

        As the official inference (MuCodec ``vocoder_chunk_infer``): chunks of ``chunk_frames`` mel
        frames start every ``hop_frames``; each chunk is vocoded on its own and crossfaded linearly
        into the output over its overlap with the previous one (``chunk_frames - hop_frames`` frames:
        the output so far fades out while the chunk fades in), the last chunk ending at N. Away from
        the chunk borders (multiples of ``hop_frames``, farther than the generator's receptive field)
        the result equals one pass; the generator never sees more than ``chunk_frames`` frames, so
        its activations are bounded by a chunk, not the file. ``chunk_frames`` None, or N <=
        ``chunk_frames``: one pass (:meth:`forward`; the official code instead crops a short input
        to a multiple of ``chunk_frames`` samples).

        Raises:
            ValueError: ``chunk_frames`` < 1 or ``hop_frames`` outside [1, ``chunk_frames``].
        """
        if chunk_frames is not None and (chunk_frames < 1 or not 1 <= hop_frames <= chunk_frames):
            raise ValueError(
                f"vocoder chunks: need chunk_frames >= 1 and 1 <= hop_frames <= chunk_frames, "
                f"got {chunk_frames} and {hop_frames}"
            )
        n = mel.shape[2] if mel.dim() == 4 else 0
        if chunk_frames is None or n <= chunk_frames:
            return self(mel)
        hop = self.hop_length
        overlap = (chunk_frames - hop_frames) * hop
        ramp = torch.linspace(0, 1, overlap, device=mel.device)
        out: Tensor | None = None
        start = 0
        while True:
            piece = self(mel[:, :, start : start + chunk_frames])  # (B, C, frames * hop)
            if out is None:
                out = piece.new_empty(*piece.shape[:2], n * hop)
                out[..., : piece.shape[-1]] = piece
            else:
                s = start * hop  # the output so far ends at s + overlap (the previous chunk was whole)
                out[..., s : s + overlap] = out[..., s : s + overlap] * (1 - ramp) + piece[..., :overlap] * ramp
                out[..., s + overlap : s + piece.shape[-1]] = piece[..., overlap:]
            if start + chunk_frames >= n:
                return out
            start += hop_frames

    # -- files -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """transformers' ``save_pretrained`` of the HiFi-GAN (weight norm folded in) + ``vocoder.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # a fresh model with the folded weights (removing the parametrization of a deep copy would
        # remove it from the class the original shares)
        plain = SpeechT5HifiGan(self.hifigan.config)
        state = {k: v for k, v in self.hifigan.state_dict().items() if ".parametrizations." not in k}
        for name, module in self.hifigan.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                state[f"{name}.weight"] = module.weight.detach()
        plain.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=True)
        plain.save_pretrained(directory, safe_serialization=True)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, weight_norm: bool | None = None) -> HifiGanVocoder:
        """Load what :meth:`save_pretrained` wrote (a local directory); ``weight_norm`` None: as saved."""
        directory = Path(directory)
        for name in (CONFIG_FILE, "config.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; not a HifiGanVocoder.save_pretrained directory")
        config = json.loads((directory / CONFIG_FILE).read_text())
        wanted = config["weight_norm"] if weight_norm is None else weight_norm
        model = cls(**{**config, "weight_norm": False})
        hifigan = SpeechT5HifiGan.from_pretrained(directory)
        mine, theirs = model.hifigan.config.to_dict(), hifigan.config.to_dict()
        for key in ("model_in_dim", "upsample_initial_channel", "upsample_rates", "resblock_kernel_sizes"):
            if _plain(mine[key]) != _plain(theirs[key]):
                raise ValueError(f"{directory}: config.json {key}={theirs[key]} but {CONFIG_FILE} says {mine[key]}")
        model.hifigan = hifigan
        model._config["weight_norm"] = False
        if wanted:
            model.apply_weight_norm()
            model._config["weight_norm"] = True
        return model

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> HifiGanVocoder:
        """A save_pretrained directory or a vocoder stage ``.ckpt`` (``vocoder_config``, ``vocoder.*``),
        read by :func:`~codecplatform.checkpoints.io.read_checkpoint` (tensors and plain data only).
        ValueError naming the file when it is missing, refused or not a vocoder stage checkpoint."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path)
        checkpoint = read_checkpoint(
            path, "vocoder stage checkpoint", required={CHECKPOINT_CONFIG_KEY: dict, "state_dict": dict}
        )
        config = checkpoint[CHECKPOINT_CONFIG_KEY]
        state = {k[len("vocoder.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("vocoder.")}
        if not state:
            raise ValueError(f"{path}: no vocoder weights (keys starting with 'vocoder.')")
        model = cls(**config)
        model.load_state_dict(state, strict=True)
        return model

    def num_parameters(self) -> dict[str, int]:
        """``total`` (as built: with weight norm, the extra gains count) and ``inference`` (weight norm folded)."""
        total = sum(p.numel() for p in self.parameters())
        gains = 0
        if self.weight_norm:
            gains = sum(conv.parametrizations.weight.original0.numel() for conv in _weight_normed_convs(self.hifigan))
        return {"total": total, "inference": total - gains}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class LogMelL1Loss(nn.Module):
    """HiFi-GAN's mel loss: mean |logmel(x) - logmel(x_hat)| of audio (B, C, T), with the vocoder's mel
    (its own filterbank buffer; the same :func:`log_mel_spectrogram`). ``loss(x, x_hat)``."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        win_length: int,
        hop_length: int,
        n_mels: int,
        f_min: float,
        f_max: float,
        clamp_eps: float,
    ):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length, self.clamp_eps = n_fft, win_length, hop_length, clamp_eps
        with torch.device("cpu"):
            fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("filterbank", fb, persistent=False)

    def forward(self, x: Tensor, x_hat: Tensor) -> Tensor:
        if x.shape != x_hat.shape:
            raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
        with torch.autocast(device_type=x.device.type, enabled=False):
            args = (self.filterbank, self.n_fft, self.hop_length, self.win_length, self.clamp_eps)
            return (log_mel_spectrogram(x.float(), *args) - log_mel_spectrogram(x_hat.float(), *args)).abs().mean()


__all__ = ["HifiGanVocoder", "LogMelL1Loss"]
