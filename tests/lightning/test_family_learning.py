"""SpectroStream and MUFFIN learn: each family's recipe (its YAML: losses, weights, discriminators,
quantizer) with the tiny override, trained 12 batches on windows of one generated clip, must lower
its mel loss and reconstruct a held-out clip better than before training.

"Before training" is the module after one forward pass in training mode (the EMA codebooks are
k-means initialized and updated once, no optimizer step): the EMA codebooks keep learning without
gradients, so an uninitialized codec would be an easy baseline. The generator learning rate is
raised to 1e-3 (the recipes' 1e-4 / 2e-4 move too little in 12 batches). Measured on the 2-core
machine (2026-12-06, loaded): held-out mel distance ratio trained / before, and the last / first
quarter of train/g/mel (a loss disconnected from the weights fails like learning rate 0):

| family        | as built: held-out, mel | learning rates 0: held-out, mel |
| ---           | ---                     | ---                           |
| SpectroStream | 0.73, 0.44              | 0.92, 0.98                    |
| MUFFIN        | 0.60, 0.69              | 0.95, 1.07                    |
"""

from __future__ import annotations

import pytest
import torch
from learning_check import RandomWindows, assert_better, assert_falls, build_module, music_clip, train

from codecplatform.metrics.reconstruction import MelDistance

BATCHES = 12
LR = 1e-3
# family -> (variant YAML, channels, window samples, mel-loss fall ratio, held-out ratio)
FAMILIES = {
    "spectrostream": ("spectrostream/48khz_stereo.yaml", 2, 1024, 0.7, 0.85),
    "muffin": ("muffin/75hz.yaml", 1, 2096, 0.85, 0.8),  # its mel loss has a 2048 window
}


def held_out_mel_distance(codec, x: torch.Tensor) -> float:
    codec.eval()
    with torch.no_grad():
        x_hat = codec.decode(codec.encode(x))[..., : x.shape[-1]]
    codec.train()
    metric = MelDistance(codec.sample_rate)
    metric.update(x_hat, x)
    return float(metric.compute())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_learns_a_clip(family):
    variant, channels, window, fall, better = FAMILIES[family]
    torch.manual_seed(0)
    overrides = {"max_batches": BATCHES, "generator_optimizer": {"init_args": {"lr": LR}}}
    module = build_module(variant, f"tiny/{family}.yaml", overrides=overrides)
    codec = module.codec
    clip = music_clip(codec.sample_rate, channels, seconds=1.0, seed=1)
    held_out = music_clip(codec.sample_rate, channels, seconds=0.5, seed=2)[None]
    with torch.no_grad():
        codec.train()(clip[None, :, :window].repeat(2, 1, 1))  # k-means init of the EMA codebooks
    before = held_out_mel_distance(codec, held_out)

    logs = train(module, RandomWindows(clip, window, 2 * BATCHES), 2, ["train/g/mel", "train/d/loss"])

    assert int(module.batch_counter) == BATCHES and len(logs["train/d/loss"]) == BATCHES  # D trained too
    assert_falls(logs["train/g/mel"], fall, f"{family} train/g/mel")
    assert_better(before, held_out_mel_distance(codec, held_out), better, f"{family} mel distance")
