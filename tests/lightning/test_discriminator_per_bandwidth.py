"""GANCodecModule(discriminator_per_bandwidth=True): one discriminator set per codebook count; each
batch steps and uses only the copy of its bandwidth, the others keep their weights, gradients
(None) and Adam state (none); the copy is logged; two DDP ranks pick the same copies."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from test_gan_codec import fit, tiny_module

from codecplatform.discriminators.base import MultiDiscriminator
from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.models.codec import Codec
from codecplatform.quantizers.dropout import PerBatchChoice, PerExampleDropout
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

SR = 8000


def bandwidth_codec(dropout=None) -> Codec:
    """Hop 8 at 8 kHz = 1000 frames/s, 16-entry codebooks = 4 kbps each: 4 and 8 kbps -> 1 and 2 codebooks."""
    kw = dict(channels=1, dimension=8, n_filters=4, ratios=[4, 2], lstm_layers=1)
    quantizer = ResidualVectorQuantizer(
        dimension=8, n_q=2, codebook_size=16, kmeans_iters=2, dropout=dropout or PerBatchChoice()
    )
    return Codec(SEANetEncoder(**kw), quantizer, SEANetDecoder(**kw), sample_rate=SR, bandwidths=[4.0, 8.0])


def per_bandwidth_module(**overrides):
    return tiny_module(codec=bandwidth_codec(), discriminator_per_bandwidth=True, **overrides)


class Recorder(Callback):
    """Per batch: the logged count and bandwidth, which copies changed, which copies ran forward."""

    def __init__(self):
        self.rows: list[dict] = []
        self.calls: dict[str, int] = {}

    def on_train_start(self, trainer, pl_module):
        for key, copy in pl_module.gan.discriminator.items():
            copy.register_forward_hook(lambda m, a, o, key=key: self.calls.__setitem__(key, self.calls[key] + 1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {k: [p.detach().clone() for p in d.parameters()] for k, d in pl_module.gan.discriminator.items()}
        self.calls.update({k: 0 for k in pl_module.gan.discriminator})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        changed = {
            k
            for k, d in pl_module.gan.discriminator.items()
            if any(not torch.equal(a, b) for a, b in zip(self.before[k], d.parameters()))
        }
        d_opt = pl_module.optimizers()[1].optimizer
        self.rows.append(
            {
                "n_q": int(trainer.callback_metrics["train/d/n_q"]),
                "kbps": float(trainer.callback_metrics["train/d/bandwidth"]),
                "changed": changed,
                "called": {k for k, v in self.calls.items() if v},
                "with_grad": {
                    k for k, d in pl_module.gan.discriminator.items() if any(p.grad is not None for p in d.parameters())
                },
                "adam_steps": {
                    k: sorted({int(d_opt.state[p]["step"]) for p in d.parameters() if p in d_opt.state})
                    for k, d in pl_module.gan.discriminator.items()
                },
            }
        )


def test_one_copy_per_bandwidth_with_the_same_start():
    module = per_bandwidth_module()
    assert set(module.gan.discriminator) == {"nq1", "nq2"}
    assert all(isinstance(d, MultiDiscriminator) for d in module.gan.discriminator.values())
    one, two = (list(d.parameters()) for d in module.gan.discriminator.values())
    assert all(torch.equal(a, b) and a is not b for a, b in zip(one, two))
    d_opt = module.configure_optimizers()[0][1]
    assert sum(len(g["params"]) for g in d_opt.param_groups) == len(one) + len(two)  # one optimizer, all copies


def test_only_the_batch_bandwidth_copy_is_stepped_and_used():
    torch.manual_seed(0)
    module = per_bandwidth_module()
    recorder = Recorder()
    fit(module, batches=6, callbacks=[recorder], examples=24)
    used = [row["n_q"] for row in recorder.rows]
    assert set(used) == {1, 2}, f"both bandwidths should occur in 6 batches, got {used}"
    steps = {"nq1": 0, "nq2": 0}
    for row in recorder.rows:
        key = f"nq{row['n_q']}"
        steps[key] += 1
        assert row["kbps"] == pytest.approx(module.codec.bitrate(row["n_q"]))
        assert row["changed"] == {key}  # the other copy's weights did not move
        assert row["called"] == {key}  # discriminator step and generator's adversarial/feature losses
        assert row["with_grad"] <= {key}  # the other copy has grad None: Adam skips it
        assert row["adam_steps"][key] == [steps[key]]  # its own Adam step count, one per use
        other = "nq2" if key == "nq1" else "nq1"
        assert row["adam_steps"][other] in ([], [steps[other]])  # untouched since its last use


def test_per_bandwidth_needs_bandwidths_and_one_count_per_batch():
    with pytest.raises(ValueError, match="bandwidths"):
        tiny_module(discriminator_per_bandwidth=True)  # the tiny codec has no bandwidths
    torch.manual_seed(0)
    module = tiny_module(codec=bandwidth_codec(PerExampleDropout(p=1.0)), discriminator_per_bandwidth=True)
    with pytest.raises(ValueError, match="one codebook count per batch"):
        fit(module, batches=4, examples=24)


@pytest.mark.slow
def test_two_ranks_pick_the_same_copies_and_end_identical(ddp_fits):
    """Part "per_bandwidth" of tests/ddp_fits.py: 3 batches of 4 per rank, one discriminator copy per
    bandwidth, generator EMA (decay 0.9)."""
    folder = ddp_fits.part("per_bandwidth")
    rank0, rank1 = (torch.load(folder / f"rank{r}.pt") for r in (0, 1))
    for key in rank0["after"]:
        assert torch.equal(rank0["after"][key], rank1["after"][key]), f"{key} differs between ranks"
    assert int(rank0["after"]["ema_updates"]) == 3
    # the copies that moved are the ones whose bandwidth was drawn (same generator as training_step)
    from codecplatform.lightning.schedule import uniform_from

    drawn = set()
    for step in range(3):
        generator = torch.Generator().manual_seed(int(uniform_from(0, step, "quantizer") * 2**62))
        drawn.add(int(PerBatchChoice().sample(4, [1, 2], generator)[0]))
    moved = {
        key.split(".")[2]
        for key, value in rank0["after"].items()
        if key.startswith("gan.discriminator.") and not torch.equal(value, rank0["before"][key])
    }
    assert moved == {f"nq{k}" for k in drawn}
