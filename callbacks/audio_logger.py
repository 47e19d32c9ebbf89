"""Logs reconstructions of a fixed set of validation examples: wav files and spectrograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from callbacks.artifacts import artifact_folder, batch_audio, batches_seen, module_codec, validation_folder
from codecplatform.dsp.spectral import mel_filterbank, stft
from codecplatform.models.base import AudioCodec


class AudioReconstructionLogger(Callback):
    """Every ``every_n_validations``-th validation (sanity checks not counted), reconstructs the
    same ``num_examples`` validation examples with all codebooks (``codec.encode`` then
    ``codec.decode``, the inference path) and logs, per example ``i``:

    - ``audio/val_<batches>/example_<i>_original.wav`` and ``..._reconstruction.wav`` (float,
      the codec's sample rate, all channels);
    - ``audio/val_<batches>/example_<i>.png``: log-mel spectrograms in dB, original left and
      reconstruction right, one row per channel, on one colour scale.

    ``<batches>`` is the number of training batches so far, 7 digits. The examples come from the
    first validation on global rank zero: the first ``examples_per_batch`` of each of its batches
    until there are ``num_examples`` (one per batch spreads them over the validation set when its
    batches hold consecutive windows of a file), cropped to ``max_seconds``. They are kept on the
    CPU and reused for every later validation, so listeners compare the same audio over training.
    Files go to the MLflow run, or without an MLflow logger to ``<trainer.log_dir>/artifacts/``
    (see ``callbacks.artifacts``). Only rank zero encodes and writes; there are no collectives.

    Args:
        every_n_validations: log at validations N, 2N, ... (1: every validation).
        num_examples: how many validation examples to follow.
        examples_per_batch: how many of them to take from one validation batch at most.
        max_seconds: crop each example to its first ``max_seconds`` (None: keep the whole window).
        n_fft, hop_length, n_mels: the spectrogram's STFT size, hop (None: n_fft // 4) and mel bands.
        audio_key: the audio's key when batches are mappings.
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_examples: int = 4,
        examples_per_batch: int = 1,
        max_seconds: float | None = 5.0,
        n_fft: int = 1024,
        hop_length: int | None = None,
        n_mels: int = 80,
        audio_key: str = "audio",
    ):
        super().__init__()
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if examples_per_batch < 1:
            raise ValueError(f"examples_per_batch must be >= 1, got {examples_per_batch}")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 or null, got {max_seconds}")
        if n_fft < 2 or n_mels < 1 or (hop_length is not None and hop_length < 1):
            raise ValueError(f"need n_fft >= 2, n_mels >= 1, hop_length >= 1; got {n_fft}, {n_mels}, {hop_length}")
        self.every_n_validations = every_n_validations
        self.num_examples = num_examples
        self.examples_per_batch = examples_per_batch
        self.max_seconds = max_seconds
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.n_mels = n_mels
        self.audio_key = audio_key
        self.validations = 0
        self.examples: list[Tensor] = []  # each (C, T) float32 on the CPU

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict["validations"])

    # -- hooks ------------------------------------------------------------------------------
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0:
            return
        if len(self.examples) >= self.num_examples:
            return
        x = batch_audio(batch, self.audio_key)
        if self.max_seconds is not None:
            sample_rate = module_codec(pl_module, "AudioReconstructionLogger").sample_rate
            x = x[..., : max(1, int(self.max_seconds * sample_rate))]
        for clip in x[: min(self.examples_per_batch, self.num_examples - len(self.examples))]:
            self.examples.append(clip.detach().float().cpu().clone())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_validations or not trainer.is_global_zero or not self.examples:
            return
        codec = module_codec(pl_module, "AudioReconstructionLogger")
        reconstructions = self.reconstruct(codec)
        folder = validation_folder("audio", batches_seen(trainer, pl_module))
        with artifact_folder(trainer, folder) as out:
            for i, (x, x_hat) in enumerate(zip(self.examples, reconstructions)):
                self.write_example(out, i, x, x_hat, int(codec.sample_rate))

    # -- work -------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, codec: AudioCodec) -> list[Tensor]:
        """Each example (C, T) encoded and decoded by the codec (the inference path of the codec
        interface) in eval mode, all codebooks -> (C, T) float32 CPU."""
        param = next(codec.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        was_training = codec.training
        codec.eval()
        try:
            out = [
                codec.decode(codec.encode(x[None].to(device=device, dtype=dtype), n_q=codec.n_q))[0].float().cpu()
                for x in self.examples
            ]
        finally:
            codec.train(was_training)
        return out

    def write_example(self, out: Path, i: int, x: Tensor, x_hat: Tensor, sample_rate: int) -> None:
        """Two wav files and the spectrogram PNG of example ``i``; x, x_hat (C, T)."""
        for name, audio in (("original", x), ("reconstruction", x_hat)):
            sf.write(out / f"example_{i}_{name}.wav", audio.t().numpy(), sample_rate, subtype="FLOAT")  # (T, C)
        spectrogram_figure(
            [self.log_mel(x, sample_rate), self.log_mel(x_hat, sample_rate)],
            ["original", "reconstruction"],
            sample_rate=sample_rate,
            hop_length=self.hop_length,
            title=f"example {i}",
        ).savefig(out / f"example_{i}.png", dpi=100)

    def log_mel(self, x: Tensor, sample_rate: int) -> Tensor:
        """(C, T) -> log-mel power spectrogram in dB (C, n_mels, N)."""
        n_fft = self.n_fft
        spec = stft(x[None], n_fft=n_fft, hop_length=self.hop_length)[0].abs().pow(2)  # (C, F, N)
        mel = mel_filterbank(sample_rate, n_fft, self.n_mels) @ spec  # (n_mels, F) @ (C, F, N) -> (C, n_mels, N)
        return 10.0 * torch.log10(mel.clamp(min=1e-10))


def spectrogram_figure(
    spectrograms: list[Tensor],
    titles: list[str],
    sample_rate: int,
    hop_length: int,
    title: str = "",
    range_db: float = 80,
) -> Any:
    """A matplotlib Figure (Agg canvas, no pyplot state): one column per (C, n_mels, N) spectrogram
    in dB, one row per channel, all on the colour scale [peak - range_db, peak] of the first."""
    from matplotlib.figure import Figure

    channels = spectrograms[0].shape[0]
    vmax = float(spectrograms[0].max())
    vmin = vmax - range_db
    height = 2.6 * channels + 0.8
    fig = Figure(figsize=(5 * len(spectrograms), height))  # a fixed layout: half the drawing time of "constrained"
    fig.subplots_adjust(left=0.06, right=0.93, bottom=0.5 / height, top=1 - 0.6 / height, wspace=0.08, hspace=0.3)
    axes = fig.subplots(channels, len(spectrograms), squeeze=False, sharex=True, sharey=True)
    image = None
    for col, (spec, name) in enumerate(zip(spectrograms, titles)):
        for c in range(channels):
            ax = axes[c][col]
            frames = spec.shape[-1]
            image = ax.imshow(
                spec[c].numpy(),
                origin="lower",
                aspect="auto",
                vmin=vmin,
                vmax=vmax,
                cmap="magma",
                extent=(0, frames * hop_length / sample_rate, 0, spec.shape[-2]),
            )
            ax.set_title(name if channels == 1 else f"{name}, channel {c}")
            if c == channels - 1:
                ax.set_xlabel("seconds")
            if col == 0:
                ax.set_ylabel("mel band")
    if image is not None:
        fig.colorbar(image, ax=axes, label="dB", fraction=0.03, pad=0.02)
    if title:
        fig.suptitle(title)
    return fig
