"""MUFFIN encoder/decoder (generators/muffin.py) and the experiments/muffin configs."""

from pathlib import Path

import pytest
import torch

from codecplatform.config import compose_config, instantiate
from codecplatform.generators.muffin import MuffinDecoder, MuffinEncoder, kernel_for_stride
from codecplatform.models.codec import Codec
from codecplatform.quantizers.band_limit import BandLimit
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

# (YAML, encoder strides, decoder rates, codebooks, MBS scales, documented kbps)
CONFIGS = [
    ("muffin/75hz.yaml", [2, 4, 5, 8], [8, 5, 4, 2], 4, [4, 2, 1, 1], 3.0),
    ("muffin/25hz.yaml", [3, 5, 8, 8], [8, 8, 5, 3], 8, [4, 4, 2, 2, 1, 1, 1, 1], 2.0),
    ("muffin/12_5hz.yaml", [3, 5, 8, 16], [16, 8, 5, 3], 8, [4, 4, 2, 2, 1, 1, 1, 1], 1.0),
    ("muffin/6_25hz.yaml", [4, 5, 12, 16], [16, 12, 5, 4], 8, [4, 4, 2, 2, 1, 1, 1, 1], 0.5),
]


def small_pair(strides, rates, **kwargs):
    common = dict(resblock_kernel_sizes=(3, 7), resblock_dilations=(1, 3), groups=4, **kwargs)
    encoder = MuffinEncoder(d_model=4, strides=strides, dimension=16, **common)
    decoder = MuffinDecoder(dimension=16, decoder_dim=64, rates=rates, **common)
    return encoder, decoder


def test_kernel_rule_matches_official_configs():
    # config_24k_1024codes_{75hz,12hz,6hz}.json: model_sample_rates / sample_kernel_sizes
    official = {8: 16, 5: 11, 4: 8, 2: 4, 16: 32, 3: 7, 12: 24}
    assert {s: kernel_for_stride(s) for s in official} == official
    assert MuffinEncoder(d_model=4, strides=[3, 5, 8, 16], groups=4).kernel_sizes == [7, 11, 16, 32]


@pytest.mark.parametrize("name,strides,rates", [(c[0], c[1], c[2]) for c in CONFIGS])
def test_shapes_for_each_frame_rate(name, strides, rates):
    torch.manual_seed(0)
    encoder, decoder = small_pair(strides, rates)
    hop = encoder.hop_length
    assert hop == decoder.hop_length
    for length in (3 * hop, 3 * hop + 7):
        z = encoder(torch.randn(2, 1, length))
        frames = -(-length // hop)
        assert z.shape == (2, 16, frames)
        x_hat = decoder(z)
        assert x_hat.shape == (2, 1, frames * hop)
        assert x_hat.abs().max() <= 1.0


def test_hop_lengths_are_the_frame_rates():
    for (_, strides, rates, *_), rate in zip(CONFIGS, (75, 25, 12.5, 6.25)):
        encoder, decoder = small_pair(strides, rates)
        assert 24000 / encoder.hop_length == 24000 / decoder.hop_length == rate


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    encoder, decoder = small_pair([2, 4], [4, 2])
    decoder(encoder(torch.randn(2, 1, 64))).square().mean().backward()
    missing = [n for m in (encoder, decoder) for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_official_module_layout():
    encoder, decoder = small_pair([2, 4], [4, 2])
    keys = set(encoder.state_dict())
    for key in [
        "conv_pre.conv.parametrizations.weight.original0",
        "downs.0.0.alpha",
        "downs.0.0.beta",
        "downs.0.0.gamma",
        "downs.1.1.conv.parametrizations.weight.original1",
        "resblocks.3.convs1.1.0.alpha",  # stage 1, kernel 7 (2 kernels per stage), dilation 3
        "resblocks.3.convs2.1.1.conv.bias",
        "resblocks.3.norm.gamma",
        "resblock_post.1.0.beta",  # GRN at the start of the bottleneck
        "resblock_post.1.1.conv.parametrizations.weight.original0",
        "resblock_post.1.2.alpha",
        "conv_post.1.conv.bias",
    ]:
        assert key in keys, key
    assert "ups.1.1.convtr.parametrizations.weight.original0" in decoder.state_dict()
    assert encoder.resblock_post[0][1].conv.groups == 4
    assert encoder.resblock_post[0][1].conv.out_channels == 3 * 8


def test_configuration_errors_name_the_field():
    with pytest.raises(ValueError, match="groups=32 must divide"):
        MuffinEncoder(d_model=4, strides=[2, 4])
    with pytest.raises(ValueError, match="kernel_sizes has 1 entries for 2 strides"):
        MuffinEncoder(d_model=32, strides=[2, 4], kernel_sizes=[4])
    with pytest.raises(ValueError, match="kernel_sizes: kernel 5 for stride 2"):
        MuffinDecoder(rates=[2, 2, 2, 2], kernel_sizes=[5, 4, 4, 4])
    with pytest.raises(ValueError, match="strides"):
        MuffinEncoder(strides=[])
    with pytest.raises(ValueError, match="decoder_dim"):
        MuffinDecoder(dimension=8, decoder_dim=8, rates=[2, 2, 2, 2], groups=1)
    encoder, _ = small_pair([2, 4], [4, 2])
    with pytest.raises(ValueError):
        encoder(torch.randn(1, 2, 64))


def test_codec_encode_equals_training_forward_in_eval():
    torch.manual_seed(0)
    encoder, decoder = small_pair([2, 4], [4, 2])
    quantizer = ResidualVectorQuantizer(
        dimension=16, n_q=4, codebook_size=16, kmeans_iters=2, search_dropout=0.1, stage_hook=BandLimit([4, 2, 1, 1])
    )
    codec = Codec(encoder, quantizer, decoder, sample_rate=24000)
    x = torch.randn(2, 1, 400) * 0.1
    codec.train()
    codec(x)
    codec.eval()
    with torch.no_grad():
        out = codec(x)
    encoded = codec.encode(x)
    assert torch.equal(encoded.codes, out.quantized.codes)
    torch.testing.assert_close(quantizer.decode(encoded.codes), out.quantized.z_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(codec.decode(encoded), out.x_hat, rtol=0, atol=1e-5)


# -- the real configurations -------------------------------------------------------------------


def build(name: str) -> Codec:
    config = compose_config(EXPERIMENTS / name)["model"]["init_args"]["codec"]
    return instantiate(config, Codec)


@pytest.mark.parametrize("name,strides,rates,n_q,scales,kbps", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_real_configs_bitrates_and_parameter_counts(name, strides, rates, n_q, scales, kbps, capsys):
    codec = build(name)
    assert codec.encoder.strides == strides and codec.decoder.rates == rates
    assert codec.n_q == n_q and codec.codebook_sizes == [1024] * n_q
    assert codec.quantizer.stage_hook.scales == scales
    assert all(layer.search_dropout == 0.1 for layer in codec.quantizer.layers)
    assert codec.bitrate(n_q) == pytest.approx(kbps)  # frame rate x n_q x 10 bits
    # one bandwidth per codebook count: a user can pick each of 1..n_q
    assert [codec.n_q_for_bandwidth(bw) for bw in codec.bandwidths] == list(range(1, n_q + 1))
    counts = codec.num_parameters()
    with capsys.disabled():
        print(f"\n{name}: encoder {counts['encoder']:,} decoder {counts['decoder']:,} hop {codec.hop_length}")
    if name == "muffin/75hz.yaml":  # SPECS (computed from the official code): ~34.2M / ~11.9M
        assert counts["encoder"] == 34_185_344 and abs(counts["encoder"] / 34.2e6 - 1) < 0.1
        assert counts["decoder"] == 11_852_802 and abs(counts["decoder"] / 11.9e6 - 1) < 0.1
    assert counts["quantizer"] == 0  # EMA codebooks are buffers
