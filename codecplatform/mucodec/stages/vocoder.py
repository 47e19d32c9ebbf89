"""HifiGanVocoderModule: MuCodec stage "vocoder" (HiFi-GAN from the Mel-VAE's log-mel to 48 kHz audio).

One training batch (manual optimization, the platform's ``GANStep``): audio x (B, C, T) (T cropped to
whole mel hops: 15360 samples = 32 frames in the real config) -> log-mel (no grad, float32, the
Mel-VAE's mel, the last centered frame dropped: N = T / hop frames) -> ``HifiGanVocoder`` -> x_hat
(B, C, T), every channel vocoded on its own -> ``GANStep.step``: discriminator step (MPD + MSD), then
generator step with HiFi-GAN's losses and weights: ``mel`` 45 (L1 of log-mels, ``LogMelL1Loss``),
``feat`` 2 (L1 feature matching summed over layers and sub-discriminators), ``adv`` 1 (least squares,
summed over sub-discriminators). Log keys: GANStep's (``train/g/mel``, ``train/g/adv``,
``train/g/feat``, ``train/d/*``) and ``batches``.

Validation/test: ``<stage>/mel_distance`` (L1 of log-mels of x and x_hat: the checkpoint monitor) and
GANStep's ``<stage>/g/mel``.

Checkpoints store ``vocoder_config`` (``HifiGanVocoder.from_checkpoint`` rebuilds from a ``.ckpt``);
``export_dir``: at the end of fit, ``HifiGanVocoder.save_pretrained`` there (transformers' files).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from codecplatform.discriminators.base import Discriminator
from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.gan_step import GANStep, GeneratorOutput
from codecplatform.lightning.schedule import DiscriminatorSchedule
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss, L1FeatureMatchingLoss, LeastSquaresGANLoss
from codecplatform.mucodec.vocoder import CHECKPOINT_CONFIG_KEY, HifiGanVocoder, LogMelL1Loss

MEL = "mel"
HIFIGAN_WEIGHTS = {MEL: 45.0, "feat": 2.0, "adv": 1.0}


class HifiGanVocoderModule(TrainingModule):
    """Trains a :class:`~codecplatform.mucodec.vocoder.HifiGanVocoder` with MPD + MSD.

    Args:
        vocoder: the HiFi-GAN and its mel (the Mel-VAE's).
        discriminators: of audio (B, C, T) (HiFi-GAN: MPD 2/3/5/7/11 + MSD 3 scales, LeakyReLU 0.1).
        loss_weights: ``mel``, ``feat``, ``adv`` (default HiFi-GAN's 45, 2, 1).
        gan_loss: default least squares summed over sub-discriminators (HiFi-GAN).
        feature_loss: default L1 summed over layers and sub-discriminators (HiFi-GAN).
        generator_optimizer, discriminator_optimizer: default AdamW 1e-4, betas (0.8, 0.99).
        generator_scheduler, discriminator_scheduler: stepped once per batch.
        discriminator_schedule, generator_grad_clip, discriminator_grad_clip: see ``GANStep``.
        max_batches: stop after this many batches (None: the trainer decides).
        export_dir: ``HifiGanVocoder.save_pretrained`` there at the end of fit (rank zero).
    """

    # AudioLDM's HiFi-GAN (HiFi-GAN V1 uses lr 2e-4), for the vocoder and the discriminators alike
    default_optimizer = partial(torch.optim.AdamW, lr=1e-4, betas=(0.8, 0.99))

    def __init__(
        self,
        vocoder: HifiGanVocoder,
        discriminators: list[Discriminator],
        loss_weights: dict[str, float] | None = None,
        gan_loss: GANLoss | None = None,
        feature_loss: FeatureMatchingLoss | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        generator_scheduler: LRSchedulerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        discriminator_schedule: DiscriminatorSchedule | None = None,
        generator_grad_clip: float | None = None,
        discriminator_grad_clip: float | None = None,
        max_batches: int | None = None,
        export_dir: str | None = None,
    ):
        super().__init__(max_batches=max_batches)
        self.automatic_optimization = False
        self.vocoder = vocoder
        self.export_dir = export_dir
        self.loss_weights = dict(HIFIGAN_WEIGHTS if loss_weights is None else loss_weights)
        self.mel_loss = LogMelL1Loss(**vocoder.mel_config())
        self.gan = GANStep(
            discriminators,
            {MEL: LogMelL1Loss(**vocoder.mel_config())},
            self.loss_weights,
            gan_loss=gan_loss or LeastSquaresGANLoss(reduction="sum"),
            feature_loss=feature_loss or L1FeatureMatchingLoss(reduction="sum"),
            generator_optimizer=generator_optimizer,
            discriminator_optimizer=discriminator_optimizer,
            generator_scheduler=generator_scheduler,
            discriminator_scheduler=discriminator_scheduler,
            discriminator_schedule=discriminator_schedule,
            generator_grad_clip=generator_grad_clip,
            discriminator_grad_clip=discriminator_grad_clip,
        )

    # -- set-up --------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.vocoder.sample_rate}  # any channel count: each is vocoded on its own

    def configure_optimizers(self) -> Any:
        return self.gan.configure_optimizers(self, self.vocoder.parameters())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.gan.on_before_optimizer_step(self, optimizer)

    # -- the generator ---------------------------------------------------------------------------
    def crop(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T // hop * hop); ValueError below one hop."""
        hop = self.vocoder.hop_length
        frames = x.shape[-1] // hop
        if frames == 0:
            raise ValueError(f"{x.shape[-1]} samples: need at least one mel hop ({hop}); give longer segments")
        return x[..., : frames * hop]

    def generate(self, x: Tensor) -> Tensor:
        """Audio (B, C, T), T a multiple of hop -> its re-synthesis (B, C, T) from its log-mel."""
        with torch.no_grad():
            mel = self.vocoder.mel(x)[:, :, : x.shape[-1] // self.vocoder.hop_length]  # (B, C, T / hop, M)
        return self.vocoder(mel)

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        x = batch
        if self.skip_empty(x):
            return None
        x = self.crop(x.float())
        logs = self.gan.step(self, x, GeneratorOutput(self.generate(x)))
        self.end_batch(logs, batch_size=x.shape[0])
        return logs

    def _evaluate(self, x: Tensor, stage: str) -> None:
        if x.shape[0] == 0:
            return
        x = self.crop(x.float())
        x_hat = self.generate(x)
        self.log(f"{stage}/mel_distance", self.mel_loss(x, x_hat), on_epoch=True, sync_dist=True, batch_size=x.shape[0])
        self.gan.log_reconstruction(self, stage, x, x_hat)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Re-synthesized audio (B, C, T') of the batch (T' = T cropped to whole hops)."""
        return self.generate(self.crop(batch.float()))

    # -- checkpoints, export ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.vocoder.config()

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.vocoder.save_pretrained(self.export_dir)


__all__ = ["HifiGanVocoderModule", "HIFIGAN_WEIGHTS"]
