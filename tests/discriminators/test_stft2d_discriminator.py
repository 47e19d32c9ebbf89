"""SpectroStream's multi-scale 2D STFT discriminator: output structure, [re, im, |X|] input,
layer norm over all non-batch dims, delayed fusion of the channels, gradients, argument checks."""

import pytest
import torch
from torch import nn

from codecplatform.discriminators.stft2d import MultiScaleSTFT2dDiscriminator
from codecplatform.types import DiscriminatorOutput

TINY = dict(window_lengths=[256, 128], widths=[2, 2, 4], strides=[(1, 2), (2, 2)])


def tiny(**kwargs) -> MultiScaleSTFT2dDiscriminator:
    torch.manual_seed(0)
    return MultiScaleSTFT2dDiscriminator(**{**TINY, **kwargs})


def test_output_structure():
    disc = tiny()
    out = disc(torch.randn(3, 2, 4000))
    assert isinstance(out, DiscriminatorOutput)
    assert out.names == ["stft2d_256", "stft2d_128"]
    for logits, features in zip(out.logits, out.features):
        assert logits.shape[:2] == (3, 1)  # channels fused inside: batch stays B
        assert len(features) == 3 and all(f.shape[0] == 3 for f in features)
    print(
        f"\ntiny discriminator: {sum(p.numel() for p in disc.parameters()):,} parameters; "
        f"default: {sum(p.numel() for p in MultiScaleSTFT2dDiscriminator().parameters()):,}"
    )


def test_input_planes_and_layer_norm():
    """Three input planes per channel ([re, im, |X|]); every conv but the output is followed by a
    layer norm over (channels, time, frequency), i.e. GroupNorm with one group."""
    scale = tiny().discriminators[0]
    assert scale.convs[0][1].in_channels == 3
    assert all(isinstance(n, nn.GroupNorm) and n.num_groups == 1 for n in scale.norms)
    assert len(scale.norms) == len(scale.convs)
    seen = []
    handle = scale.norms[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        scale(torch.randn(2, 2, 4000))
    handle.remove()
    out = seen[0]  # (B*C, W, N, F) with gain 1, bias 0 at init
    flat = out.reshape(out.shape[0], -1)
    assert torch.allclose(flat.mean(1), torch.zeros(flat.shape[0]), atol=1e-4)
    assert torch.allclose(flat.var(1, unbiased=False), torch.ones(flat.shape[0]), atol=1e-2)


def test_delayed_fusion_swaps_before_and_mixes_after():
    """Layers before the fusion point run per channel with shared weights (swapping L and R swaps
    their feature halves); the fused layers see both channels."""
    disc = tiny()  # fusion before the last strided conv: feature 0 per channel, 1 and 2 joint
    assert disc.discriminators[0].fusion_layer == 2
    x = torch.randn(2, 2, 4000)
    with torch.no_grad():
        a, b = disc(x), disc(x.flip(1))
    for fa, fb in zip(a.features, b.features):
        w = fa[0].shape[1] // 2
        assert torch.allclose(fb[0], torch.cat([fa[0][:, w:], fa[0][:, :w]], dim=1), atol=1e-6)
        assert not torch.allclose(fb[-1], fa[-1], atol=1e-4)


def test_mono_and_fusion_at_the_output():
    mono = tiny(channels=1)(torch.randn(2, 1, 3000))
    assert mono.logits[0].shape[0] == 2
    late = tiny(fusion_layer=-1)
    assert late.discriminators[0].fusion_layer == 3  # fused only at the output conv
    assert late(torch.randn(2, 2, 3000)).logits[0].shape[:2] == (2, 1)


def test_gradients_reach_the_audio_and_every_parameter():
    disc = tiny()
    x = torch.randn(2, 2, 3000, requires_grad=True)
    out = disc(x)
    (sum(logits.mean() for logits in out.logits) + sum(f.pow(2).mean() for fs in out.features for f in fs)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(widths=[2, 2]), "widths"),
        (dict(fusion_layer=0), "fusion_layer"),
        (dict(window_lengths=[256, 256]), "window_lengths"),
        (dict(channels=0), "channels"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kwargs)


def test_short_or_wrong_input_is_refused():
    with pytest.raises(ValueError, match="samples"):
        tiny()(torch.randn(1, 2, 100))
    with pytest.raises(ValueError, match="channels"):
        tiny()(torch.randn(1, 1, 3000))
