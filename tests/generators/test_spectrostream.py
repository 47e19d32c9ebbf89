"""SpectroStream encoder/decoder: shapes, delayed fusion (per-channel stage swaps with the
channels), streaming equals offline, causality and look-ahead, the real config's parameter counts,
bitrates and latency against the paper's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codecplatform.config import compose_config
from codecplatform.generators.spectrostream import (
    SpectroStreamDecoder,
    SpectroStreamEncoder,
    architectural_latency_ms,
)
from codecplatform.models.codec import Codec
from codecplatform.nn.streaming import run_in_chunks, streaming
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = dict(
    stft_frame_length=64,
    stft_hop_length=32,
    stft_fft_length=64,
    ratios=[(1, 2), (2, 2), (2, 2)],
    mults=[2, 1, 2],
    kernel_size=3,
)  # 32 bins -> 4, hop 4 x 32 = 128 samples; fusion before the last strided block
HOP = 128


def tiny_pair(channels: int = 2, dimension: int = 8, **kwargs) -> tuple[SpectroStreamEncoder, SpectroStreamDecoder]:
    torch.manual_seed(0)
    encoder = SpectroStreamEncoder(channels=channels, dimension=dimension, base_depth=2, **TINY, **kwargs)
    decoder = SpectroStreamDecoder(channels=channels, dimension=dimension, base_depth=2, **TINY, **kwargs)
    return encoder.eval(), decoder.eval()


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("channels", [2, 1])
def test_shapes(channels):
    encoder, decoder = tiny_pair(channels)
    assert encoder.hop_length == decoder.hop_length == HOP
    for length in (HOP * 5, HOP * 5 + 77):
        x = torch.randn(3, channels, length)
        with torch.no_grad():
            z = encoder(x)
            y = decoder(z)
        assert z.shape == (3, 8, math.ceil(length / HOP))
        assert y.shape == (3, channels, z.shape[-1] * HOP)
    print(f"\ntiny {channels}-channel config: encoder {count(encoder):,} decoder {count(decoder):,} parameters")


def test_swapping_left_and_right_swaps_the_per_channel_stage():
    """Before the fusion point both channels go through the same layers (shared weights) with no
    interaction: swapping L and R at the input swaps them there."""
    encoder, _ = tiny_pair()
    x = torch.randn(2, 2, HOP * 4)
    with torch.no_grad():
        features = encoder.per_channel_features(x)  # (B, C, W, N', F')
        swapped = encoder.per_channel_features(x.flip(1))
    assert features.shape[1] == 2
    assert torch.allclose(swapped, features.flip(1), atol=1e-6)
    # and the per-channel stage is really per channel: R does not reach L's features
    y = x.clone()
    y[:, 1] = torch.randn_like(y[:, 1])
    with torch.no_grad():
        assert torch.allclose(encoder.per_channel_features(y)[:, 0], features[:, 0], atol=1e-6)
        # after the fusion point the channels mix: the joint latent sees R
        assert not torch.allclose(encoder(y), encoder(x), atol=1e-4)


def test_fusion_point_sets_the_joint_widths():
    encoder, decoder = tiny_pair(fusion_block=0)  # everything after the first conv is joint
    assert len(encoder.per_channel) == 1 and len(encoder.joint) == 4
    x = torch.randn(1, 2, HOP * 2)
    with torch.no_grad():
        assert decoder(encoder(x)).shape == (1, 2, HOP * 2)
    encoder, decoder = tiny_pair(fusion_block=3)  # fuse at the bottleneck
    assert len(encoder.joint) == 1 and len(decoder.joint) == 1
    with torch.no_grad():
        assert decoder(encoder(x)).shape == (1, 2, HOP * 2)


@pytest.mark.parametrize("chunks", [[HOP], [37, 100, 1, 0, 250], [1000]])
def test_streaming_encoder_equals_offline(chunks):
    """Chunk by chunk with carried state == the whole signal, once the stream is flushed with the
    STFT look-ahead (frame - hop zeros)."""
    encoder, _ = tiny_pair()
    x = torch.randn(2, 2, HOP * 7)
    with torch.no_grad():
        offline = encoder(x)
    flushed = torch.cat([x, torch.zeros(2, 2, encoder.stream_flush_samples)], dim=-1)
    streamed = run_in_chunks(encoder, flushed, chunks)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5)


@pytest.mark.parametrize("chunks", [[1], [2, 0, 3], [8]])
def test_streaming_decoder_equals_offline(chunks):
    """The decoder streams with one embedding of look-ahead: flushed with one zero latent frame,
    the concatenated chunks equal the offline output."""
    _, decoder = tiny_pair()
    z = torch.randn(2, 8, 7)
    with torch.no_grad():
        offline = decoder(z)
    flushed = torch.cat([z, torch.zeros(2, 8, decoder.stream_flush_frames)], dim=-1)
    streamed = run_in_chunks(decoder, flushed, chunks)
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5)


def test_streaming_holds_back_exactly_the_look_ahead():
    encoder, decoder = tiny_pair()
    with torch.no_grad(), streaming(encoder):
        assert encoder(torch.randn(1, 2, HOP * 3)).shape[-1] == 2  # frame 3 waits for 32 more samples
        assert encoder(torch.zeros(1, 2, encoder.stream_flush_samples)).shape[-1] == 1
    with torch.no_grad(), streaming(decoder):
        assert decoder(torch.randn(1, 8, 3)).shape[-1] == 2 * HOP  # block 3 waits for embedding 4


def test_causality_and_look_ahead():
    """Encoder frame j depends on samples < (j + 1) * hop + (frame - hop) only; decoder block j on
    embeddings <= j + lookahead only."""
    encoder, decoder = tiny_pair()
    x = torch.randn(1, 2, HOP * 6)
    changed = x.clone()
    cut = 3 * HOP + encoder.stream_flush_samples
    changed[..., cut:] = torch.randn_like(changed[..., cut:])
    with torch.no_grad():
        a, b = encoder(x), encoder(changed)
    assert torch.allclose(a[..., :3], b[..., :3], atol=1e-6)
    assert not torch.allclose(a[..., 3], b[..., 3], atol=1e-4)
    z = torch.randn(1, 8, 6)
    later = z.clone()
    later[..., 4:] = torch.randn_like(later[..., 4:])
    with torch.no_grad():
        y, y2 = decoder(z), decoder(later)
    assert torch.allclose(y[..., : 3 * HOP], y2[..., : 3 * HOP], atol=1e-6)  # blocks 0-2 need z <= 3
    assert not torch.allclose(y[..., 3 * HOP : 4 * HOP], y2[..., 3 * HOP : 4 * HOP], atol=1e-4)


def test_gradients_reach_every_parameter():
    encoder, decoder = tiny_pair()
    x = torch.randn(2, 2, HOP * 4)
    decoder(encoder(x)).pow(2).mean().backward()
    missing = [n for m in (encoder, decoder) for n, p in m.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(fusion_block=5), "fusion_block"),
        (dict(ratios=[(1, 3), (2, 2), (2, 2)]), "ratios"),
        (dict(mults=[2, 1]), "mults"),
        (dict(norm="batch"), "norm"),
        (dict(stft_fft_length=62), "stft_fft_length"),
    ],
)
def test_invalid_arguments_name_the_field(kwargs, field):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=field):
        SpectroStreamEncoder(dimension=8, base_depth=2, **args)
    with pytest.raises(ValueError, match="lookahead"):
        SpectroStreamDecoder(dimension=8, base_depth=2, lookahead=-1, **TINY)


# -- the real configuration -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_codec() -> Codec:
    config = compose_config(EXPERIMENTS / "spectrostream" / "48khz_stereo.yaml")
    return Codec.from_config(config["model"]["init_args"]["codec"]).eval()


def test_real_config_parameter_counts(real_codec):
    """48 kHz stereo config. Codebooks: the paper's geometry (64 quantizers x 1024 entries x 256,
    arXiv 2508.05207 section 2), EMA buffers here. Encoder ~9.3M and decoder ~35.7M are SNAPSHOTS (this
    config's own counts, rounded): the paper states per-module sizes, but no copy of its numbers was
    available to check against, and the official code (magenta/magenta-realtime) was not counted."""
    counts = real_codec.num_parameters()
    codebooks = sum(b.numel() for n, b in real_codec.quantizer.named_buffers() if n.endswith(".embed"))
    print(
        f"\nspectrostream/48khz_stereo.yaml: encoder {counts['encoder']:,} decoder {counts['decoder']:,} "
        f"codebooks {codebooks:,} codec {counts['total']:,}"
    )
    assert round(counts["encoder"] / 1e5) == 93  # snapshot: 9,257,024 when written
    assert round(counts["decoder"] / 1e5) == 357  # snapshot: 35,698,946 when written
    assert codebooks == 64 * 1024 * 256  # the paper's geometry
    assert counts["quantizer"] == 0  # EMA codebooks learn without gradient


def test_real_config_rates_and_latency(real_codec):
    """25 Hz x 10 bits x 64 codebooks = 16 kbps; 16 codebooks = 4 kbps; 80 ms architectural latency."""
    assert real_codec.hop_length == 1920 and real_codec.frame_rate == 25.0
    assert isinstance(real_codec.quantizer, ResidualVectorQuantizer)
    assert real_codec.quantizer.n_q == 64 and real_codec.codebook_sizes == [1024] * 64
    assert real_codec.bitrate(64) == pytest.approx(16.0)
    assert real_codec.bitrate(16) == pytest.approx(4.0)
    assert [real_codec.n_q_for_bandwidth(bw) for bw in (4, 8, 12, 16)] == [16, 32, 48, 64]
    latency = architectural_latency_ms(real_codec.encoder, real_codec.decoder, real_codec.sample_rate)
    with_stft = architectural_latency_ms(
        real_codec.encoder, real_codec.decoder, real_codec.sample_rate, include_stft_lookahead=True
    )
    print(f"\narchitectural latency {latency:g} ms (paper: 80), with the analysis STFT's look-ahead {with_stft:g} ms")
    assert latency == pytest.approx(80.0)
    assert with_stft == pytest.approx(90.0)


def test_real_config_codes_a_second_of_stereo(real_codec):
    x = 0.1 * torch.randn(1, 2, 48000)
    with torch.no_grad():
        encoded = real_codec.encode(x, bandwidth=4.0)
        assert encoded.codes.shape == (1, 16, 25)
        assert real_codec.decode(encoded).shape == (1, 2, 48000)
