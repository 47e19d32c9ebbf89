"""What the distributed tests run inside `codecplatform fit` (importable through PYTHONPATH), and
the test corpus writer.

- :class:`RecordingDataModule`: the LhotseAudioDataModule whose training dataset notes the cut ids
  of every batch it loads.
- :class:`BatchRecorder`: appends, per rank, one JSON line per training batch to
  ``out_dir/rank<r>.jsonl``: ``{"index": batches trained before it, "epoch", "ids": cut ids,
  "hashes": sha1 of each (C, T) item}``; at the end of fit saves the module's state dict to
  ``out_dir/rank<r>.pt`` and the trainer's layout (world size, nodes, node rank, devices) to
  ``out_dir/rank<r>.json``; optionally stops (sleeps, to be killed) at the start of batch ``hang_at``
  after writing ``out_dir/ready<r>``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

from datamodules.lhotse_audio import LhotseAudioDataModule


class _IdNotingDataset(Dataset):
    """Delegates ``dataset[cuts]`` and notes ``[cut.id for cut in cuts]`` in ``noted``."""

    def __init__(self, dataset: Dataset, noted: deque) -> None:
        self.dataset, self.noted = dataset, noted

    def __getitem__(self, cuts: CutSet) -> torch.Tensor:
        self.noted.append([cut.id for cut in cuts])
        return self.dataset[cuts]


class RecordingDataModule(LhotseAudioDataModule):
    """LhotseAudioDataModule whose training batches leave their cut ids in ``train_ids`` (a FIFO,
    one list per loaded batch, in loading order; needs ``num_workers: 0``)."""

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        if self.num_workers != 0:
            raise ValueError("RecordingDataModule needs num_workers: 0")
        self.train_ids: deque = deque()
        return DataLoader(
            _IdNotingDataset(loader.dataset, self.train_ids),
            sampler=loader.sampler,
            batch_size=None,
            num_workers=0,
            generator=loader.generator,
        )


def item_hashes(batch: torch.Tensor) -> list[str]:
    """sha1 of the bytes of each item of a (B, C, T) batch."""
    return [hashlib.sha1(item.contiguous().numpy().tobytes()).hexdigest()[:16] for item in batch]


class BatchRecorder(Callback):
    """See the module docstring.

    Args:
        out_dir: folder for ``rank<r>.jsonl``, ``rank<r>.pt`` and ``ready<r>``.
        hang_at: at the start of the batch with this index (batches trained before it), write
            ``ready<r>`` and sleep until killed; None: never.
    """

    def __init__(self, out_dir: str, hang_at: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.hang_at = hang_at

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        rank = trainer.global_rank
        index = int(pl_module.batch_counter)
        if self.hang_at is not None and index == self.hang_at:
            (self.out_dir / f"ready{rank}").write_text(str(index))
            time.sleep(3600)
        ids = trainer.datamodule.train_ids.popleft()
        record = {"index": index, "epoch": trainer.current_epoch, "ids": ids, "hashes": item_hashes(batch)}
        with open(self.out_dir / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank = trainer.global_rank
        torch.save(pl_module.state_dict(), self.out_dir / f"rank{rank}.pt")
        layout = {
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "node_rank": trainer.node_rank,
            "devices": trainer.num_devices,
        }
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(layout))


def read_batches(path: Path) -> list[dict]:
    """The records a BatchRecorder wrote to ``path`` (one dict per batch)."""
    return [json.loads(line) for line in path.read_text().splitlines()]
