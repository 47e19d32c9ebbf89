"""GANCodecModule: adversarial codec training with manual optimization.

One training batch:
  1. codec forward (codebook counts drawn with a generator seeded from the batch index);
  2. discriminator step on ``x_hat.detach()`` when the schedule says so;
  3. generator step: reconstruction losses, adversarial and feature-matching losses against the
     just-updated discriminator, quantizer losses; weighted by ``loss_weights`` or balanced;
  4. both schedulers step once; the module's own batch counter advances.

Gradient clipping and the non-finite check run in ``on_before_optimizer_step``: Lightning calls
it inside ``optimizer.step()`` after AMP unscaling, so the norm is the true one under 16-mixed.
A step whose gradient norm is not finite is skipped (gradients dropped, counted in
``skipped_steps``). ``trainer.global_step`` counts optimizer steps (up to two per batch); use
``max_batches`` to stop after a number of batches.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn

from codecplatform.discriminators.base import Discriminator, MultiDiscriminator
from codecplatform.lightning.schedule import DiscriminatorSchedule, uniform_from
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss, HingeGANLoss, RelativeFeatureMatchingLoss
from codecplatform.losses.balancer import Balancer
from codecplatform.metrics.reconstruction import SISDR, MelDistance
from codecplatform.models.codec import Codec

ADVERSARIAL = "adv"
FEATURE_MATCHING = "feat"
GENERATOR, DISCRIMINATOR = 0, 1


class GANCodecModule(LightningModule):
    """Trains a ``Codec`` against one or more discriminators.

    Args:
        codec: the generator (encoder, quantizer, decoder).
        discriminators: run on the same input; their outputs are concatenated.
        reconstruction_losses: name -> loss module called as ``loss(x, x_hat)``.
        loss_weights: one weight per loss name: the reconstruction names, ``adv`` (adversarial),
            ``feat`` (feature matching) and the quantizer's losses (``commit``, ``codebook``).
            The same names are the log keys ``train/g/<name>``.
        gan_loss: adversarial loss (default hinge, EnCodec).
        feature_loss: feature-matching loss (default relative L1, EnCodec).
        balancer: when set, losses that depend only on x_hat are balanced (EnCodec); the
            quantizer losses are added with their plain weights.
        generator_optimizer, discriminator_optimizer: optimizer factories (default Adam,
            lr 3e-4, betas (0.5, 0.9), EnCodec).
        generator_scheduler, discriminator_scheduler: stepped once per batch.
        discriminator_schedule: start step, period and probability of discriminator updates.
        generator_grad_clip, discriminator_grad_clip: max gradient norms (None: no clipping).
        max_batches: stop training after this many batches (None: the trainer decides).
        seed: seeds the per-batch draws (quantizer dropout), identical on all ranks.
        init_codec_from: a file with codec weights to start fitting from: an imported official
            checkpoint (``codecplatform import-checkpoint``) or a training checkpoint. Loaded
            strictly in ``setup("fit")``; a different architecture is an error naming the keys.
            Resuming with ``--ckpt_path`` restores that checkpoint's weights afterwards.
    """

    def __init__(
        self,
        codec: Codec,
        discriminators: list[Discriminator],
        reconstruction_losses: dict[str, nn.Module],
        loss_weights: dict[str, float],
        gan_loss: GANLoss | None = None,
        feature_loss: FeatureMatchingLoss | None = None,
        balancer: Balancer | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        generator_scheduler: LRSchedulerCallable | None = None,
        discriminator_scheduler: LRSchedulerCallable | None = None,
        discriminator_schedule: DiscriminatorSchedule | None = None,
        generator_grad_clip: float | None = None,
        discriminator_grad_clip: float | None = None,
        max_batches: int | None = None,
        seed: int = 0,
        init_codec_from: str | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        # Built from a config (LightningCLI): the hparams are that config, which is what
        # Codec.from_checkpoint needs. Built in Python: the modules stay out of the hparams.
        modules = [
            "codec",
            "discriminators",
            "reconstruction_losses",
            "gan_loss",
            "feature_loss",
            "balancer",
            "discriminator_schedule",
            "generator_optimizer",
            "discriminator_optimizer",
            "generator_scheduler",
            "discriminator_scheduler",
        ]
        self.save_hyperparameters(ignore=[] if _given_hyperparameters.get() is not None else modules)

        unknown_losses = set(reconstruction_losses) & {ADVERSARIAL, FEATURE_MATCHING}
        if unknown_losses:
            raise ValueError(f"reconstruction_losses may not be named {sorted(unknown_losses)}: reserved names")
        missing = [name for name in [*reconstruction_losses, ADVERSARIAL, FEATURE_MATCHING] if name not in loss_weights]
        if missing:
            raise ValueError(f"loss_weights has no weight for {missing}; give one for every loss (0 to disable)")
        negative = {k: v for k, v in loss_weights.items() if v < 0}
        if negative:
            raise ValueError(f"loss_weights must be >= 0, got {negative}")
        for name, clip in (
            ("generator_grad_clip", generator_grad_clip),
            ("discriminator_grad_clip", discriminator_grad_clip),
        ):
            if clip is not None and clip <= 0:
                raise ValueError(f"{name} must be > 0 or null, got {clip}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {max_batches}")

        self.codec = codec
        self.discriminator = MultiDiscriminator(discriminators)
        self.reconstruction_losses = nn.ModuleDict(reconstruction_losses)
        self.loss_weights = dict(loss_weights)
        self.gan_loss = gan_loss or HingeGANLoss()
        self.feature_loss = feature_loss or RelativeFeatureMatchingLoss()
        self.balancer = balancer
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer
        self.generator_scheduler = generator_scheduler
        self.discriminator_scheduler = discriminator_scheduler
        self.discriminator_schedule = discriminator_schedule or DiscriminatorSchedule()
        self.grad_clip = (generator_grad_clip, discriminator_grad_clip)
        self.max_batches = max_batches
        self.seed = seed
        self.init_codec_from = init_codec_from

        self.register_buffer("batch_counter", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped_steps", torch.zeros(2, dtype=torch.long))  # generator, discriminator
        self._grad_norms = [torch.tensor(0.0), torch.tensor(0.0)]
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict({"mel_distance": MelDistance(codec.sample_rate), "si_sdr": SISDR()})
                for stage in ("val", "test")
            }
        )

    # -- set-up ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if (
            stage == "fit"
            and isinstance(strategy, DDPStrategy)
            and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters")
        ):
            # One DDP wrapper, two backward passes per batch: the discriminator step uses none of
            # the codec's parameters and the generator step none of the discriminator's.
            raise ValueError(
                "GANCodecModule needs trainer.strategy: ddp_find_unused_parameters_true (each of its two "
                "backward passes per batch leaves the other network's parameters unused)"
            )
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for field in ("sample_rate", "channels"):
            expected, given = getattr(self.codec, field), getattr(data, field, None)
            if given is not None and given != expected:
                raise ValueError(f"data.{field}={given} but the codec expects {field}={expected}: make them equal")
        if stage == "fit" and self.init_codec_from is not None:
            self._load_codec_weights(self.init_codec_from)

    def _load_codec_weights(self, path: str) -> None:
        """Strictly load the codec weights of ``path`` (see ``init_codec_from``)."""
        from codecplatform.models.codec import check_codec_state, load_codec_state

        _, state = load_codec_state(path)
        check_codec_state(self.codec, state, f"codec of init_codec_from={path}")
        self.codec.load_state_dict(state, strict=True)

    def configure_optimizers(self) -> Any:
        default = lambda params: torch.optim.Adam(params, lr=3e-4, betas=(0.5, 0.9))  # noqa: E731
        g_opt = (self.generator_optimizer or default)(self.codec.parameters())
        d_opt = (self.discriminator_optimizer or default)(self.discriminator.parameters())
        schedulers = []
        for factory, opt in ((self.generator_scheduler, g_opt), (self.discriminator_scheduler, d_opt)):
            if factory is not None:
                schedulers.append({"scheduler": factory(opt), "interval": "step"})
        return [g_opt, d_opt], schedulers

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch
        if x.shape[0] == 0:
            warnings.warn(
                f"skipping an empty batch at batch {int(self.batch_counter)} (all its files were bad)", stacklevel=2
            )
            return
        step = int(self.batch_counter)
        g_opt, d_opt = self.optimizers()
        generator = torch.Generator().manual_seed(int(uniform_from(self.seed, step, "quantizer") * 2**62))
        out = self.codec(x, generator=generator)
        x_hat = out.x_hat.float()
        logs: dict[str, Tensor] = {}

        if self.discriminator_schedule.should_update(step):
            with self.toggled_optimizer(d_opt):
                real = self.discriminator(x)
                fake = self.discriminator(x_hat.detach())
                d_loss, per_disc = self.gan_loss.discriminator_loss(real.logits, fake.logits)
                d_opt.zero_grad()
                self.manual_backward(d_loss)
                d_opt.step()
            logs["train/d/loss"] = d_loss.detach()
            logs.update({f"train/d/{name}": v.detach() for name, v in zip(real.names, per_disc)})
            logs["train/d/grad_norm"] = self._grad_norms[DISCRIMINATOR]

        with self.toggled_optimizer(g_opt):
            losses = {name: loss(x, x_hat) for name, loss in self.reconstruction_losses.items()}
            if self.discriminator_schedule.is_active(step):
                with torch.no_grad():
                    real = self.discriminator(x)
                fake = self.discriminator(x_hat)
                losses[ADVERSARIAL] = self.gan_loss.generator_loss(fake.logits)
                losses[FEATURE_MATCHING] = self.feature_loss(real.features, fake.features)
            quantizer_losses = out.quantized.losses
            self._check_weights(quantizer_losses)
            total = sum(self.loss_weights[name] * value for name, value in quantizer_losses.items())
            if self.balancer is not None:
                balanced = {name: value for name, value in losses.items() if self.loss_weights[name] > 0}
                surrogate, shares = self.balancer.surrogate_loss(balanced, self.loss_weights, x_hat)
                total = total + surrogate
                logs.update({f"train/balancer/{name}": share for name, share in shares.items()})
            else:
                total = total + sum(self.loss_weights[name] * value for name, value in losses.items())
            g_opt.zero_grad()
            self.manual_backward(total)
            g_opt.step()

        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.step()
        self.batch_counter += 1

        logs.update({f"train/g/{name}": value.detach() for name, value in {**losses, **quantizer_losses}.items()})
        logs["train/g/grad_norm"] = self._grad_norms[GENERATOR]
        logs["train/n_q"] = out.quantized.n_q.float().mean()
        logs["train/lr/generator"] = torch.tensor(g_opt.param_groups[0]["lr"])
        logs["train/lr/discriminator"] = torch.tensor(d_opt.param_groups[0]["lr"])
        logs["train/skipped_steps/generator"] = self.skipped_steps[GENERATOR].float()
        logs["train/skipped_steps/discriminator"] = self.skipped_steps[DISCRIMINATOR].float()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=x.shape[0])
        self.log(
            "batches", self.batch_counter.float(), on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0]
        )
        if self.max_batches is not None and int(self.batch_counter) >= self.max_batches:
            self.trainer.should_stop = True

    def _check_weights(self, quantizer_losses: dict[str, Tensor]) -> None:
        missing = [name for name in quantizer_losses if name not in self.loss_weights]
        if missing:
            raise ValueError(f"loss_weights has no weight for the quantizer loss(es) {missing} (0 to disable)")
        known = {*self.reconstruction_losses, ADVERSARIAL, FEATURE_MATCHING, *quantizer_losses}
        unknown = sorted(set(self.loss_weights) - known)
        if unknown:
            raise ValueError(f"loss_weights names no loss: {unknown}; the losses are {sorted(known)}")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs inside ``optimizer.step()``, after AMP unscaling: non-finite check, then clipping."""
        which = GENERATOR if optimizer is self.optimizers()[GENERATOR].optimizer else DISCRIMINATOR
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
        self._grad_norms[which] = norm.detach()
        if not torch.isfinite(norm):
            # Identical on every rank (gradients are already all-reduced): all skip together.
            for p in params:
                p.grad = None  # optimizers leave parameters without a gradient untouched
            self.skipped_steps[which] += 1
            return
        clip = self.grad_clip[which]
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, x: Tensor, stage: str) -> None:
        if x.shape[0] == 0:
            return
        out = self.codec(x)  # eval mode: all codebooks, no codebook updates
        x_hat = out.x_hat.float()
        for name, metric in self.metrics[stage].items():
            metric.update(x_hat, x.float())
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=x.shape[0])
        for name, loss in self.reconstruction_losses.items():
            self.log(
                f"{stage}/g/{name}", loss(x, x_hat), on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0]
            )

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Reconstruction (B, C, T) of the batch with all codebooks."""
        return self.codec(batch).x_hat

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        config = self.hparams.get("codec")
        if isinstance(config, dict):
            checkpoint["codec_config"] = config
