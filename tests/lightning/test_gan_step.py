"""GANStep reused by a module that is not a codec: a tiny mel -> audio vocoder trains through the same
G/D step as GANCodecModule and logs under the same keys; GANCodecModule's checkpoints hold the step's
state under ``gan.``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from codecplatform.discriminators.mpd import MultiPeriodDiscriminator
from codecplatform.dsp.spectral import mel_filterbank, safe_log, stft
from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.gan_step import GANStep, GeneratorOutput
from codecplatform.lightning.schedule import DiscriminatorSchedule
from codecplatform.losses.reconstruction import MultiScaleMelLoss

sys.path.insert(0, str(Path(__file__).parent))
from test_gan_codec import SR, NoiseAudio, changed, snapshot, tiny_module  # noqa: E402

HOP, N_MELS = 64, 16


def log_mel(x: Tensor) -> Tensor:
    """(B, 1, T) -> (B, N_MELS, T / HOP + 1) log-mel spectrogram."""
    spec = stft(x, n_fft=4 * HOP, hop_length=HOP).abs()[:, 0]  # (B, F, N)
    return safe_log(mel_filterbank(SR, 4 * HOP, N_MELS) @ spec)


class MelAudio(Dataset):
    """(log-mel, audio) pairs of NoiseAudio clips."""

    def __init__(self, n: int = 8):
        self.x = NoiseAudio(n=n).x  # (n, 1, 2048)
        self.mel = log_mel(self.x)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.mel[i], self.x[i]


class TinyVocoder(TrainingModule):
    """Two convolutions, mel (B, N_MELS, N) -> audio (B, 1, (N - 1) * HOP), trained with GANStep."""

    def __init__(
        self,
        discriminator_schedule: DiscriminatorSchedule | None = None,
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(
            nn.Conv1d(N_MELS, 32, kernel_size=3, padding=1),
            nn.Tanh(),
            nn.ConvTranspose1d(32, 1, kernel_size=HOP, stride=HOP),
        )
        self.gan = GANStep(
            discriminators=[MultiPeriodDiscriminator(periods=[2, 3], channels=[4, 8])],
            reconstruction_losses={"mel": MultiScaleMelLoss(SR, window_lengths=[64, 128], n_mels=[16, 16])},
            loss_weights=loss_weights or {"mel": 1.0, "adv": 1.0, "feat": 2.0},
            discriminator_schedule=discriminator_schedule,
        )

    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": SR}

    def configure_optimizers(self) -> Any:
        return self.gan.configure_optimizers(self, self.generator.parameters())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.gan.on_before_optimizer_step(self, optimizer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor] | None:
        mel, x = batch
        if self.skip_empty(x):
            return None
        x_hat = self.generator(mel[..., :-1])  # (B, 1, T)
        logs = self.gan.step(self, x, GeneratorOutput(x_hat))
        self.end_batch(logs, batch_size=x.shape[0])
        return logs


class StepLogs(Callback):
    """The values each training step returned (what it logged)."""

    def __init__(self):
        self.steps: list[dict[str, Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(dict(outputs or {}))


def fit(module: LightningModule, data: Dataset, batches: int) -> tuple[Trainer, StepLogs]:
    record = StepLogs()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    return trainer, record


def test_a_vocoder_trains_through_the_same_gan_step_with_the_same_log_keys():
    torch.manual_seed(0)
    vocoder = TinyVocoder()
    g_before, d_before = snapshot(vocoder.generator), snapshot(vocoder.gan.discriminator)
    trainer, record = fit(vocoder, MelAudio(), batches=2)

    assert changed(g_before, vocoder.generator) and changed(d_before, vocoder.gan.discriminator)
    assert int(vocoder.batch_counter) == 2
    assert trainer.global_step == 4  # two optimizer steps per batch
    assert vocoder.gan.skipped_steps.tolist() == [0, 0]
    keys = set(record.steps[-1])
    for key in (
        "train/g/mel",
        "train/g/adv",
        "train/g/feat",
        "train/g/grad_norm",
        "train/d/loss",
        "train/d/mpd_2",
        "train/d/mpd_3",
        "train/d/grad_norm",
        "train/d/accuracy",
        "train/lr/generator",
        "train/lr/discriminator",
        "train/skipped_steps/generator",
    ):
        assert key in keys, key
    assert all(torch.isfinite(v).all() for v in record.steps[-1].values())
    logged = trainer.callback_metrics
    assert "train/g/mel" in logged and "train/d/loss" in logged and float(logged["batches"]) == 2

    # GANCodecModule logs through the same step: the same keys, plus its own losses and codebook values
    _, codec_record = fit(tiny_module(), NoiseAudio(n=8), batches=1)
    codec_keys = set(codec_record.steps[-1])
    shared = {k for k in keys if not k.startswith("train/d/mpd")}  # sub-discriminator names differ
    assert shared <= codec_keys
    extra = {k for k in codec_keys - shared if not k.startswith("train/d/msstft")}
    assert "train/codebook/perplexity/0" in extra  # one key per codebook the batch used
    assert {k for k in extra if not k.startswith("train/codebook/")} == {"train/g/time", "train/g/commit", "train/n_q"}


@pytest.mark.parametrize(
    ("weights", "moves"),
    [
        ({"mel": 0.0, "adv": 1.0, "feat": 0.0}, True),
        ({"mel": 0.0, "adv": 0.0, "feat": 1.0}, True),
        ({"mel": 1.0, "adv": 0.0, "feat": 0.0}, True),
        ({"mel": 0.0, "adv": 0.0, "feat": 0.0}, False),
    ],
)
def test_each_weighted_loss_alone_moves_the_generator(weights, moves):
    torch.manual_seed(0)
    vocoder = TinyVocoder(loss_weights=weights)
    before = snapshot(vocoder.generator)
    fit(vocoder, MelAudio(), batches=1)
    assert changed(before, vocoder.generator) == moves


def test_the_schedule_and_the_checks_apply_to_any_generator():
    torch.manual_seed(0)
    vocoder = TinyVocoder(discriminator_schedule=DiscriminatorSchedule(start_step=1))
    d_before = snapshot(vocoder.gan.discriminator)
    _, record = fit(vocoder, MelAudio(), batches=1)
    assert not changed(d_before, vocoder.gan.discriminator)  # generator-only warm-up
    assert "train/d/loss" not in record.steps[0] and "train/g/adv" not in record.steps[0]

    with pytest.raises(ValueError, match="reserved names"):
        GANStep([], {"adv": nn.L1Loss()}, {"adv": 1.0, "feat": 1.0})
    with pytest.raises(ValueError, match="no weight"):
        GANStep([], {"mel": nn.L1Loss()}, {"adv": 1.0, "feat": 1.0})
    with pytest.raises(ValueError, match="generator_grad_clip"):
        GANStep([], {}, {"adv": 1.0, "feat": 1.0}, generator_grad_clip=0.0)


def test_discriminator_copies_are_selected_by_key():
    gan = GANStep(
        [MultiPeriodDiscriminator(periods=[2], channels=[4])],
        {},
        {"adv": 1.0, "feat": 1.0},
        discriminator_copies=["nq1", "nq2"],
    )
    assert set(gan.discriminator) == {"nq1", "nq2"}
    assert gan.select_discriminator("nq2") is gan.discriminator["nq2"]
    with pytest.raises(ValueError, match="no discriminator copy"):
        gan.select_discriminator("nq3")
    one = GANStep([MultiPeriodDiscriminator(periods=[2], channels=[4])], {}, {"adv": 1.0, "feat": 1.0})
    with pytest.raises(ValueError, match="one discriminator set"):
        one.select_discriminator("nq1")


def test_gan_codec_module_checkpoint_keys_are_the_modules_and_load_back():
    torch.manual_seed(0)
    module = tiny_module()
    state = module.state_dict()
    assert {k.split(".")[0] for k in state} == {"codec", "gan", "batch_counter"}
    assert "gan.skipped_steps" in state and any(k.startswith("gan.discriminator.") for k in state)

    state = {k: v.clone() for k, v in state.items()}
    state["batch_counter"] += 7
    state["gan.skipped_steps"][1] += 2
    other = tiny_module()
    other.load_state_dict(state, strict=True)
    assert int(other.batch_counter) == 7 and other.gan.skipped_steps.tolist() == [0, 2]
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    # a vocoder composes the step under the same name
    assert {k.split(".")[0] for k in TinyVocoder().state_dict()} == {"generator", "gan", "batch_counter"}
