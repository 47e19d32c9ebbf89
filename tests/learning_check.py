"""Short training runs that must learn: what the per-family learning tests share.

A family's module is built from its experiment YAML plus the tiny override (the recipe's losses,
weights and parts, small sizes), trained a few dozen batches on windows of one generated clip with
Lightning, and judged on a held-out generated clip against the same module untrained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from codecplatform.config import compose_config, instantiate, merge_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def music_clip(sample_rate: int, channels: int = 1, seconds: float = 1.0, seed: int = 0) -> Tensor:
    """(C, T): three harmonic notes (pitches set by ``seed``) with slowly varying loudness, a little
    noise; the channels differ in level and detuning."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    roots = 110.0 * 2 ** (torch.randint(0, 12, (3,), generator=g) / 12)
    out = []
    for c in range(channels):
        x = torch.zeros_like(t)
        for i, f0 in enumerate(roots.tolist()):
            f0 *= 2**i * (1 + 0.003 * c)
            envelope = 0.5 * (1 + torch.sin(2 * math.pi * (0.7 + 0.4 * i) * t + i + seed))
            x += envelope * sum(torch.sin(2 * math.pi * f0 * k * t + k) / k for k in range(1, 5))
        out.append((0.3 - 0.05 * c) * x / x.abs().max() + 0.01 * torch.randn(t.shape, generator=g))
    return torch.stack(out)


class RandomWindows(Dataset):
    """``n`` windows of ``window`` samples at seeded random offsets of ``clip`` (C, T); with ``text``,
    items are ``{"audio", "text"}`` (the batches of ``return_text: true``)."""

    def __init__(self, clip: Tensor, window: int, n: int, text: str | None = None):
        if clip.shape[-1] <= window:
            raise ValueError(f"clip of {clip.shape[-1]} samples is not longer than the window {window}")
        self.clip, self.window, self.n, self.text = clip, window, n, text
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        offset = int(torch.randint(0, self.clip.shape[-1] - self.window, (1,), generator=self.generator))
        audio = self.clip[:, offset : offset + self.window]
        return audio if self.text is None else {"audio": audio, "text": self.text}


def build_module(*configs: str | Path, overrides: dict[str, Any] | None = None) -> LightningModule:
    """The ``model`` of the composed configs (paths relative to ``experiments/``), with ``overrides``
    merged into ``model.init_args`` (a nested dict; lists replaced whole)."""
    merged: dict[str, Any] = {}
    for config in configs:
        merged = merge_config(merged, compose_config(EXPERIMENTS / config))
    model = merged["model"]
    if overrides:
        model = merge_config(model, {"init_args": overrides})
    return instantiate(model, LightningModule)


class _BatchLogs(Callback):
    def __init__(self, keys: list[str]):
        self.keys, self.rows = keys, []

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, i: int) -> None:
        metrics = trainer.callback_metrics
        self.rows.append({k: float(metrics[k]) for k in self.keys if k in metrics})


def train(module: LightningModule, data: Dataset, batch_size: int, keys: list[str]) -> dict[str, list[float]]:
    """Fit ``module`` one epoch over ``data`` on the CPU (no validation, logger or checkpoints) ->
    the per-batch values of the logged ``keys``."""
    record = _BatchLogs(keys)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[record],
    )
    trainer.fit(module, DataLoader(data, batch_size=batch_size))
    return {k: [row[k] for row in record.rows if k in row] for k in keys}


def assert_falls(values: list[float], ratio: float, name: str) -> None:
    """The mean of the last quarter of ``values`` is below ``ratio`` x the mean of the first quarter."""
    n = max(1, len(values) // 4)
    first, last = sum(values[:n]) / n, sum(values[-n:]) / n
    assert math.isfinite(last) and last < ratio * first, (
        f"{name} did not fall: first {n} batches {first:.4g}, last {n} {last:.4g} (need < {ratio} x)"
    )


def assert_better(untrained: float, trained: float, ratio: float, name: str) -> None:
    """A held-out error after training is below ``ratio`` x the untrained module's."""
    assert math.isfinite(trained) and trained < ratio * untrained, (
        f"held-out {name}: trained {trained:.4g}, untrained {untrained:.4g} (need < {ratio} x untrained)"
    )
