"""MelVAEModule: MuCodec stage "Mel-VAE" (AudioLDM-48k geometry), trained on log-mels of the audio.

One training batch (manual optimization): audio x (B, C, T) -> log-mel (B, C, N, n_mels) (no grad,
float32, cropped to whole latent frames) -> VAE with a posterior sample -> losses:

  ``mel``  L1 between the log-mels (``LogMelL1Loss``);
  ``kl``   KL of the posterior to N(0, I), averaged over latent elements;
  ``adv``, ``feat`` only with ``discriminators`` (off by default; the recipe, melvae.yaml, turns them
           on): then the step is the platform's ``GANStep`` (discriminator step, generator step), with
           the log-mel as the "signal" it compares, e.g. a ``MelPatchDiscriminator``; an
           ``AdaptiveAdversarialWeight`` balancer scales ``adv`` by the gradient ratio at the VAE
           decoder's output convolution (LDM's adaptive weight).

Weights: one ``loss_weights`` dict (log keys ``train/g/<name>``). Without discriminators the step is a
single optimizer step (non-finite gradients skipped and counted in ``skipped_steps``, optional
clipping). The VAE is the "generator" in every argument and log key (``generator_optimizer``,
``train/lr/generator``), with or without discriminators. ``batch_counter`` counts trained batches;
``max_batches`` stops training.

Validation/test: ``<stage>/mel_distance`` (L1 between the log-mel and its reconstruction from the
posterior mean; the checkpoint monitor), ``<stage>/kl``.

The latent normalization statistics are NOT collected here (the latents still move while the VAE
trains): the flow stage collects them with this VAE frozen. ``export_dir``: at the end of fit the VAE
is written with ``MelVAE.save_pretrained`` there; the flow stage loads that directory (or this
stage's ``.ckpt``, which stores ``melvae_config``) through ``melvae_checkpoint``.
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
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss
from codecplatform.losses.balancer import Balancer
from codecplatform.mucodec.melvae import CHECKPOINT_CONFIG_KEY, LogMelL1Loss, MelVAE, gaussian_kl

MEL, KL = "mel", "kl"


class MelVAEModule(TrainingModule):
    """Trains a :class:`~codecplatform.mucodec.melvae.MelVAE`.

    Args:
        vae: the Mel-VAE (its ``audio_channels`` and ``sample_rate`` must be the data's).
        loss_weights: ``mel``, ``kl`` (and ``adv``, ``feat`` with discriminators).
        discriminators: None (default) for no adversarial loss; else discriminators of log-mels.
        balancer: with discriminators, e.g. ``AdaptiveAdversarialWeight`` (given the decoder's last
            layer here); None: plain weights.
        gan_loss, feature_loss, discriminator_optimizer, discriminator_scheduler,
            discriminator_schedule, discriminator_grad_clip: of the adversarial step (see ``GANStep``).
        generator_optimizer, generator_scheduler: of the VAE (scheduler stepped per batch).
            Default optimizer (for the discriminators too): Adam 1e-4, betas (0.5, 0.9), the LDM
            autoencoder's.
        generator_grad_clip: max gradient norm of the VAE (None: none).
        max_batches: stop after this many batches.
        seed: seeds the posterior samples (batch index based, identical on every rank).
        export_dir: ``MelVAE.save_pretrained`` there at the end of fit (rank zero); None: no export.
    """

    default_optimizer = partial(torch.optim.Adam, lr=1e-4, betas=(0.5, 0.9))

    def __init__(
        self,
        vae: MelVAE,
        loss_weights: dict[str, float] | None = None,
        discriminators: list[Discriminator] | None = None,
        balancer: Balancer | None = None,
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
        seed: int = 0,
        export_dir: str | None = None,
    ):
        super().__init__(max_batches=max_batches)
        self.automatic_optimization = False
        self.vae = vae
        self.loss_weights = dict(loss_weights or {MEL: 1.0, KL: 1e-4})
        if generator_grad_clip is not None and generator_grad_clip <= 0:
            raise ValueError(f"generator_grad_clip must be > 0 or null, got {generator_grad_clip}")
        self.generator_grad_clip, self.seed, self.export_dir = generator_grad_clip, seed, export_dir
        self.generator_optimizer, self.generator_scheduler = generator_optimizer, generator_scheduler
        self.mel_loss = LogMelL1Loss()
        self.gan: GANStep | None = None
        if balancer is not None and not discriminators:
            raise ValueError("model.init_args.balancer needs discriminators (it weighs the adversarial loss)")
        if hasattr(balancer, "use_last_layer"):
            balancer.use_last_layer(vae.vae.decoder.conv_out.weight)
        if discriminators:
            self.gan = GANStep(
                discriminators,
                {MEL: self.mel_loss},
                self.loss_weights,
                gan_loss=gan_loss,
                feature_loss=feature_loss,
                balancer=balancer,
                generator_optimizer=generator_optimizer,
                discriminator_optimizer=discriminator_optimizer,
                generator_scheduler=generator_scheduler,
                discriminator_scheduler=discriminator_scheduler,
                discriminator_schedule=discriminator_schedule,
                generator_grad_clip=generator_grad_clip,
                discriminator_grad_clip=discriminator_grad_clip,
            )
        else:
            unknown = sorted(set(self.loss_weights) - {MEL, KL})
            missing = sorted({MEL, KL} - set(self.loss_weights))
            if unknown or missing:
                raise ValueError(
                    f"loss_weights must name exactly {MEL!r} and {KL!r} without discriminators "
                    f"(unknown: {unknown}, missing: {missing})"
                )
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))

    # -- set-up --------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.vae.sample_rate, "channels": self.vae.audio_channels}

    def configure_optimizers(self) -> Any:
        if self.gan is not None:
            return self.gan.configure_optimizers(self, self.vae.parameters())
        return self.make_optimizer(self.vae.parameters(), self.generator_optimizer, self.generator_scheduler)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        x = batch
        if self.skip_empty(x):
            return None
        step = int(self.batch_counter)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        with torch.no_grad():
            mel = self.vae.mel(x)
        out = self.vae(mel, sample=True, generator=device_generator(generator, mel.device))
        kl = gaussian_kl(out.mean.float(), out.logvar.float())
        if self.gan is not None:
            logs = self.gan.step(self, mel, GeneratorOutput(out.mel_hat, {KL: kl}))
            self.end_batch(logs, batch_size=x.shape[0])
            return logs
        losses = {MEL: self.mel_loss(mel, out.mel_hat), KL: kl}
        total = sum(self.loss_weights[name] * value for name, value in losses.items())
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(total)
        opt.step()
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.step()
        logs = {f"train/g/{name}": value.detach() for name, value in losses.items()}
        logs["train/g/loss"] = total.detach()
        logs["train/lr/generator"] = torch.tensor(opt.param_groups[0]["lr"])
        logs["train/skipped_steps/generator"] = self.skipped_steps.float()
        self.end_batch(logs, batch_size=x.shape[0])
        return logs

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After AMP unscaling: skip a non-finite step (counted), else clip."""
        if self.gan is not None:
            self.gan.on_before_optimizer_step(self, optimizer)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
        if not torch.isfinite(norm):
            for p in params:
                p.grad = None
            self.skipped_steps += 1
            return
        if self.generator_grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.generator_grad_clip, gradient_clip_algorithm="norm")

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, x: Tensor, stage: str) -> None:
        if x.shape[0] == 0:
            return
        mel = self.vae.mel(x)
        out = self.vae(mel, sample=False)
        self.log(
            f"{stage}/mel_distance",
            self.mel_loss(mel, out.mel_hat),
            on_epoch=True,
            sync_dist=True,
            batch_size=x.shape[0],
        )
        self.log(
            f"{stage}/kl",
            gaussian_kl(out.mean.float(), out.logvar.float()),
            on_epoch=True,
            sync_dist=True,
            batch_size=x.shape[0],
        )

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Reconstructed log-mel (B, C, N, n_mels) of the batch (posterior mean)."""
        return self.vae(self.vae.mel(batch), sample=False).mel_hat

    # -- checkpoints, export ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.vae.config()  # MelVAE.from_checkpoint rebuilds from it

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.vae.save_pretrained(self.export_dir)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The CPU generator on CPU; on an accelerator, a generator there seeded from it."""
    if device.type == "cpu":
        return generator
    g = torch.Generator(device=device)
    g.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    return g
