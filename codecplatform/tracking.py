"""MLflow tracking: the logger, the resolved config as a run artifact, and run tags."""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from codecplatform.compare import prepare_experiment


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with two fixes.

    - A relative sqlite store (``sqlite:///mlflow.db``) is resolved against the working directory
      when the logger is made: MLflow caches stores by URI, so within one process a relative URI
      would keep pointing at the first directory it was used in.
    - It can log a later stage (``test``, ``validate``) into the run of a fit (``run_id=...``):
      MLflow refuses to change a logged parameter, so parameters the run already has keep their
      fit-time values; the later stage's whole config is still stored as ``config/<stage>.yaml``.
    """

    def __init__(self, *args: Any, tracking_uri: str | None = None, **kwargs: Any):
        super().__init__(*args, tracking_uri=absolute_sqlite_uri(tracking_uri), **kwargs)
        self._checkpoint_callbacks: list[Any] = []  # every ModelCheckpoint that saved (log_model=True)

    @property
    def experiment(self) -> Any:
        """The MLflow client; when it first opens the experiment (rank zero), the experiment is tagged
        as model training and gets the "codec quality" runs view
        (:func:`codecplatform.compare.prepare_experiment`), so the UI opens on its runs."""
        opening = not self._initialized
        client = super().experiment
        if opening and self._initialized and self._experiment_id is not None:
            prepare_experiment(client, self._experiment_id)
        return client

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Lightning keeps only the last ModelCheckpoint that saved and logs its files at the end: with
        a "best" and a "last" callback the best checkpoint was never logged. Every one is kept here."""
        super().after_save_checkpoint(checkpoint_callback)
        if self._log_model is True and all(c is not checkpoint_callback for c in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Logs the files of every ModelCheckpoint (``best-<batch>.ckpt`` too) as run artifacts, then
        Lightning's finalize (which logs the last callback's, and ends the run)."""
        if self._initialized:
            for callback in self._checkpoint_callbacks:
                if callback is not self._checkpoint_callback:
                    self._scan_and_log_checkpoints(callback)
        super().finalize(status)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        flat = _flatten_dict(_convert_params(params))
        existing = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({k: v for k, v in flat.items() if k not in existing})


def absolute_sqlite_uri(uri: str | None) -> str | None:
    """``sqlite:///relative/path.db`` -> ``sqlite:////absolute/path.db``; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri is None or not uri.startswith(prefix) or uri[len(prefix) :].startswith("/"):
        return uri
    return prefix + os.path.abspath(uri[len(prefix) :])


class MLflowSaveConfigCallback(SaveConfigCallback):
    """Stores the fully resolved config in the MLflow run (artifact ``config/<stage>.yaml``) and tags
    the run with :func:`run_tags`: the stage, the module's class and the codec's ``describe()``
    (family, sample rate, channels, frame rate, maximum bitrate, parts). A tag the logger was
    configured with (the experiment's ``family``) is not overwritten. Runs on rank 0 only.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        config = self.parser.dump(self.config, skip_none=False)
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        for logger in trainer.loggers:
            if not isinstance(logger, MLFlowLogger):
                continue
            client, run_id = logger.experiment, logger.run_id
            client.log_text(run_id, config, f"config/{stage}.yaml")
            configured = logger.tags or {}
            for key, value in run_tags(pl_module, stage).items():
                if key not in configured:
                    client.set_tag(run_id, key, value)


def run_tags(pl_module: LightningModule, stage: str) -> dict[str, str]:
    """``stage``, ``module`` (the LightningModule's class) and, when the module has a ``codec`` (an
    ``AudioCodec``), the codec's ``describe()``."""
    tags = {"stage": stage, "module": type(pl_module).__name__}
    codec = getattr(pl_module, "codec", None)
    if codec is not None:
        tags.update({key: str(value) for key, value in codec.describe().items() if key not in tags})
    return tags
