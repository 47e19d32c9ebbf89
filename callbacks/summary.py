"""The few lines a finished ``fit`` prints: its MLflow run, its best and last checkpoints, and the UI
address that opens the run."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.artifacts import mlflow_loggers
from codecplatform.compare import run_url, ui_server, view_url


class RunSummary(Callback):
    """At the end of ``fit`` (global rank zero), prints::

        fit finished: MLflow run <run id> (experiment <name>, id <id>; <tracking URI>)
          best checkpoint: outputs/.../best-400.ckpt (val/mel_distance 0.8123)
          last checkpoint: outputs/.../last.ckpt (resume from this one)
          open the run:    http://127.0.0.1:5000/#/experiments/<id>/runs/<run id>?workflowType=machine_learning
          all runs:        http://127.0.0.1:5000/#/experiments/<id>/runs?viewStateShareKey=...

    The best checkpoint is that of a ModelCheckpoint with a ``monitor``; the last one the
    ``last_model_path`` of one with ``save_last``. UI addresses open MLflow in its model-training mode
    (:func:`codecplatform.compare.run_url`): the tracking server for an ``http(s)://`` store, else
    where ``make ui`` serves it. Without an MLflow logger only the checkpoints are printed.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            print("\n".join(summary_lines(trainer)), flush=True)


def summary_lines(trainer: Trainer) -> list[str]:
    """The lines :class:`RunSummary` prints for ``trainer``."""
    loggers = mlflow_loggers(trainer)
    if loggers:
        logger = loggers[0]
        experiment_id, run_id, uri = logger.experiment_id, logger.run_id, logger._tracking_uri
        name = getattr(logger, "_experiment_name", None) or experiment_id
        lines = [f"fit finished: MLflow run {run_id} (experiment {name}, id {experiment_id}; {uri})"]
    else:
        lines = ["fit finished (no MLflow logger)"]
    best, last = checkpoints(trainer)
    lines.append(f"  best checkpoint: {best or 'none (no validation saved one)'}")
    lines.append(f"  last checkpoint: {last + ' (resume from this one)' if last else 'none'}")
    if loggers:
        server = ui_server(uri)
        lines.append(f"  open the run:    {run_url(server, experiment_id, run_id)}")
        lines.append(f"  all runs:        {view_url(server, experiment_id)}")
    return lines


def checkpoints(trainer: Trainer) -> tuple[str | None, str | None]:
    """(best, last): ``"<path> (<monitor> <score>)"`` of the first monitored ModelCheckpoint that saved
    one, and the ``last_model_path`` of the first that keeps a last checkpoint; None where there is none."""
    best = last = None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if best is None and callback.monitor and callback.best_model_path:
            score: Any = callback.best_model_score
            shown = f"{float(score):.4g}" if score is not None else "?"
            best = f"{callback.best_model_path} ({callback.monitor} {shown})"
        if last is None and callback.last_model_path:
            last = callback.last_model_path
    return best, last
