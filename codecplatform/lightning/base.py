"""TrainingModule: the set-up every LightningModule of the platform shares.

Every training module (GAN codecs, the code LM, the MuCodec stages) needs the same five things, and
they live here once:

  hyperparameters  built by LightningCLI, ``hparams`` are the module's whole config (what
                   ``Codec.from_checkpoint`` and the stage bundles rebuild models from); built in
                   Python, only the arguments that are plain data (None, bool, numbers, strings,
                   paths, lists and string-keyed dicts of them) are kept: modules, optimizer
                   factories and metrics are objects, not config.
  data check       ``setup`` compares the data module's attributes (``sample_rate``,
                   ``channels``, ...) with :meth:`TrainingModule.expected_data` and raises
                   ValueError on a mismatch, before any batch runs; it warns when the stage's
                   manifests hold recordings of lower source rates (upsampled), naming the rates.
  empty batches    :meth:`TrainingModule.skip_empty`: a batch is skipped on every rank when any
                   rank's batch is empty (all its files were bad); one rank skipping alone would
                   leave the others waiting in the gradient all-reduce.
  batch counter    ``batch_counter`` (buffer, in checkpoints) counts trained batches: the clock of
                   schedules and seeded draws (``trainer.global_step`` counts optimizer steps, two
                   per batch under GAN training). :meth:`TrainingModule.end_batch` advances it, logs
                   ``batches`` (progress bar) and stops the trainer at ``max_batches``.
  optimizer        :meth:`TrainingModule.make_optimizer`: the given factory, or the class's
                   ``default_optimizer`` (Adam, lr 3e-4, betas (0.5, 0.9), EnCodec; a subclass sets
                   its paper's), with an optional scheduler stepped every batch.
  random states    checkpoints hold the global random states (torch, CUDA, numpy, Python;
                   ``rng_states``, rank zero's), set back at the first training batch of a resumed
                   fit: draws from the global generator (dead-code replacement, MUFFIN's search
                   dropout) repeat the uninterrupted run's. Lightning saves none, and re-seeding
                   (``seed_everything``) restarts the stream. A subclass overriding
                   ``on_save_checkpoint``/``on_load_checkpoint`` calls ``super()``'s.
"""

from __future__ import annotations

import inspect
import os
import random
import warnings
from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn


class TrainingModule(LightningModule):
    """Base of the platform's LightningModules (see the module docstring for what it owns).

    A subclass calls ``super().__init__(max_batches=max_batches)`` first in its ``__init__`` (the
    hyperparameters are read from its arguments at that moment), implements :meth:`expected_data`,
    calls :meth:`skip_empty` at the top of ``training_step`` and :meth:`end_batch` once per trained
    batch. A subclass that overrides ``setup`` calls ``super().setup(stage)``.

    Args:
        max_batches: stop training after this many batches (None: the trainer decides); >= 1.

    Raises:
        ValueError: ``max_batches`` < 1.
    """

    #: the optimizer of an unset optimizer argument (EnCodec's); subclasses set their paper's
    default_optimizer: OptimizerCallable = partial(torch.optim.Adam, lr=3e-4, betas=(0.5, 0.9))

    def __init__(self, max_batches: int | None = None):
        super().__init__()
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {max_batches}")
        self.max_batches = max_batches
        self.register_buffer("batch_counter", torch.zeros((), dtype=torch.long))
        self._pending_rng_states: dict[str, Any] | None = None  # from a checkpoint, set at the next batch
        frame = inspect.currentframe().f_back  # the subclass's __init__
        if _given_hyperparameters.get() is not None:  # LightningCLI: its config is the hparams
            self.save_hyperparameters(frame=frame)
        else:
            arguments: dict[str, Any] = {}
            for values in collect_init_args(frame, [], classes=(HyperparametersMixin,)):
                arguments.update(values)
            objects = [name for name, value in arguments.items() if not is_config_value(value)]
            self.save_hyperparameters(ignore=objects, frame=frame)

    # -- data ----------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int | tuple[int, ...]]:
        """Data-module attribute -> the value (or the values) the model takes, e.g.
        ``{"sample_rate": 24000, "channels": (1, 2)}``; checked in ``setup``."""
        raise NotImplementedError(f"{type(self).__name__} must say which data it takes (expected_data)")

    def setup(self, stage: str) -> None:
        """Check the data module against :meth:`expected_data` (a missing attribute is not checked)."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for name, expected in self.expected_data().items():
            allowed = (expected,) if isinstance(expected, int) else tuple(expected)
            given = getattr(data, name, None)
            if given is not None and given not in allowed:
                wanted = " or ".join(str(value) for value in allowed)
                raise ValueError(
                    f"data.{name}={given} but {type(self).__name__} expects {name}={wanted}: "
                    f"set data.init_args.{name} to match the model"
                )
        rate = getattr(data, "sample_rate", None)
        if isinstance(rate, int):
            warn_upsampled(data, stage, rate)

    def skip_empty(self, x: Tensor) -> bool:
        """Whether to skip the batch ``x`` (B, ...): True, with a warning, when the batch of any rank
        is empty (B = 0); every rank gets the same answer (one all-gather under DDP)."""
        if not any_rank_empty(self, x):
            return False
        warnings.warn(
            f"skipping batch {int(self.batch_counter)} on every rank: a rank's batch was empty "
            "(all its files were bad)",
            stacklevel=3,
        )
        return True

    # -- the batch counter ---------------------------------------------------------------------
    def end_batch(self, logs: dict[str, Tensor], batch_size: int) -> None:
        """After a trained batch: log ``logs`` (per step), advance ``batch_counter``, log it as
        ``batches`` (progress bar) and stop the trainer once it reaches ``max_batches``. Without a
        trainer (a step called by hand) only the counter moves."""
        self.batch_counter += 1
        if self._trainer is None:
            return
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log(
            "batches", self.batch_counter.float(), on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size
        )
        if self.max_batches is not None and int(self.batch_counter) >= self.max_batches:
            self.trainer.should_stop = True

    # -- random states -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the global random states (``rng_states``; see the module docstring)."""
        checkpoint[RNG_STATES_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint's random states for the next training batch: restoring them here
        would be undone by what runs before it (the data loader's iterator draws a seed)."""
        self._pending_rng_states = checkpoint.get(RNG_STATES_KEY)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        states, self._pending_rng_states = self._pending_rng_states, None
        if states is not None:
            set_rng_states(states)

    # -- optimizer -----------------------------------------------------------------------------
    def make_optimizer(
        self,
        parameters: Iterable[nn.Parameter],
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
    ) -> Any:
        """``configure_optimizers``'s answer for one optimizer over ``parameters``: ``optimizer``
        (None: ``default_optimizer``) and, when given, ``scheduler`` stepped every batch."""
        built = (optimizer or self.default_optimizer)(parameters)
        if scheduler is None:
            return built
        return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler(built), "interval": "step"}}


RNG_STATES_KEY = "rng_states"
STAGE_MANIFESTS = {"fit": ("train_cuts", "val_cuts"), "validate": ("val_cuts",), "test": ("test_cuts",)}


def source_rates(path: str | os.PathLike) -> dict[int, int]:
    """Source sample rate -> number of recordings, from a lhotse cut manifest (``.jsonl``/``.jsonl.gz``,
    each cut's ``recording.sampling_rate``; cuts without one are not counted)."""
    import gzip
    import json
    from collections import Counter

    opener = gzip.open if str(path).endswith(".gz") else open
    counts: Counter[int] = Counter()
    with opener(path, "rt") as lines:
        for line in lines:
            rate = (json.loads(line).get("recording") or {}).get("sampling_rate") if line.strip() else None
            if isinstance(rate, int):
                counts[rate] += 1
    return dict(counts)


def warn_upsampled(data: Any, stage: str, rate: int) -> None:
    """Warn when the manifests ``stage`` reads hold recordings of a source rate below ``rate``: they
    are upsampled, with nothing above half their rate, and score as a codec of ``rate`` would not."""
    for name in STAGE_MANIFESTS.get(stage, ()):
        path = getattr(data, name, None)
        if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
            continue
        counts = source_rates(path)
        low = {r: n for r, n in sorted(counts.items()) if r < rate}
        if low:
            seen = ", ".join(f"{r} Hz: {n}" for r, n in sorted(counts.items()))
            warnings.warn(
                f"{name}: {sum(low.values())} of {sum(counts.values())} recordings come from source rates below "
                f"the {rate} Hz the model runs at ({seen}): they are upsampled, with nothing above half their rate",
                stacklevel=3,
            )


def rng_states() -> dict[str, Any]:
    """The global random states of torch, CUDA (each device), numpy and Python, in types that
    ``torch.load(weights_only=True)`` reads (tensors, ints, strings, tuples)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": (version, tuple(state), python_gauss),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Set what :func:`rng_states` returned; CUDA states only on as many devices as were saved."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("torch.cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, state, python_gauss = states["python"]
    random.setstate((version, tuple(state), python_gauss))


def any_rank_empty(module: LightningModule, x: Tensor) -> bool:
    """Whether the batch ``x`` (B, ...) of any rank is empty (B = 0); the same answer on every rank."""
    size = torch.tensor(x.shape[0], device=x.device)
    if module._trainer is not None and module.trainer.world_size > 1:
        size = module.all_gather(size).min()
    return int(size) == 0


def is_config_value(value: Any) -> bool:
    """Whether ``value`` is plain config data: None, bool, int, float, str, a path, or a list, tuple
    or string-keyed dict of such values."""
    if value is None or isinstance(value, (bool, int, float, str, os.PathLike)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_config_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and is_config_value(item) for key, item in value.items())
    return False
