"""A batch whose files all failed to load arrives empty (0, C, T). Training skips it without
changing anything, and under DDP every rank skips it together (a rank skipping alone would leave
the others waiting in the gradient all-reduce forever)."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from test_gan_codec import NoiseAudio, tiny_module
from torch.utils.data import DataLoader, Dataset


class Batches(Dataset):
    """Whole batches (B, 1, T); the ones at ``empty`` are (0, 1, T)."""

    def __init__(self, n: int, empty: set[int], batch_size: int = 2):
        self.clips = NoiseAudio(n=n * batch_size).x
        self.n, self.empty, self.batch_size = n, empty, batch_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        batch = self.clips[i * self.batch_size : (i + 1) * self.batch_size]
        return batch[:0] if i in self.empty else batch


def fit(module, data, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def test_an_empty_batch_changes_nothing():
    torch.manual_seed(0)
    module = tiny_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.warns(UserWarning, match="skipping batch 0 on every rank"):
        fit(module, Batches(n=1, empty={0}))
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert int(module.batch_counter) == 0


def test_training_goes_on_after_an_empty_batch():
    torch.manual_seed(0)
    module = tiny_module()
    with pytest.warns(UserWarning, match="skipping batch 1"):
        fit(module, Batches(n=3, empty={1}))
    assert int(module.batch_counter) == 2


@pytest.mark.slow
def test_ranks_skip_a_batch_together_when_one_of_them_is_empty(ddp_fits):
    """Part "empty_batches" of tests/ddp_fits.py: Batches(n=6, empty={2}) on two ranks: the
    DistributedSampler deals batches 0, 2, 4 to rank 0 and 1, 3, 5 to rank 1, so only rank 0's second
    batch is empty."""
    folder = ddp_fits.part("empty_batches")
    rank0, rank1 = (torch.load(folder / f"rank{r}.pt") for r in (0, 1))
    assert int(rank0["batch_counter"]) == int(rank1["batch_counter"]) == 2  # 3 batches each, one skipped
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
