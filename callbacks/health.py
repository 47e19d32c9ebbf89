"""Warns while training runs when the discriminator or a codebook has stopped doing its job."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

REAL, FAKE, D_LOSS, EQUILIBRIUM = "train/d/real_score", "train/d/fake_score", "train/d/loss", "train/d/equilibrium_loss"
PERPLEXITY = re.compile(r"^train/codebook/perplexity/(\d+)$")

DISCRIMINATOR_HINT = "check discriminator lr / discriminator_schedule.start_step / gan loss weights (adv, feat)"
CODEBOOK_HINT = "check threshold_ema_dead_code / kmeans_init / codebook_size vs frames per batch / commit weight"


class TrainingHealthWarning(UserWarning):
    """A training-health finding of :class:`TrainingHealthMonitor`."""


warnings.simplefilter("always", TrainingHealthWarning)  # each finding names its batches: never deduplicate


class TrainingHealthMonitor(Callback):
    """Over each validation interval (the training batches between two validations, and those
    before the end of training), watches two failures that the losses hide, and warns about them
    at the next validation (rank zero; printed above the progress bar when one is shown, else as
    a :class:`TrainingHealthWarning`):

    - the discriminator sits at its equilibrium: on every step of the interval where it was updated,
      ``|train/d/real_score - train/d/fake_score| < score_tolerance`` (it no longer tells real from
      generated audio; with ``loss_tolerance`` also ``train/d/loss`` within that of
      ``train/d/equilibrium_loss``, the loss of such a discriminator: hinge 2, least squares 0.5, per
      sub-discriminator with ``reduction="sum"``). The warning gives the batch the run began at;
    - a codebook collapses: ``train/codebook/perplexity/<k>`` stays below ``min_perplexity`` on every
      step of the interval that ran codebook k (steps that did not log it, or logged NaN, are left out).

    The values are the ones the module's ``training_step`` returns (``GANCodecModule`` returns what
    it logged in that step); a module that returns none is read through ``trainer.callback_metrics``
    (which repeats a key's last value on steps that did not log it). They are kept on the device
    and read back once per interval. An interval is judged only with at least ``min_steps`` steps
    that logged the values. Each rank judges its own batches; rank zero reports. Findings are kept
    in ``messages``.

    Args:
        score_tolerance: the real/fake score gap below which a step counts as "at equilibrium".
        loss_tolerance: also require the discriminator loss this close to its equilibrium value
            (None: the scores alone decide; needs ``train/d/equilibrium_loss``).
        min_perplexity: a codebook below this perplexity on every step of an interval is reported.
        min_steps: the fewest steps with values for an interval to be judged.
    """

    def __init__(
        self,
        score_tolerance: float = 0.05,
        loss_tolerance: float | None = None,
        min_perplexity: float = 2.0,
        min_steps: int = 10,
    ):
        super().__init__()
        if score_tolerance <= 0 or (loss_tolerance is not None and loss_tolerance <= 0):
            raise ValueError(f"tolerances must be > 0, got {score_tolerance}, {loss_tolerance}")
        if min_steps < 1:
            raise ValueError(f"min_steps must be >= 1, got {min_steps}")
        self.score_tolerance = score_tolerance
        self.loss_tolerance = loss_tolerance
        self.min_perplexity = min_perplexity
        self.min_steps = min_steps
        self.messages: list[str] = []
        self._returns_values = False  # the module's training_step returns its values
        self._since: Tensor | None = None  # first batch of the current run of steps at equilibrium
        self._reset()

    def _reset(self) -> None:
        self._d_steps = 0
        self._d_all: Tensor | None = None  # every step of the interval at equilibrium
        self._d_sums: Tensor | None = None  # real score, fake score, loss, equilibrium loss
        self._cb_low: Tensor | None = None  # (K,) below min_perplexity on every step that used k
        self._cb_seen: Tensor | None = None  # (K,) steps that used k
        self._cb_max: Tensor | None = None  # (K,) highest perplexity

    # -- hooks ------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(outputs, Mapping):
            values, self._returns_values = outputs, True
        elif self._returns_values:
            return  # a batch the module skipped: it logged nothing
        else:
            values = trainer.callback_metrics
        index = self._batch_index(trainer, pl_module)
        if REAL in values and FAKE in values:
            self._observe_discriminator(values, index)
        perplexities = {int(m.group(1)): v for k, v in values.items() if (m := PERPLEXITY.match(k))}
        if perplexities:
            self._observe_codebooks(perplexities)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._judge(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._judge(trainer)

    # -- accumulation (device tensors, no host sync) ------------------------------------------
    @staticmethod
    def _batch_index(trainer: Trainer, pl_module: LightningModule) -> Tensor:
        """Index of the batch just trained (batches trained before it), as a tensor."""
        counter = getattr(pl_module, "batch_counter", None)
        if isinstance(counter, Tensor):
            return (counter.detach() - 1).reshape(())  # the module counted this batch already
        return torch.tensor(trainer.fit_loop.epoch_loop.batch_progress.total.ready - 1)

    def _observe_discriminator(self, values: Mapping[str, Any], index: Tensor) -> None:
        real, fake = (torch.as_tensor(values[key]).detach().float().reshape(()) for key in (REAL, FAKE))
        loss, equilibrium = (
            torch.as_tensor(values.get(key, float("nan")), device=real.device).detach().float().reshape(())
            for key in (D_LOSS, EQUILIBRIUM)
        )
        stuck = (real - fake).abs() < self.score_tolerance
        if self.loss_tolerance is not None and EQUILIBRIUM in values:
            stuck = stuck & ((loss - equilibrium).abs() < self.loss_tolerance)
        index = index.to(real.device)
        if self._since is None or self._since.device != real.device:
            self._since = index.clone()
        self._since = torch.where(stuck, self._since, index + 1)
        self._d_all = stuck if self._d_all is None else self._d_all & stuck
        sums = torch.stack([real, fake, loss, equilibrium])
        self._d_sums = sums if self._d_sums is None else self._d_sums + sums
        self._d_steps += 1

    def _observe_codebooks(self, values: dict[int, Any]) -> None:
        """``values``: codebook k -> its perplexity on this step (the codebooks the batch ran)."""
        first = torch.as_tensor(next(iter(values.values())))
        size = max(max(values) + 1, 0 if self._cb_low is None else len(self._cb_low))
        perplexity = torch.full((size,), float("nan"), device=first.device)  # NaN: not run on this step
        for k, value in values.items():
            perplexity[k] = torch.as_tensor(value, device=first.device).detach().float().reshape(())
        used = ~torch.isnan(perplexity)
        low = (perplexity < self.min_perplexity) | ~used
        if self._cb_low is None:
            self._cb_low, self._cb_seen, self._cb_max = low, used.long(), perplexity
            return
        if len(self._cb_low) < size:  # a codebook run for the first time in this interval
            grow = size - len(self._cb_low)
            self._cb_low = torch.cat([self._cb_low, low.new_ones(grow)])
            self._cb_seen = torch.cat([self._cb_seen, self._cb_seen.new_zeros(grow)])
            self._cb_max = torch.cat([self._cb_max, perplexity.new_full((grow,), float("nan"))])
        self._cb_low = self._cb_low & low
        self._cb_seen = self._cb_seen + used.long()
        self._cb_max = torch.fmax(self._cb_max, perplexity)  # fmax: NaN only where never used

    # -- judgement (once per interval) ----------------------------------------------------------
    def _judge(self, trainer: Trainer) -> None:
        findings = self.findings() if trainer.is_global_zero else []
        self._reset()
        for message in findings:
            self._report(trainer, message)

    def findings(self) -> list[str]:
        """The warnings the interval so far gives (reads the accumulated values back once)."""
        out = []
        if self._d_all is not None and self._d_steps >= self.min_steps and bool(self._d_all):
            real, fake, loss, equilibrium = (self._d_sums / self._d_steps).tolist()
            equilibrium = "" if math.isnan(equilibrium) else f" (equilibrium {equilibrium:.4g})"
            out.append(
                f"discriminator at equilibrium since batch {int(self._since)}: over the last {self._d_steps} "
                f"discriminator steps real score {real:.4g} ~ fake score {fake:.4g}, d loss {loss:.4g}"
                f"{equilibrium}: {DISCRIMINATOR_HINT}"
            )
        if self._cb_low is not None:
            low, seen, highest = self._cb_low.tolist(), self._cb_seen.tolist(), self._cb_max.tolist()
            for k, (is_low, steps, top) in enumerate(zip(low, seen, highest)):
                if is_low and steps >= self.min_steps:
                    out.append(
                        f"codebook {k} perplexity < {self.min_perplexity:g} for the whole interval "
                        f"({steps} steps, at most {top:.3g}): {CODEBOOK_HINT}"
                    )
        return out

    def _report(self, trainer: Trainer, message: str) -> None:
        self.messages.append(message)
        bar = trainer.progress_bar_callback
        if isinstance(bar, ProgressBar) and bar.is_enabled:
            bar.print(f"WARNING training health: {message}")  # tqdm.write / rich console: above the bar
        else:
            rank_zero_warn(message, category=TrainingHealthWarning)
