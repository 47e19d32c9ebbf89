"""GANCodecModule: adversarial codec training, wiring a Codec to the GAN step and the evaluation.

The parts (see their modules):
  ``codecplatform.lightning.gan_step.GANStep`` (attribute ``gan``): the discriminators, losses,
    balancer, schedule, batch counter and skip counters, and the manual-optimization G/D step;
  ``codecplatform.lightning.evaluation.BitrateEvaluator`` (attribute ``evaluation``): validation and
    test at every bitrate, their log keys and the MLflow tables;
  ``codecplatform.lightning.ema``: the generator EMA.

One training batch: the codec forward (codebook counts drawn with a generator seeded from the batch
index), then ``GANStep.step`` (discriminator step on ``x_hat.detach()`` when the schedule says so,
generator step with the reconstruction, adversarial, feature-matching and quantizer losses, both
schedulers step), then ``TrainingModule.end_batch`` (the batch counter advances). The module adds
``train/n_q`` and ``train/codebook/perplexity/<k>`` to the step's logs. ``trainer.global_step``
counts optimizer steps (up to two per batch); use ``max_batches`` to stop after a number of batches.

Evaluation (validation and test): ``BitrateEvaluator`` encodes each batch once and decodes it at every
evaluated bitrate (``<stage>/<kbps>kbps/<metric>``, ``<stage>/<metric>`` for the full bitrate, codebook
rows, ``tables/<stage>_per_bitrate.{json,md}``); the module adds the reconstruction losses at the full
bitrate, ``<stage>/g/<loss>``.

Checkpoint keys: ``codec.*``, ``batch_counter``, the GAN step's ``gan.discriminator.*``,
``gan.balancer.*`` and ``gan.skipped_steps`` and, with generator EMA, ``codec_ema.*`` and
``ema_updates``.

Discriminator per bandwidth (``discriminator_per_bandwidth``, EnCodec section 3.4): one copy of the
discriminator set per codebook count the codec trains with (the counts of its operating points; state
keys ``gan.discriminator.nq<k>.*``). The batch's count (one per batch: ``PerBatchChoice``, drawn from the
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
import warnings
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torchmetrics import Metric

from codecplatform.discriminators.base import Discriminator
from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.diagnostics import codebook_perplexities
from codecplatform.lightning.ema import GeneratorEMA, copy_weights_, ema_weight, swap_weights_, update_ema_
from codecplatform.lightning.evaluation import BitrateEvaluator
from codecplatform.lightning.gan_step import GANStep, GeneratorOutput
from codecplatform.lightning.schedule import DiscriminatorSchedule, uniform_from
from codecplatform.losses.adversarial import FeatureMatchingLoss, GANLoss
from codecplatform.losses.balancer import Balancer
from codecplatform.models.codec import Codec


def check_codec_rates(
    codec: Codec, losses: dict[str, nn.Module], metrics: dict[str, Metric], test_metrics: dict[str, Metric]
) -> None:
    """Refuse, before any training, a reconstruction loss or metric built for another sample rate than
    the codec's (one that keeps its rate in ``sample_rate``)."""
    rate = codec.sample_rate
    for field, parts in (("reconstruction_losses", losses), ("metrics", metrics), ("test_metrics", test_metrics)):
        for name, part in parts.items():
            theirs = getattr(part, "sample_rate", None)
            if isinstance(theirs, int) and theirs != rate:
                raise ValueError(
                    f"{field}.{name} has sample_rate {theirs} but the codec's is {rate}: set "
                    f"model.init_args.{field}.{name}.init_args.sample_rate to {rate}"
                )


class GANCodecModule(TrainingModule):
    """Trains a ``Codec`` against one or more discriminators.

    Attributes: ``codec``, ``gan`` (the ``GANStep``: ``gan.discriminator``, ``gan.balancer``,
    ``gan.skipped_steps``), ``evaluation`` (the ``BitrateEvaluator``: ``evaluation.eval_n_q``,
    ``evaluation.bitrate_labels``, ``evaluation.metrics``), ``codec_ema`` (None without generator EMA).

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
        super().__init__(max_batches=max_batches)  # the hparams: Codec.from_checkpoint reads "codec"
        self.automatic_optimization = False
        self.codec = codec
        self.discriminator_per_bandwidth = discriminator_per_bandwidth
        copies = None
        if discriminator_per_bandwidth:
            if not codec.bandwidths:
                raise ValueError(
                    "discriminator_per_bandwidth needs the codec's bandwidths (codec.init_args.bandwidths): "
                    "one discriminator set is built per bandwidth"
                )
            copies = [f"nq{k}" for k in sorted(set(codec.operating_points().values()))]
        self.gan = GANStep(
            discriminators,
            reconstruction_losses,
            loss_weights,
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
            discriminator_copies=copies,
        )
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
        self.evaluation = BitrateEvaluator(codec, metrics, test_metrics, eval_bandwidths, per_bitrate_validation)
        check_codec_rates(codec, reconstruction_losses, metrics or {}, test_metrics or {})
        quantizer_losses = getattr(getattr(codec, "quantizer", None), "loss_names", None)
        if quantizer_losses is not None:
            known = {*reconstruction_losses, "adv", "feat", *quantizer_losses}
            unknown = sorted(set(loss_weights) - known)
            if unknown:
                raise ValueError(f"loss_weights names no loss: {unknown}; the losses are {sorted(known)}")

    # -- set-up ------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.codec.sample_rate, "channels": self.codec.channels}

    def setup(self, stage: str) -> None:
        super().setup(stage)
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
        if stage == "fit" and self.init_codec_from is not None:
            self._load_codec_weights(self.init_codec_from)

    def _load_codec_weights(self, path: str) -> None:
        """Strictly load the codec weights of ``path`` (see ``init_codec_from``)."""
        from codecplatform.checkpoints.io import check_codec_state, load_codec_state

        _, state = load_codec_state(path)
        check_codec_state(self.codec, state, f"codec of init_codec_from={path}")
        self.codec.load_state_dict(state, strict=True)

    def configure_optimizers(self) -> Any:
        return self.gan.configure_optimizers(self, self.codec.parameters())

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor] | None:
        """The codec forward, then one G/D step (see the module docstring). Returns the values it
        logged (step tensors, no host sync) so callbacks see exactly this batch's
        (``TrainingHealthMonitor``)."""
        x = batch
        if self.skip_empty(x):
            return None
        step = int(self.batch_counter)
        generator = torch.Generator().manual_seed(int(uniform_from(self.seed, step, "quantizer") * 2**62))
        out = self.codec(x, generator=generator)
        logs: dict[str, Tensor] = {}
        key = self._discriminator_key(out.quantized.n_q, logs)
        logs.update(self.gan.step(self, x, GeneratorOutput(out.x_hat, out.quantized.losses), key))
        logs["train/n_q"] = out.quantized.n_q.float().mean()
        # the codebooks the batch ran (codes: (B, max n_q, T')), each over the examples that used it
        perplexity = codebook_perplexities(out.quantized.codes, out.quantized.n_q, max(self.codec.codebook_sizes))
        logs.update({f"train/codebook/perplexity/{k}": p for k, p in enumerate(perplexity)})
        self.end_batch(logs, batch_size=x.shape[0])
        return logs

    def _discriminator_key(self, n_q: Tensor, logs: dict[str, Tensor]) -> str | None:
        """The discriminator copy of this batch: None (the only set), or with
        ``discriminator_per_bandwidth`` ``nq<k>`` for the batch's codebook count ``n_q`` (B,), which
        must be the same for the whole batch; logs that count and its bandwidth. The count comes from
        a generator seeded by the batch index: every DDP rank picks the same copy."""
        if not self.discriminator_per_bandwidth:
            return None
        low, high = torch.aminmax(n_q.detach())
        low, high = int(low), int(high)
        if low != high or f"nq{low}" not in self.gan.discriminator:
            counts = [int(key[2:]) for key in self.gan.discriminator]
            raise ValueError(
                f"discriminator_per_bandwidth needs one codebook count per batch among {counts} "
                f"(quantizer dropout: PerBatchChoice); this batch uses {low}..{high}"
            )
        logs["train/d/n_q"] = torch.tensor(float(low))
        logs["train/d/bandwidth"] = torch.tensor(self.codec.bitrate(low))
        return f"nq{low}"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs inside ``optimizer.step()``, after AMP unscaling: non-finite check, then clipping."""
        self.gan.on_before_optimizer_step(self, optimizer)

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, x: Tensor, stage: str) -> dict[str, Tensor] | None:
        """Encode once, decode at every evaluated codebook count, update that count's metrics, log the
        reconstruction losses at the full count. Returns ``{"codes": (B, n_q, T')}`` for callbacks
        (``CodebookUsageLogger`` counts them instead of encoding the batch again); None for an empty
        batch."""
        evaluated = self.evaluation.update(stage, x, self.codec)
        if evaluated is None:
            return None
        self.gan.log_reconstruction(self, stage, evaluated.x, evaluated.x_hat)
        return {"codes": evaluated.encoded.codes}

    def _finish_evaluation(self, stage: str) -> None:
        """Compute (on every rank), log, and on rank zero tabulate the per-bitrate results of ``stage``."""
        table = self.evaluation.compute_and_log(self, stage)
        self.evaluation.write_tables(self, stage, table, int(self.batch_counter))

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
        super().on_save_checkpoint(checkpoint)
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
        super().on_load_checkpoint(checkpoint)
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
