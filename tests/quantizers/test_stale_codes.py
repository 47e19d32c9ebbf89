"""Stale-code replacement of the factorized codebooks (MuCodec's ``stale_tolerance``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codecplatform.quantizers.factorized import FactorizedCodebook, FactorizedResidualVectorQuantizer


def test_off_by_default_keeps_dac_state_keys():
    layer = FactorizedCodebook(8, 16, 4)
    assert "stale_steps" not in layer.state_dict()
    assert layer.stale_tolerance is None


def test_unused_entries_are_replaced_after_exactly_n_consecutive_steps():
    torch.manual_seed(0)
    layer = FactorizedCodebook(8, 16, 4, stale_tolerance=3).train()
    z = torch.randn(2, 8, 5)
    codes = layer(z).codes.flatten().unique()
    unused = torch.ones(16, dtype=torch.bool)
    unused[codes] = False
    before = layer.codebook.weight.detach().clone()
    assert torch.equal(layer.stale_steps[unused], torch.ones(int(unused.sum()), dtype=torch.long))
    assert torch.equal(layer.stale_steps[~unused], torch.zeros(int((~unused).sum()), dtype=torch.long))
    layer(z)  # the same batch: the same codes (nothing replaced yet), counters at 2
    assert torch.equal(layer.codebook.weight, before)
    layer(z)  # third consecutive unused step: replaced
    after = layer.codebook.weight.detach()
    assert torch.equal(after[~unused], before[~unused])  # used entries untouched
    assert not torch.isclose(after[unused], before[unused]).all(dim=1).any()
    # replacements are L2-normalized projected latents of the batch
    torch.testing.assert_close(after[unused].norm(dim=1), torch.ones(int(unused.sum())))
    z_e = F.normalize(layer.in_proj(z).transpose(1, 2).reshape(-1, 4), dim=1)
    assert all(torch.isclose(z_e, row[None]).all(dim=1).any() for row in after[unused])
    assert layer.replaced_codes == int(unused.sum())
    assert not layer.stale_steps.any()  # counts restart


def test_a_use_resets_the_count():
    layer = FactorizedCodebook(4, 3, 2, stale_tolerance=3).train()
    z_e, mask = torch.randn(1, 2, 4), torch.ones(1, dtype=torch.bool)
    only_0 = torch.zeros(1, 4, dtype=torch.long)
    layer._replace_stale(z_e, only_0, mask)
    layer._replace_stale(z_e, only_0, mask)
    assert layer.stale_steps.tolist() == [0, 2, 2]
    layer._replace_stale(z_e, torch.tensor([[0, 1, 1, 0]]), mask)  # entry 1 used: its count restarts
    assert layer.stale_steps.tolist() == [0, 0, 0] and layer.replaced_codes == 1  # entry 2 reached 3
    masked_out = torch.zeros(1, dtype=torch.bool)  # codes of examples that do not use the codebook do not count
    layer._replace_stale(z_e, torch.tensor([[0, 1, 2, 0]]), masked_out)
    assert layer.stale_steps.tolist() == [1, 1, 1]


def test_eval_never_replaces_and_gradients_still_flow():
    rvq = FactorizedResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=32, codebook_dim=4, stale_tolerance=1)
    assert all(layer.stale_tolerance == 1 for layer in rvq.layers)
    z = torch.randn(2, 8, 6, requires_grad=True)
    rvq.eval()
    weights = [layer.codebook.weight.detach().clone() for layer in rvq.layers]
    rvq(z)
    assert all(torch.equal(w, layer.codebook.weight) for w, layer in zip(weights, rvq.layers))
    rvq.train()
    out = rvq(z)  # tolerance 1: every unused entry is replaced right after the lookup
    assert sum(layer.replaced_codes for layer in rvq.layers) > 0
    (out.z_q.square().mean() + out.losses["codebook"] + out.losses["commit"]).backward()
    assert z.grad is not None and all(layer.codebook.weight.grad is not None for layer in rvq.layers)
    assert "layers.0.stale_steps" in rvq.state_dict()
