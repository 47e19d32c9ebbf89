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

Evaluation (validation and test) at every bitrate:
  Each evaluation batch is encoded once with all codebooks (``Codec.encode``, the inference path) and
  decoded once per evaluated codebook count from the first ``n_q`` codebooks of those codes (residual
  quantizers: the first codes do not depend on how many follow). Evaluated counts: those of
  ``eval_bandwidths`` (default: the codec's ``n_q_choices``, or 1..n_q without bandwidths), always
  including the full count. Validation uses the ``metrics`` (cheap ones; default mel distance, STFT
  distance, SI-SDR) at every evaluated count, or only at the full count with
  ``per_bitrate_validation=False``; test adds ``test_metrics`` (expensive ones: ViSQOL, PESQ, STOI).
  Codebook statistics (``CodebookUsage``) come from the same codes.

  Log keys (valid MLflow metric keys):
    ``<stage>/<name>``            the full bitrate (all codebooks), e.g. ``val/mel_distance``, ``test/si_sdr``;
    ``<stage>/<kbps>kbps/<name>`` one bitrate, kbps = ``Codec.bitrate(n_q)`` rounded to 3 decimals with
                                  trailing zeros dropped, e.g. ``test/6kbps/mel_distance``,
                                  ``test/1.5kbps/codebook_efficiency``, ``val/0.861kbps/si_sdr``;
    ``<stage>/g/<loss>``          the reconstruction losses at the full bitrate.
  Codebook rows: ``codebook_entropy`` (bits per frame, summed over the used codebooks),
  ``codebook_efficiency`` (that sum / the bits allotted, DAC's bitrate efficiency),
  ``codebook_perplexity`` (mean over the used codebooks), ``codebook_min_perplexity`` (the least used
  codebook's: a collapsed codebook shows here, not in the mean), ``codebook_dead_codes`` (entries never
  used, summed).

  At the end of each evaluation epoch every rank computes the metrics (same collectives everywhere); rank
  zero builds the table metrics x bitrate, writes it to every MLflow logger of the trainer as the
  artifacts ``tables/<stage>_per_bitrate.json`` and ``.md`` (overwritten at each validation; the history
  is in the metrics), and prints it for ``test`` and ``validate`` runs (not during ``fit``).

Discriminator per bandwidth (``discriminator_per_bandwidth``, EnCodec section 3.4): one copy of the
discriminator set per codebook count the codec trains with (``codec.n_q_choices``, state keys
``discriminator.nq<k>.*``). The batch's count (one per batch: ``PerBatchChoice``, drawn from the
batch index, so every DDP rank picks the same copy) selects the copy that is stepped and that gives
the generator its adversarial and feature losses; logged as ``train/d/bandwidth`` (kbps) and
``train/d/n_q``. One discriminator optimizer holds every copy: the copies not used in a batch have
no gradient (None), so Adam leaves their weights and moments untouched.

Generator EMA (``generator_ema``, audiocraft's ``optim.ema``; see ``codecplatform/lightning/ema.py``):
``codec_ema`` is a frozen copy of the codec updated after every ``every_n_batches``-th training batch.
Validation, test and predict run with its weights swapped into ``codec`` (the callbacks see them
too) and swapped back before checkpoints are written; checkpoints hold both (``codec.*`` raw,
``codec_ema.*`` averaged, ``ema_updates``). ``Codec.from_checkpoint`` loads the EMA weights when
present (``weights="raw"`` for the others).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torchmetrics import Metric

from codecplatform.discriminators.base import Discriminator, MultiDiscriminator
from codecplatform.lightning.ema import GeneratorEMA, copy_weights_, ema_weight, swap_weights_, update_ema_
from codecplatform.lightning.health import (
    codebook_perplexities,
    decision_threshold,
    discriminator_scores,
    equilibrium_loss,
)
from codecplatform.lightning.schedule import DiscriminatorSchedule, uniform_from
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss, HingeGANLoss, RelativeFeatureMatchingLoss
from codecplatform.losses.balancer import Balancer
from codecplatform.metrics.codebook import CodebookUsage, codebook_statistics
from codecplatform.metrics.reconstruction import SISDR, MelDistance, STFTDistance
from codecplatform.models.codec import Codec
from codecplatform.types import EncodedAudio

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
            Resuming with ``--ckpt_path`` restores that checkpoint's weights afterwards. A training
            checkpoint with generator EMA gives its EMA weights (see ``load_codec_state``).
        metrics: evaluation metrics for validation and test, name -> torchmetrics ``Metric`` updated as
            ``metric.update(x_hat, x)`` with (B, C, T) audio and returning a scalar; each is deep-copied per
            stage and bitrate. Default: ``mel_distance`` (MelDistance), ``stft_distance`` (STFTDistance),
            ``si_sdr`` (SISDR). The names are log keys (see the module docstring).
        test_metrics: further metrics for test only (e.g. ViSQOL, PESQ, STOI, which run on the CPU).
        eval_bandwidths: the bitrates (kbps) to evaluate; each maps to a codebook count with
            ``Codec.n_q_for_bandwidth``. Default: every count the codec is trained for. The full count is
            always evaluated.
        per_bitrate_validation: evaluate validation at every bitrate (default) or only at the full one
            (one decoder pass per batch instead of one per bitrate; test always covers every bitrate).
        discriminator_per_bandwidth: one copy of ``discriminators`` per codebook count of the codec's
            ``bandwidths`` (EnCodec: "a dedicated discriminator per bandwidth"); each batch steps and
            uses only its bandwidth's copy. Needs ``codec.bandwidths`` and one count per batch
            (``PerBatchChoice``). The copies start from identical weights.
        generator_ema: keep an EMA of the codec's weights (``GeneratorEMA``: decay, every_n_batches,
            unbias; audiocraft's EnCodec recipe: 0.99, 1, true) and evaluate, predict and export with it.
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
        metrics: dict[str, Metric] | None = None,
        test_metrics: dict[str, Metric] | None = None,
        eval_bandwidths: list[float] | None = None,
        per_bitrate_validation: bool = True,
        discriminator_per_bandwidth: bool = False,
        generator_ema: GeneratorEMA | None = None,
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
            "metrics",
            "test_metrics",
            "generator_ema",
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
        self.discriminator_per_bandwidth = discriminator_per_bandwidth
        self.discriminator: MultiDiscriminator | nn.ModuleDict
        if discriminator_per_bandwidth:
            if not codec.n_q_choices:
                raise ValueError(
                    "discriminator_per_bandwidth needs the codec's bandwidths (codec.init_args.bandwidths): "
                    "one discriminator set is built per bandwidth"
                )
            self.discriminator = nn.ModuleDict(
                {f"nq{k}": MultiDiscriminator(copy.deepcopy(discriminators)) for k in codec.n_q_choices}
            )
        else:
            self.discriminator = MultiDiscriminator(discriminators)
        self.reconstruction_losses = nn.ModuleDict(reconstruction_losses)
        self.loss_weights = dict(loss_weights)
        self.gan_loss = gan_loss or HingeGANLoss()
        self._decision_threshold = decision_threshold(self.gan_loss)  # hinge 0, LS 0.5: train/d/accuracy
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
        if isinstance(generator_ema, dict):
            generator_ema = GeneratorEMA(**generator_ema)
        self.generator_ema = generator_ema
        self.codec_ema: Codec | None = None
        self._ema_swapped = False
        self._ema_last_batch: int | None = None
        if generator_ema is not None:
            self.codec_ema = copy.deepcopy(codec).requires_grad_(False)  # in no optimizer; DDP skips it
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

        self.register_buffer("batch_counter", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped_steps", torch.zeros(2, dtype=torch.long))  # generator, discriminator
        self._grad_norms = [torch.tensor(0.0), torch.tensor(0.0)]
        self._init_evaluation(metrics, test_metrics, eval_bandwidths, per_bitrate_validation)

    def _init_evaluation(
        self,
        metrics: dict[str, Metric] | None,
        test_metrics: dict[str, Metric] | None,
        eval_bandwidths: list[float] | None,
        per_bitrate_validation: bool,
    ) -> None:
        """Per stage and evaluated codebook count, deep copies of the metrics; per stage a CodebookUsage."""
        codec = self.codec
        if metrics is None:
            metrics = {
                "mel_distance": MelDistance(codec.sample_rate),
                "stft_distance": STFTDistance(),
                "si_sdr": SISDR(),
            }
        test_metrics = test_metrics or {}
        for field, given in (("metrics", metrics), ("test_metrics", test_metrics)):
            for name, metric in given.items():
                if not isinstance(metric, Metric):
                    raise TypeError(f"{field}.{name} must be a torchmetrics Metric, got {type(metric).__name__}")
                if not name or any(not (c.isalnum() or c in "_-") for c in name):
                    raise ValueError(f"{field}: metric name {name!r} must be letters, digits, '_' or '-'")
        clash = sorted(set(metrics) & set(test_metrics))
        if clash:
            raise ValueError(f"test_metrics repeats names of metrics: {clash}; give each metric once")
        full = codec.quantizer.n_q
        if eval_bandwidths is not None:
            if not eval_bandwidths:
                raise ValueError("eval_bandwidths: give at least one bandwidth in kbps, or null for the codec's own")
            chosen = {codec.n_q_for_bandwidth(bw) for bw in eval_bandwidths}
        else:
            chosen = set(codec.n_q_choices or range(1, full + 1))
        self.eval_n_q = {"test": sorted(chosen | {full})}
        self.eval_n_q["val"] = self.eval_n_q["test"] if per_bitrate_validation else [full]
        self.bitrate_labels = {k: f"{round(codec.bitrate(k), 3):g}kbps" for k in self.eval_n_q["test"]}
        if len(set(self.bitrate_labels.values())) != len(self.bitrate_labels):
            raise ValueError(f"evaluated bitrates share a label: {self.bitrate_labels}")
        per_stage = {"val": metrics, "test": {**metrics, **test_metrics}}
        self.eval_metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        f"nq{k}": nn.ModuleDict({name: copy.deepcopy(m) for name, m in per_stage[stage].items()})
                        for k in self.eval_n_q[stage]
                    }
                )
                for stage in ("val", "test")
            }
        )
        self.codebook_usage = nn.ModuleDict(
            {stage: CodebookUsage(full, max(codec.quantizer.codebook_sizes)) for stage in ("val", "test")}
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
    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        """One G/D step (see the module docstring). Returns the values it logged (step tensors, no
        host sync) so callbacks see exactly this batch's (``TrainingHealthMonitor``)."""
        x = batch
        if self._any_rank_empty(x):
            warnings.warn(
                f"skipping batch {int(self.batch_counter)} on every rank: a rank's batch was empty "
                "(all its files were bad)",
                stacklevel=2,
            )
            return
        step = int(self.batch_counter)
        g_opt, d_opt = self.optimizers()
        generator = torch.Generator().manual_seed(int(uniform_from(self.seed, step, "quantizer") * 2**62))
        out = self.codec(x, generator=generator)
        x_hat = out.x_hat.float()
        logs: dict[str, Tensor] = {}
        discriminator = self._batch_discriminator(out.quantized.n_q, logs)

        if self.discriminator_schedule.should_update(step):
            with self.toggled_optimizer(d_opt):
                real = discriminator(x)
                fake = discriminator(x_hat.detach())
                d_loss, per_disc = self.gan_loss.discriminator_loss(real.logits, fake.logits)
                d_opt.zero_grad(set_to_none=True)  # other bandwidths' copies keep grad None: Adam skips them
                self.manual_backward(d_loss)
                d_opt.step()
            logs["train/d/loss"] = d_loss.detach()
            logs.update({f"train/d/{name}": v.detach() for name, v in zip(real.names, per_disc)})
            logs["train/d/grad_norm"] = self._grad_norms[DISCRIMINATOR]
            scores = discriminator_scores(real.logits, fake.logits, self._decision_threshold)
            logs.update({f"train/d/{name}": value for name, value in scores.items()})
            equilibrium = equilibrium_loss(self.gan_loss, len(real.logits), self._decision_threshold)  # host math
            logs["train/d/equilibrium_loss"] = torch.tensor(equilibrium)  # d loss of a D that cannot tell

        with self.toggled_optimizer(g_opt):
            losses = {name: loss(x, x_hat) for name, loss in self.reconstruction_losses.items()}
            if self.discriminator_schedule.is_active(step):
                with torch.no_grad():
                    real = discriminator(x)
                fake = discriminator(x_hat)
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
        # the codebooks the batch ran (codes: (B, max n_q, T')), each over the examples that used it
        sizes = self.codec.quantizer.codebook_sizes
        perplexity = codebook_perplexities(out.quantized.codes, out.quantized.n_q, max(sizes))
        logs.update({f"train/codebook/perplexity/{k}": p for k, p in enumerate(perplexity)})
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
        return logs

    def _batch_discriminator(self, n_q: Tensor, logs: dict[str, Tensor]) -> MultiDiscriminator:
        """The discriminator set of this batch: the only one, or with ``discriminator_per_bandwidth``
        the copy of the batch's codebook count ``n_q`` (B,), which must be the same for the whole
        batch; logs that count and its bandwidth. The count comes from a generator seeded by the
        batch index: every DDP rank picks the same copy."""
        if not isinstance(self.discriminator, nn.ModuleDict):
            return self.discriminator
        low, high = torch.aminmax(n_q.detach())
        low, high = int(low), int(high)
        if low != high or f"nq{low}" not in self.discriminator:
            raise ValueError(
                f"discriminator_per_bandwidth needs one codebook count per batch among {self.codec.n_q_choices} "
                f"(quantizer dropout: PerBatchChoice); this batch uses {low}..{high}"
            )
        logs["train/d/n_q"] = torch.tensor(float(low))
        logs["train/d/bandwidth"] = torch.tensor(self.codec.bitrate(low))
        return self.discriminator[f"nq{low}"]

    def _any_rank_empty(self, x: Tensor) -> bool:
        """Whether the batch of any rank is empty. All ranks then skip the batch together: one rank
        skipping alone would leave the others waiting in the gradient all-reduce forever."""
        size = torch.tensor(x.shape[0], device=x.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            size = self.all_gather(size).min()
        return int(size) == 0

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
    def _evaluate(self, x: Tensor, stage: str) -> dict[str, Tensor] | None:
        """Encode once, decode at every evaluated codebook count, update that count's metrics.
        Returns ``{"codes": (B, n_q, T')}`` for callbacks (``CodebookUsageLogger`` counts them
        instead of encoding the batch again); None for an empty batch."""
        if x.shape[0] == 0:
            return None
        x = x.float()
        encoded = self.codec.encode(x)  # all codebooks: codes (B, n_q, T'); eval mode, no codebook updates
        self.codebook_usage[stage].update(encoded.codes)
        full = self.codec.quantizer.n_q
        for k in self.eval_n_q[stage]:
            x_hat = self.codec.decode(EncodedAudio(encoded.codes[:, :k], encoded.scale, encoded.length)).float()
            for metric in self.eval_metrics[stage][f"nq{k}"].values():
                metric.update(x_hat, x)
            if k == full:
                for name, loss in self.reconstruction_losses.items():
                    self.log(
                        f"{stage}/g/{name}",
                        loss(x, x_hat),
                        on_step=False,
                        on_epoch=True,
                        sync_dist=True,
                        batch_size=x.shape[0],
                    )
        return {"codes": encoded.codes}

    def _finish_evaluation(self, stage: str) -> None:
        """Compute (on every rank), log, and on rank zero tabulate the per-bitrate results of ``stage``."""
        full = self.codec.quantizer.n_q
        table: dict[str, dict[str, float]] = {}  # row (metric) -> column (bitrate label) -> value
        for k in self.eval_n_q[stage]:
            label = self.bitrate_labels[k]
            for name, metric in self.eval_metrics[stage][f"nq{k}"].items():
                value = metric.compute()
                metric.reset()
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise TypeError(f"metric {name} must compute a scalar tensor, got {type(value).__name__}")
                table.setdefault(name, {})[label] = float(value)
        counts = self.codebook_usage[stage].compute()["counts"]  # (n_q, N), summed over ranks
        self.codebook_usage[stage].reset()
        for k in self.eval_n_q[stage]:
            for name, value in self._codebook_rows(counts, k).items():
                table.setdefault(name, {})[self.bitrate_labels[k]] = value
        logs: dict[str, float] = {}
        for name, row in table.items():
            for label, value in row.items():
                logs[f"{stage}/{label}/{name}"] = value
            if self.bitrate_labels[full] in row:
                logs[f"{stage}/{name}"] = row[self.bitrate_labels[full]]
        # values are already reduced over ranks (identical everywhere); sync_dist averages equal numbers
        self.log_dict({k: torch.tensor(v) for k, v in logs.items()}, on_step=False, on_epoch=True, sync_dist=True)
        if self.trainer.is_global_zero:
            self._report_table(stage, table)

    def _codebook_rows(self, counts: Tensor, k: int) -> dict[str, float]:
        """Codebook statistics of the first ``k`` codebooks: total entropy (bits per frame), bitrate
        efficiency (entropy / allotted bits), mean perplexity, dead codes."""
        stats = codebook_statistics(counts[:k])
        allotted = sum(self.codec.quantizer.bits_per_frame[:k])
        entropy = float(stats["entropy"].sum())
        return {
            "codebook_entropy": entropy,
            "codebook_efficiency": entropy / allotted if allotted > 0 else 0.0,
            "codebook_perplexity": float(stats["perplexity"].mean()),
            "codebook_min_perplexity": float(stats["perplexity"].min()),
            "codebook_dead_codes": float(stats["dead_codes"].sum()),
        }

    def per_bitrate_table(self, stage: str, table: dict[str, dict[str, float]]) -> dict[str, Any]:
        """The JSON form of a table: columns (label, n_q, kbps) and rows (metric -> values per column)."""
        columns = [
            {"label": self.bitrate_labels[k], "n_q": k, "kbps": self.codec.bitrate(k)} for k in self.eval_n_q[stage]
        ]
        rows = {name: [row.get(c["label"], float("nan")) for c in columns] for name, row in table.items()}
        return {"stage": stage, "batches": int(self.batch_counter), "columns": columns, "rows": rows}

    @staticmethod
    def format_table(data: dict[str, Any]) -> str:
        """Markdown table, metrics x bitrates, of ``per_bitrate_table``'s output."""
        heads = [f"{c['label']} (n_q={c['n_q']})" for c in data["columns"]]
        lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for name, values in data["rows"].items():
            cells = ["nan" if not math.isfinite(v) else f"{v:.4g}" for v in values]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _report_table(self, stage: str, table: dict[str, dict[str, float]]) -> None:
        data = self.per_bitrate_table(stage, table)
        text = self.format_table(data)
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
                logger.experiment.log_dict(logger.run_id, data, f"tables/{stage}_per_bitrate.json")
                logger.experiment.log_text(logger.run_id, text + "\n", f"tables/{stage}_per_bitrate.md")
        if self.trainer.state.fn in ("test", "validate"):
            print(f"\n{stage} metrics per bitrate (batch {data['batches']}):\n{text}\n", flush=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        return self._evaluate(batch, "test")

    def on_validation_start(self) -> None:
        self._use_ema_weights(True)

    def on_validation_epoch_end(self) -> None:
        # Callbacks' epoch-end hooks (audio, codebook usage) ran before this one, with the EMA
        # weights; ModelCheckpoint saves in on_validation_end, after the raw weights are back.
        try:
            self._finish_evaluation("val")
        finally:
            self._use_ema_weights(False)

    def on_validation_end(self) -> None:
        self._use_ema_weights(False)

    def on_test_start(self) -> None:
        self._use_ema_weights(True)

    def on_test_epoch_end(self) -> None:
        try:
            self._finish_evaluation("test")
        finally:
            self._use_ema_weights(False)

    def on_test_end(self) -> None:
        self._use_ema_weights(False)

    def on_predict_start(self) -> None:
        self._use_ema_weights(True)

    def on_predict_end(self) -> None:
        self._use_ema_weights(False)

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Reconstruction (B, C, T) of the batch with all codebooks."""
        return self.codec(batch).x_hat

    # -- fit start, generator EMA ------------------------------------------------------------------
    def on_train_start(self) -> None:
        self._log_global_batch_size()
        if self.codec_ema is not None:
            if int(self.ema_updates) == 0:
                copy_weights_(self.codec_ema, self.codec)  # the weights training starts from (init_codec_from)
            self._ema_last_batch = int(self.batch_counter)

    def _log_global_batch_size(self) -> None:
        """Hyperparameter ``train/global_batch_size`` = the data's per-rank ``batch_size`` x world size
        (devices x nodes), when the data module has a fixed ``batch_size``."""
        data = getattr(self.trainer, "datamodule", None)
        per_rank = getattr(data, "batch_size", None)
        if isinstance(per_rank, int) and not isinstance(per_rank, bool):
            for logger in self.loggers:
                logger.log_hyperparams({"train/global_batch_size": per_rank * self.trainer.world_size})

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Generator EMA update after every ``every_n_batches``-th trained batch (skipped batches
        do not count). Every rank holds the same weights, so every rank computes the same EMA."""
        if self.generator_ema is None or self.codec_ema is None:
            return
        done = int(self.batch_counter)
        if done == self._ema_last_batch:
            return  # this batch was skipped: the counter did not move
        self._ema_last_batch = done
        if done % self.generator_ema.every_n_batches:
            return
        self.ema_updates += 1
        weight = ema_weight(int(self.ema_updates), self.generator_ema.decay, self.generator_ema.unbias)
        update_ema_(self.codec_ema, self.codec, weight)

    def _use_ema_weights(self, on: bool) -> None:
        """Swap the EMA weights into ``codec`` (on) or the raw ones back (off). Nothing without
        generator EMA, before its first update, or when already in that state."""
        if self.codec_ema is None or on == self._ema_swapped or (on and int(self.ema_updates) == 0):
            return
        swap_weights_(self.codec, self.codec_ema)
        self._ema_swapped = on

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        config = self.hparams.get("codec")
        if isinstance(config, dict):
            checkpoint["codec_config"] = config
        if self._ema_swapped:
            # Written while the EMA weights are in ``codec`` (during evaluation, e.g. on an
            # exception): store each set under its own name.
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("codec.")]:
                twin = "codec_ema." + key[len("codec.") :]
                state[key], state[twin] = state[twin], state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints of runs with and without generator EMA load into either: EMA turned on
        starts from the checkpoint's raw codec weights (no update yet); turned off drops it."""
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return
        ema_keys = [k for k in state if k.startswith("codec_ema.") or k == "ema_updates"]
        if self.codec_ema is None:
            for key in ema_keys:
                del state[key]
        elif not ema_keys:
            warnings.warn("the checkpoint has no generator EMA: it starts from its codec weights", stacklevel=2)
            for key in [k for k in state if k.startswith("codec.")]:
                state["codec_ema." + key[len("codec.") :]] = state[key].clone()
            state["ema_updates"] = torch.zeros((), dtype=torch.long)
