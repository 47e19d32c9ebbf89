"""Where callbacks put files, and how they find the audio and the codec in a batch and a module.

Files go to every MLflow logger of the trainer, as artifacts of its run (written to a temporary
folder, uploaded, then deleted). A trainer without an MLflow logger keeps them on disk under
``<trainer.log_dir>/artifacts/<artifact path>``; ``trainer.log_dir`` is ``trainer.default_root_dir``
when there is no logger at all, and the logger's version folder for a CSV or TensorBoard logger.
Only global rank zero writes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from torch import Tensor

LOCAL_ARTIFACTS = "artifacts"


def mlflow_loggers(trainer: Trainer) -> list[MLFlowLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]


def local_artifact_root(trainer: Trainer) -> Path:
    """``<trainer.log_dir>/artifacts``: where files go when no MLflow logger takes them.

    ``trainer.log_dir`` itself broadcasts from rank zero (a collective, which rank zero alone must not
    call): the same folder is found here without one: the first logger's ``log_dir`` (CSV,
    TensorBoard) or ``save_dir``, else ``trainer.default_root_dir``.
    """
    folder = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = getattr(logger, "log_dir", None) or logger.save_dir
    return Path(folder or trainer.default_root_dir) / LOCAL_ARTIFACTS


@contextmanager
def artifact_folder(trainer: Trainer, artifact_path: str) -> Iterator[Path]:
    """A folder to write files into; on exit they become artifacts under ``artifact_path``.

    With MLflow loggers: a temporary folder, uploaded to each logger's run with
    ``log_artifacts(run_id, folder, artifact_path)`` and then removed. Without: the folder
    ``<trainer.log_dir>/artifacts/<artifact_path>`` itself (created), kept.
    """
    loggers = mlflow_loggers(trainer)
    if not loggers:
        folder = local_artifact_root(trainer) / artifact_path
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="codecplatform-artifacts-") as tmp:
        folder = Path(tmp)
        yield folder
        for logger in loggers:
            logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path)


def batch_audio(batch: Any, key: str = "audio") -> Tensor:
    """The (B, C, T) audio of a batch: the batch itself when it is a tensor, ``batch[key]`` for a
    mapping, the first element of a tuple or list."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"the batch is a mapping without the audio key {key!r} (keys: {sorted(batch)})")
        batch = batch[key]
    elif isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, Tensor) or batch.dim() != 3:
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"expected batch audio of shape (batch, channels, samples), got {shape}")
    return batch


def module_codec(pl_module: LightningModule, callback: str) -> Any:
    """``pl_module.codec`` (a ``codecplatform.models.base.AudioCodec``), or a clear error."""
    codec = getattr(pl_module, "codec", None)
    if codec is None:
        raise AttributeError(
            f"{callback} needs the LightningModule to have a `codec` attribute (an AudioCodec); "
            f"{type(pl_module).__name__} has none"
        )
    return codec


def batches_seen(trainer: Trainer, pl_module: LightningModule) -> int:
    """The training batches so far: the module's ``batch_counter`` buffer when it has one (restored
    from checkpoints, also by ``validate``), else the trainer's count of completed training batches."""
    counter = getattr(pl_module, "batch_counter", None)
    if isinstance(counter, Tensor):
        return int(counter)
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)


def validation_folder(kind: str, batches: int) -> str:
    """Artifact folder of one validation: ``<kind>/val_<batches, 7 digits>`` (sorts by time)."""
    return f"{kind}/val_{batches:07d}"
