"""Two CPU processes (gloo): after training, every rank holds identical weights, codebooks and
counters although each saw different data, and the wrong DDP setting fails with a clear error."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader
    from codecplatform.quantizers.dropout import PerExampleDropout
    from test_gan_codec import NoiseAudio, tiny_module
    from codecplatform.lightning.schedule import DiscriminatorSchedule

    torch.manual_seed(0)
    module = tiny_module(discriminator_schedule=DiscriminatorSchedule(probability=0.5, seed=3))
    module.codec.quantizer.dropout = PerExampleDropout(p=0.5)  # per-rank random draws must not desync
    trainer = Trainer(accelerator="cpu", devices=2, strategy={strategy!r}, max_epochs=1, limit_train_batches=3,
                      limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module, DataLoader(NoiseAudio(n=24), batch_size=4))  # DistributedSampler: different data per rank
    torch.save(module.state_dict(), f"{out}/rank{{trainer.global_rank}}.pt")
    """
)


def run(tmp_path: Path, strategy: str) -> subprocess.CompletedProcess:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), strategy=strategy, out=str(tmp_path)))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_end_identical(tmp_path):
    result = run(tmp_path, "ddp_find_unused_parameters_true")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    codebooks = [k for k in rank0 if ".embed" in k or "cluster_size" in k]
    assert codebooks, "expected EMA codebook buffers in the state dict"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    assert int(rank0["batch_counter"]) == 3
    assert bool(rank0["codec.quantizer.layers.0.initialized"])


@pytest.mark.slow
def test_plain_ddp_is_refused_with_a_clear_error(tmp_path):
    result = run(tmp_path, "ddp")
    assert result.returncode != 0
    assert "ddp_find_unused_parameters_true" in result.stderr
