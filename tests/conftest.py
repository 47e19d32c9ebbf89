"""Shared fixtures: generated audio folders with lhotse manifests, an isolated working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic_audio import write_tones


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Tiny models run several times faster on one thread (LSTM and small convs spend their time
    in thread synchronisation on a 2-core machine); subprocesses and notebook kernels inherit it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_manifests(tmp_path):
    """make_manifests(sample_rate, channels) -> {"train"|"val"|"test": cut manifest path}."""

    def make(sample_rate: int = 16000, channels: int = 1, n_files: int = 6) -> dict[str, Path]:
        from datamodules.manifests import prepare_manifests

        root = tmp_path / f"audio_{sample_rate}_{channels}"
        write_tones(root / "wav", sample_rate, channels, n_files)
        return prepare_manifests(root / "wav", root / "manifests", val_fraction=0.2, test_fraction=0.2, seed=0)

    return make


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Run in a fresh directory, so mlflow.db, mlruns/ and outputs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def latest_checkpoint():
    """latest_checkpoint(trainer) -> the path of the newest last.ckpt of a finished fit."""

    def find(trainer) -> str:
        paths = [c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path]
        assert paths, "no ModelCheckpoint with save_last wrote a checkpoint"
        return paths[0]

    return find
