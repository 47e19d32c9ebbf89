"""Two CPU processes (gloo): after training, every rank holds identical weights, codebooks and
counters although each saw different data, and the wrong DDP setting fails with a clear error."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_two_ranks_end_identical(ddp_fits):
    """Part "identical" of tests/ddp_fits.py: 3 batches of 4 per rank, discriminator schedule with
    probability 0.5 (seed 3), per-example quantizer dropout p=0.5."""
    folder = ddp_fits.part("identical")
    rank0 = torch.load(folder / "rank0.pt")
    rank1 = torch.load(folder / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    codebooks = [k for k in rank0 if ".embed" in k or "cluster_size" in k]
    assert codebooks, "expected EMA codebook buffers in the state dict"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    assert int(rank0["batch_counter"]) == 3
    assert bool(rank0["codec.quantizer.layers.0.initialized"])
    # the whole two-rank job (all of tests/ddp_fits.py's fits, one after the other) ends cleanly
    assert ddp_fits.result.returncode == 0, ddp_fits.result.stderr[-3000:]


@pytest.mark.slow
def test_plain_ddp_is_refused_with_a_clear_error(ddp_fits):
    """Part "refused" of tests/ddp_fits.py: ``strategy="ddp"``; ``fit`` raises on both ranks."""
    folder = ddp_fits.part("refused")
    for rank in (0, 1):
        error = json.loads((folder / f"rank{rank}.json").read_text())
        assert error is not None, f"rank {rank}: plain DDP trained"
        assert error["type"] == "ValueError"
        assert "ddp_find_unused_parameters_true" in error["message"]
