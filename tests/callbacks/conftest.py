"""Tiny fits with the callbacks under test, logged to an MLflow sqlite store in a tmp folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from mlflow.tracking import MlflowClient
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightning"))
from test_gan_codec import NoiseAudio, tiny_module  # noqa: E402

from codecplatform.lightning.gan_codec import GANCodecModule  # noqa: E402
from codecplatform.tracking import MLflowLogger  # noqa: E402


def fit_tiny(
    callbacks: list[Callback],
    logger: MLflowLogger | bool,
    root: Path,
    batches: int = 2,
    val_every: int = 1,
    val_batches: int = 1,
    module: GANCodecModule | None = None,
    **trainer_kwargs,
) -> Trainer:
    """Fit the tiny GAN codec (8 kHz, 2 codebooks of 16; ``module``, default a fresh ``tiny_module()``)
    on NoiseAudio for ``batches`` batches of 4 x 2048 samples, validating (``val_batches`` batches of 2)
    every ``val_every`` batches."""
    kwargs = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=val_batches,
        val_check_interval=val_every,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kwargs.update(trainer_kwargs)
    trainer = Trainer(**kwargs)
    train = DataLoader(NoiseAudio(n=4 * batches), batch_size=4)
    val = DataLoader(NoiseAudio(n=2 * val_batches), batch_size=2)
    trainer.fit(module or tiny_module(), train, val)
    return trainer


@torch.no_grad()
def spread_codebooks(module: GANCodecModule, seed: int = 0) -> GANCodecModule:
    """Set each codebook to latent frames (residuals) of NoiseAudio picked at random, so the codes
    of the validation data are spread over many entries (a fresh or briefly trained tiny codec
    puts every frame on one entry)."""
    codec = module.codec
    x = torch.stack(list(NoiseAudio(n=8)))  # (8, 1, 2048)
    residual = codec.encoder(x).transpose(1, 2).reshape(-1, codec.quantizer.dimension)  # (frames, D)
    generator = torch.Generator().manual_seed(seed)
    for layer in codec.quantizer.layers:
        layer.embed.copy_(residual[torch.randperm(len(residual), generator=generator)[: layer.codebook_size]])
        layer.embed_avg.copy_(layer.embed)
        layer.cluster_size.fill_(1.0)
        layer.initialized.fill_(True)
        residual = residual - layer.embed[torch.cdist(residual, layer.embed).argmin(dim=1)]
    return module


@pytest.fixture
def mlflow_logger(tmp_path, empty_mlflow_store):  # empty_mlflow_store: tests/conftest.py
    """An MLflowLogger writing to ``<tmp>/mlflow.db`` (artifacts under ``<tmp>/artifacts``)."""
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MLflowLogger(experiment_name="callbacks", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))


def artifact_files(logger: MLflowLogger, path: str = "") -> list[str]:
    """All artifact file paths of the logger's run under ``path``, recursively, sorted."""
    client: MlflowClient = logger.experiment
    out: list[str] = []
    for info in client.list_artifacts(logger.run_id, path or None):
        out += artifact_files(logger, info.path) if info.is_dir else [info.path]
    return sorted(out)


def download(logger: MLflowLogger, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(logger.experiment.download_artifacts(logger.run_id, path, str(dst)))


def metric_history(logger: MLflowLogger, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in logger.experiment.get_metric_history(logger.run_id, key)]
