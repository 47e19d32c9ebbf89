"""GANStep: one manual-optimization generator/discriminator step, for any generator of audio.

A ``TrainingModule`` with ``automatic_optimization = False`` holds a ``GANStep`` (the discriminators,
the reconstruction and adversarial losses, the optional balancer, the discriminator schedule and the
skip counters) and a generator of its own: a codec (``GANCodecModule``:
audio -> codes -> audio), a vocoder (mel -> audio), anything that gives audio ``x_hat`` (B, C, T)
to compare with the real ``x`` (B, C, T). Per batch the module computes ``x_hat`` and calls
:meth:`GANStep.step`:

  1. discriminator step on ``x_hat.detach()`` when the schedule says so (``toggle_optimizer``,
     ``zero_grad``, ``manual_backward``, ``step``, untoggle);
  2. generator step: reconstruction losses, adversarial and feature-matching losses against the
     just-updated discriminator (once the schedule is active), the generator's own losses
     (``GeneratorOutput.losses``, e.g. a quantizer's ``commit``); weighted by ``loss_weights`` or
     balanced;
  3. every scheduler of the trainer steps once.

The module then logs the returned values and advances its batch counter
(``TrainingModule.end_batch``). It forwards two hooks: ``configure_optimizers`` ->
:meth:`GANStep.configure_optimizers`
(generator optimizer first, discriminator second) and ``on_before_optimizer_step`` ->
:meth:`GANStep.on_before_optimizer_step`, which Lightning calls inside ``optimizer.step()`` after AMP
unscaling: the gradient norm is checked there (a non-finite one drops the gradients and counts a
skip in ``skipped_steps``, identically on every rank) and clipped (``generator_grad_clip``,
``discriminator_grad_clip``; ``trainer.gradient_clip_val`` is refused under manual optimization).

The discriminator schedule is decided from the module's ``batch_counter`` (never a random draw that
differs across DDP ranks). ``trainer.global_step`` counts optimizer steps (up to two per batch).

Log keys (a loss's name is its weight key and its log key): ``train/g/<loss>`` (every generator
loss: reconstruction names, ``adv``, ``feat``, the generator's own), ``train/g/grad_norm``,
``train/d/loss``, ``train/d/<sub-discriminator>``, ``train/d/grad_norm``, ``train/d/real_score``,
``train/d/fake_score``, ``train/d/accuracy``, ``train/d/equilibrium_loss``,
``train/balancer/<loss>`` (with a balancer), ``train/lr/generator``, ``train/lr/discriminator``,
``train/skipped_steps/generator`` and ``train/skipped_steps/discriminator``. At evaluation
:meth:`GANStep.log_reconstruction` logs ``<stage>/g/<loss>``.

Discriminator copies (``discriminator_copies``, EnCodec's discriminator per bandwidth): one copy of
the discriminator set per key (``discriminator.<key>.*``); the module names the batch's copy in
:meth:`GANStep.step`, only that copy is stepped and judges the generator. One discriminator
optimizer holds every copy: the copies not used in a batch have no gradient (None), so Adam leaves
their weights and moments untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from codecplatform.discriminators.base import Discriminator, MultiDiscriminator
from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.diagnostics import decision_threshold, discriminator_scores, equilibrium_loss
from codecplatform.lightning.schedule import DiscriminatorSchedule
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss, HingeGANLoss, RelativeFeatureMatchingLoss
from codecplatform.losses.balancer import Balancer

ADVERSARIAL = "adv"
FEATURE_MATCHING = "feat"
GENERATOR, DISCRIMINATOR = 0, 1


@dataclass
class GeneratorOutput:
    """What a generator gives :meth:`GANStep.step` for one batch.

    x_hat:  (B, C, T) generated audio, the shape of the real audio ``x``.
    losses: the generator's own losses (a quantizer's ``commit``, ``codebook``): name -> scalar,
            each weighted by ``loss_weights[name]``, never balanced, logged as ``train/g/<name>``.
    """

    x_hat: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)


class GANStep(nn.Module):
    """The discriminators, losses and counters of adversarial training, and the step that uses them.

    Args:
        discriminators: run on the same input; their outputs are concatenated.
        reconstruction_losses: name -> loss module called as ``loss(x, x_hat)``.
        loss_weights: one weight per loss name: the reconstruction names, ``adv`` (adversarial),
            ``feat`` (feature matching) and the generator's own losses (``GeneratorOutput.losses``).
            The same names are the log keys ``train/g/<name>``.
        gan_loss: adversarial loss (default hinge, EnCodec).
        feature_loss: feature-matching loss (default relative L1, EnCodec).
        balancer: when set, the losses that depend only on x_hat are balanced (EnCodec); the
            generator's own losses are added with their plain weights.
        generator_optimizer, discriminator_optimizer: optimizer factories (None: the module's
            ``default_optimizer``, see :meth:`configure_optimizers`).
        generator_scheduler, discriminator_scheduler: stepped once per batch.
        discriminator_schedule: start step, period and probability of discriminator updates.
        generator_grad_clip, discriminator_grad_clip: max gradient norms (None: no clipping).
        discriminator_copies: keys of one copy each of ``discriminators`` (identical initial
            weights); each batch names the copy it trains (:meth:`step`). None: one set.

    State (buffer): ``skipped_steps`` (2,) (non-finite generator, discriminator steps); the
    schedules' clock is the module's ``batch_counter``.

    Raises:
        ValueError: a reconstruction loss named ``adv``/``feat``, a loss without a weight, a negative
            weight, a clip <= 0, or an empty ``discriminator_copies``.
    """

    def __init__(
        self,
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
        discriminator_copies: list[str] | None = None,
    ):
        super().__init__()
        reserved = set(reconstruction_losses) & {ADVERSARIAL, FEATURE_MATCHING}
        if reserved:
            raise ValueError(f"reconstruction_losses may not be named {sorted(reserved)}: reserved names")
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
        if discriminator_copies is not None and not discriminator_copies:
            raise ValueError("discriminator_copies: give at least one key, or None for one discriminator set")

        self.discriminator: MultiDiscriminator | nn.ModuleDict
        if discriminator_copies is not None:
            self.discriminator = nn.ModuleDict(
                {key: MultiDiscriminator(copy.deepcopy(discriminators)) for key in discriminator_copies}
            )
        else:
            self.discriminator = MultiDiscriminator(discriminators)
        self.reconstruction_losses = nn.ModuleDict(reconstruction_losses)
        self.loss_weights = dict(loss_weights)
        self.gan_loss = gan_loss or HingeGANLoss()
        self.decision_threshold = decision_threshold(self.gan_loss)  # hinge 0, LS 0.5: train/d/accuracy
        self.feature_loss = feature_loss or RelativeFeatureMatchingLoss()
        self.balancer = balancer
        self.optimizer_factories = (generator_optimizer, discriminator_optimizer)
        self.scheduler_factories = (generator_scheduler, discriminator_scheduler)
        self.discriminator_schedule = discriminator_schedule or DiscriminatorSchedule()
        self.grad_clip = (generator_grad_clip, discriminator_grad_clip)
        self.register_buffer("skipped_steps", torch.zeros(2, dtype=torch.long))  # generator, discriminator
        self.grad_norms = [torch.tensor(0.0), torch.tensor(0.0)]  # of the last step of each optimizer

    # -- set-up --------------------------------------------------------------------------------
    def configure_optimizers(self, module: TrainingModule, generator_parameters: Iterable[nn.Parameter]) -> Any:
        """``LightningModule.configure_optimizers``'s answer: [generator, discriminator] optimizers
        (an unset factory: ``module.default_optimizer``) and their schedulers (interval "step";
        :meth:`step` steps them once per batch)."""
        g_factory, d_factory = (factory or module.default_optimizer for factory in self.optimizer_factories)
        g_opt = g_factory(generator_parameters)
        d_opt = d_factory(self.discriminator.parameters())
        schedulers = []
        for factory, opt in zip(self.scheduler_factories, (g_opt, d_opt)):
            if factory is not None:
                schedulers.append({"scheduler": factory(opt), "interval": "step"})
        return [g_opt, d_opt], schedulers

    def select_discriminator(self, key: str | None = None) -> MultiDiscriminator:
        """The discriminator set of a batch: the only one (``key`` None), or the copy ``key``."""
        if not isinstance(self.discriminator, nn.ModuleDict):
            if key is not None:
                raise ValueError(f"discriminator copy {key!r} asked for, but there is one discriminator set")
            return self.discriminator
        if key not in self.discriminator:
            raise ValueError(f"no discriminator copy {key!r}; the copies are {list(self.discriminator)}")
        return self.discriminator[key]

    # -- the step ------------------------------------------------------------------------------
    def step(
        self,
        module: TrainingModule,
        x: Tensor,
        generated: GeneratorOutput,
        discriminator_key: str | None = None,
    ) -> dict[str, Tensor]:
        """One G/D step of ``module`` (manual optimization, optimizers from
        :meth:`configure_optimizers`) on real audio ``x`` (B, C, T) and ``generated.x_hat``
        (B, C, T), still attached to the generator's graph, at batch ``module.batch_counter``. Steps
        the schedulers and returns the values to log (step tensors, no host sync); the module adds
        its own and calls ``module.end_batch``."""
        if generated.x_hat.shape != x.shape:
            raise ValueError(f"x_hat {tuple(generated.x_hat.shape)} and x {tuple(x.shape)} differ in shape")
        step = int(module.batch_counter)
        g_opt, d_opt = module.optimizers()
        x_hat = generated.x_hat.float()
        discriminator = self.select_discriminator(discriminator_key)
        logs: dict[str, Tensor] = {}

        if self.discriminator_schedule.should_update(step):
            with module.toggled_optimizer(d_opt):
                real = discriminator(x)
                fake = discriminator(x_hat.detach())
                d_loss, per_disc = self.gan_loss.discriminator_loss(real.logits, fake.logits)
                d_opt.zero_grad(set_to_none=True)  # other copies keep grad None: Adam skips them
                module.manual_backward(d_loss)
                d_opt.step()
            logs["train/d/loss"] = d_loss.detach()
            logs.update({f"train/d/{name}": v.detach() for name, v in zip(real.names, per_disc)})
            logs["train/d/grad_norm"] = self.grad_norms[DISCRIMINATOR]
            scores = discriminator_scores(real.logits, fake.logits, self.decision_threshold)
            logs.update({f"train/d/{name}": value for name, value in scores.items()})
            equilibrium = equilibrium_loss(self.gan_loss, len(real.logits), self.decision_threshold)  # host math
            logs["train/d/equilibrium_loss"] = torch.tensor(equilibrium)  # d loss of a D that cannot tell

        with module.toggled_optimizer(g_opt):
            losses = {name: loss(x, x_hat) for name, loss in self.reconstruction_losses.items()}
            if self.discriminator_schedule.is_active(step):
                with torch.no_grad():
                    real = discriminator(x)
                fake = discriminator(x_hat)
                losses[ADVERSARIAL] = self.gan_loss.generator_loss(fake.logits)
                losses[FEATURE_MATCHING] = self.feature_loss(real.features, fake.features)
            own = generated.losses
            self._check_weights(own)
            total = sum(self.loss_weights[name] * value for name, value in own.items())
            if self.balancer is not None:
                balanced = {name: value for name, value in losses.items() if self.loss_weights[name] > 0}
                surrogate, shares = self.balancer.surrogate_loss(balanced, self.loss_weights, x_hat)
                total = total + surrogate
                logs.update({f"train/balancer/{name}": share for name, share in shares.items()})
            else:
                total = total + sum(self.loss_weights[name] * value for name, value in losses.items())
            g_opt.zero_grad()
            module.manual_backward(total)
            g_opt.step()

        for config in module.trainer.lr_scheduler_configs:
            config.scheduler.step()

        logs.update({f"train/g/{name}": value.detach() for name, value in {**losses, **own}.items()})
        logs["train/g/grad_norm"] = self.grad_norms[GENERATOR]
        logs["train/lr/generator"] = torch.tensor(g_opt.param_groups[0]["lr"])
        logs["train/lr/discriminator"] = torch.tensor(d_opt.param_groups[0]["lr"])
        logs["train/skipped_steps/generator"] = self.skipped_steps[GENERATOR].float()
        logs["train/skipped_steps/discriminator"] = self.skipped_steps[DISCRIMINATOR].float()
        return logs

    def log_reconstruction(self, module: TrainingModule, stage: str, x: Tensor, x_hat: Tensor) -> None:
        """Evaluation: log each reconstruction loss of ``x_hat`` against ``x`` as ``<stage>/g/<name>``
        (epoch means, synchronized over ranks)."""
        for name, loss in self.reconstruction_losses.items():
            module.log(
                f"{stage}/g/{name}", loss(x, x_hat), on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0]
            )

    def _check_weights(self, own_losses: dict[str, Tensor]) -> None:
        missing = [name for name in own_losses if name not in self.loss_weights]
        if missing:
            raise ValueError(f"loss_weights has no weight for the quantizer loss(es) {missing} (0 to disable)")
        known = {*self.reconstruction_losses, ADVERSARIAL, FEATURE_MATCHING, *own_losses}
        unknown = sorted(set(self.loss_weights) - known)
        if unknown:
            raise ValueError(f"loss_weights names no loss: {unknown}; the losses are {sorted(known)}")

    # -- hooks the module forwards -------------------------------------------------------------
    def on_before_optimizer_step(self, module: TrainingModule, optimizer: torch.optim.Optimizer) -> None:
        """Inside ``optimizer.step()``, after AMP unscaling: non-finite check, then clipping."""
        which = GENERATOR if optimizer is module.optimizers()[GENERATOR].optimizer else DISCRIMINATOR
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad.detach().float()) for p in params])
        )
        self.grad_norms[which] = norm.detach()
        if not torch.isfinite(norm):
            # Identical on every rank (gradients are already all-reduced): all skip together.
            for p in params:
                p.grad = None  # optimizers leave parameters without a gradient untouched
            self.skipped_steps[which] += 1
            return
        clip = self.grad_clip[which]
        if clip is not None:
            module.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
