"""Official EnCodec (``encodec`` package, random weights) -> import -> ``Codec.from_checkpoint``:
equal latents, codes and audio at 24 kHz (mono, causal) and 48 kHz (stereo, normalized 1 s
segments with overlap-add); the segmented inference of ``Codec``; the conversion's errors.

Run with ``-s`` to see the largest differences measured.
"""

from __future__ import annotations

import math
from pathlib import Path

import encodec  # the reference implementation; a missing install must fail, not skip
import pytest
import torch

from codecplatform.checkpoints.encodec import (
    OFFICIAL_CONFIGS,
    convert_encodec_state_dict,
    encodec_codec_config,
    import_encodec,
)
from codecplatform.config import compose_config, merge_config
from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.models.chunking import linear_overlap_add
from codecplatform.models.codec import Codec
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SECONDS = 3.0
EXTRA = 123  # samples beyond 3 s: not a multiple of the hop (320), exercises the padding
BANDWIDTHS = {"24khz": [1.5, 6.0, 24.0], "48khz": [3.0, 6.0, 24.0]}  # 1.5 kbps is no 48 kHz bandwidth
LATENT_TOL, AUDIO_TOL = 1e-5, 1e-4
JITTER = 0.7


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_audio(sample_rate: int, channels: int, seed: int, seconds: float = SECONDS) -> torch.Tensor:
    """Deterministic (1, C, seconds * sr + EXTRA) test signal: a rising chirp, a harmonic tone,
    noise, and a loudness ramp (so that the 48 kHz segments get different scales)."""
    n = int(seconds * sample_rate) + EXTRA
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(channels):
        f0, f1 = 80.0 * (c + 1), 4000.0
        chirp = torch.sin(2 * math.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))
        harmonics = sum(torch.sin(2 * math.pi * h * (220.0 + 30 * c) * t) / h for h in range(1, 6))
        noise = torch.randn(n, generator=g, dtype=torch.float64)
        out.append((0.3 * chirp + 0.1 * harmonics + 0.03 * noise) * (0.2 + 0.8 * t / seconds))
    return torch.stack(out)[None].float()


@torch.no_grad()
def fill_codebooks(model: encodec.EncodecModel, seed: int) -> None:
    """Give the official (zero, uninitialized) codebooks meaningful entries, level by level:
    jittered residual latents of another signal (a one-step stand-in for k-means)."""
    g = torch.Generator().manual_seed(seed)
    x = make_audio(model.sample_rate, model.channels, seed=seed + 1, seconds=2.0)
    if model.normalize:  # the 48 kHz model encodes RMS-normalized audio
        x = x / x.mean(dim=1, keepdim=True).pow(2).mean().sqrt()
    residual = model.encoder(x).transpose(1, 2).reshape(-1, model.quantizer.dimension)  # (N, D)
    for layer in model.quantizer.vq.layers:
        book = layer._codebook
        rows = residual[torch.randint(0, residual.shape[0], (book.codebook_size,), generator=g)]
        embed = rows + JITTER * residual.std(dim=0) * torch.randn(rows.shape, generator=g)
        book.embed.copy_(embed)
        book.embed_avg.copy_(embed)
        book.cluster_size.fill_(1.0)
        book.inited.fill_(1.0)
        residual = residual - embed[book.quantize(residual)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[encodec.EncodecModel, Codec, Path]]:
    """variant -> (official model, imported Codec, official weights file)."""
    out = {}
    root = tmp_path_factory.mktemp("encodec")
    for seed, (variant, build) in enumerate(
        [("24khz", encodec.EncodecModel.encodec_model_24khz), ("48khz", encodec.EncodecModel.encodec_model_48khz)]
    ):
        torch.manual_seed(seed)
        official = build(pretrained=False)
        fill_codebooks(official, seed=10 * seed)
        source = root / f"encodec_{variant}.th"
        torch.save(official.state_dict(), source)
        ours = Codec.from_checkpoint(import_encodec(source, variant, root / f"{variant}.ckpt"))
        out[variant] = (official.eval(), ours, source)
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# -- configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["24khz", "48khz"])
def test_import_config_mirrors_the_official_model(models, variant):
    official, ours, _ = models[variant]
    args = encodec_codec_config(variant)["init_args"]
    assert ours.sample_rate == official.sample_rate and ours.channels == official.channels
    assert ours.bandwidths == official.target_bandwidths
    assert ours.frame_rate == official.frame_rate  # 75 / 150 Hz
    assert ours.normalize == official.normalize
    assert ours.segment_length == official.segment_length and ours.segment_stride == official.segment_stride
    assert ours.quantizer.n_q == official.quantizer.n_q and ours.quantizer.codebook_sizes[0] == official.quantizer.bins
    for bw in official.target_bandwidths:
        assert ours.n_q_for_bandwidth(bw) == official.quantizer.get_num_quantizers_for_bandwidth(
            official.frame_rate, bw
        )
    assert ours.decoder.ratios == official.decoder.ratios == [8, 5, 4, 2]
    assert ours.encoder.ratios == official.encoder.ratios[::-1]  # the official encoder stores them reversed
    for part in ("encoder", "decoder"):
        assert args[part]["init_args"]["causal"] == (variant == "24khz")
    assert args["quantizer"]["init_args"]["dropout"]  # training settings come from the experiment YAML
    assert encodec_codec_config(variant)["init_args"]["encoder"] == OFFICIAL_CONFIGS[variant]["init_args"]["encoder"]


@pytest.mark.parametrize(("variant", "experiment"), [("24khz", "24khz_mono.yaml"), ("48khz", "48khz_stereo.yaml")])
def test_import_config_is_the_experiment_codec_with_the_official_values(variant, experiment):
    """Built in code, the import config equals the experiment YAML's codec with every official value set."""
    codec = compose_config(EXPERIMENTS / "encodec" / experiment)["model"]["init_args"]["codec"]
    assert encodec_codec_config(variant) == merge_config(codec, OFFICIAL_CONFIGS[variant])
    config = encodec_codec_config(variant)
    config["init_args"]["encoder"]["init_args"]["ratios"].append(1)  # a copy: the constants stay
    assert OFFICIAL_CONFIGS[variant]["init_args"]["encoder"]["init_args"]["ratios"] == [8, 5, 4, 2]


# -- parity ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth", BANDWIDTHS["24khz"])
def test_24khz_parity(models, bandwidth):
    official, ours, _ = models["24khz"]
    x = make_audio(24000, 1, seed=3)
    with torch.no_grad():
        latent = max_diff(ours.encoder(x), official.encoder(x))
        official.set_target_bandwidth(bandwidth)
        frames = official.encode(x)
        expected = official.decode(frames)[..., : x.shape[-1]]
    encoded = ours.encode(x, bandwidth=bandwidth)
    audio = max_diff(ours.decode(encoded), expected)
    ((codes, scale),) = frames
    peak = float(expected.abs().max())
    print(f"\nencodec 24khz {bandwidth:g} kbps: latents {latent:.2e}, audio {audio:.2e} (peak {peak:.3f})")
    assert scale is None and encoded.scale is None
    assert codes.shape[1] == ours.n_q_for_bandwidth(bandwidth)
    assert len(codes[0, -1].unique()) > 20  # the last level's codes carry information
    assert torch.equal(encoded.codes, codes)
    assert latent < LATENT_TOL
    assert audio < AUDIO_TOL


@pytest.mark.parametrize("bandwidth", BANDWIDTHS["48khz"])
def test_48khz_segmented_parity(models, bandwidth):
    """3 s of stereo: 4 segments of up to 1 s, each normalized, decoded and overlap-added."""
    official, ours, _ = models["48khz"]
    x = make_audio(48000, 2, seed=4)
    with torch.no_grad():
        latent = max_diff(ours.encoder(x), official.encoder(x))
        official.set_target_bandwidth(bandwidth)
        frames = official.encode(x)
        expected = official.decode(frames)[..., : x.shape[-1]]
    encoded = ours.encode(x, bandwidth=bandwidth)
    audio = max_diff(ours.decode(encoded), expected)
    peak = float(expected.abs().max())
    print(f"\nencodec 48khz {bandwidth:g} kbps: latents {latent:.2e}, audio {audio:.2e} (peak {peak:.3f})")
    assert len(frames) == 4 == encoded.scale.shape[1]
    assert torch.equal(encoded.codes, torch.cat([codes for codes, _ in frames], dim=-1))
    assert torch.allclose(encoded.scale[..., 0], torch.cat([scale for _, scale in frames], dim=1), rtol=1e-6)
    assert len(encoded.codes[0, -1].unique()) > 20
    assert latent < LATENT_TOL
    assert audio < AUDIO_TOL


# -- segmented inference of Codec -------------------------------------------------------------------
def small_codec(segment_seconds: float | None, normalize: bool = True) -> Codec:
    """A tiny non-causal stereo codec at 800 Hz, hop 8 (100 frames/s)."""
    torch.manual_seed(0)
    kw = dict(channels=2, dimension=8, n_filters=2, ratios=[4, 2], lstm_layers=1, causal=False)
    quantizer = ResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=16, kmeans_init=False)
    return Codec(
        SEANetEncoder(**kw), quantizer, SEANetDecoder(**kw), 800, normalize=normalize, segment_seconds=segment_seconds
    ).eval()


def test_segments_follow_encodec():
    codec = small_codec(segment_seconds=1.0)  # 800 samples, stride int(0.99 * 800) = 792
    assert codec.segments(2000) == [(0, 800), (792, 800), (1584, 416)]
    assert codec.segments(800) == [(0, 800), (792, 8)]
    assert small_codec(segment_seconds=None).segments(2000) == [(0, 2000)]


def test_segmented_encode_shapes_and_roundtrip():
    codec = small_codec(segment_seconds=1.0)
    x = torch.randn(3, 2, 2000) * torch.tensor([0.1, 1.0, 10.0])[:, None, None]
    encoded = codec.encode(x, n_q=2)
    assert encoded.codes.shape == (3, 2, 100 + 100 + 52)  # ceil(segment / hop) frames per segment
    assert encoded.scale.shape == (3, 3, 1)
    assert codec.decode(encoded).shape == x.shape
    loud = codec.encode(10 * x, n_q=2)
    assert torch.equal(loud.codes, encoded.codes)  # each segment is normalized on its own
    assert torch.allclose(codec.decode(loud), 10 * codec.decode(encoded), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="bare codes"):
        codec.decode(encoded.codes)
    with pytest.raises(ValueError, match="frames"):
        codec.decode(type(encoded)(codes=encoded.codes[..., :-1], scale=encoded.scale, length=2000))


def test_unsegmented_codec_keeps_one_segment():
    codec = small_codec(segment_seconds=None)
    x = torch.randn(2, 2, 1000)
    encoded = codec.encode(x)
    assert encoded.codes.shape == (2, 2, 125) and encoded.scale.shape == (2, 1, 1)
    out = codec(x, n_q=2)
    assert torch.equal(out.quantized.codes, encoded.codes)
    assert torch.allclose(codec.decode(encoded), out.x_hat, atol=1e-5)


def test_linear_overlap_add_cross_fades():
    a, b = torch.full((1, 1, 10), 2.0), torch.full((1, 1, 6), 4.0)
    out = linear_overlap_add([a, b], stride=6)
    assert out.shape == (1, 1, 12)
    assert torch.allclose(out[..., :6], a[..., :6]) and torch.allclose(out[..., 10:], b[..., 4:])
    fade = out[0, 0, 6:10]
    assert bool((fade > 2).all() and (fade < 4).all() and (fade.diff() > 0).all())  # monotone cross-fade
    single = torch.randn(1, 2, 7)
    assert torch.allclose(linear_overlap_add([single], stride=3), single)


# -- conversion errors ----------------------------------------------------------------------------
def test_unknown_key_is_named(models, tmp_path):
    state = torch.load(models["24khz"][2], weights_only=True)
    state["lm.linears.0.weight"] = torch.zeros(1)  # not an EnCodec codec entry at all
    with pytest.raises(ValueError, match=r"unknown keys .*\(1\): lm\.linears\.0\.weight"):
        convert_encodec_state_dict(state)
    del state["lm.linears.0.weight"]
    state["encoder.model.99.conv.conv.weight_g"] = torch.zeros(1)  # an EnCodec-like entry this architecture lacks
    source = tmp_path / "extra.th"
    torch.save(state, source)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): encoder\.model\.99\.conv\.conv\.weight_g"):
        import_encodec(source, "24khz", tmp_path / "out.ckpt")


@pytest.mark.parametrize(
    "key",
    [
        "decoder.model.15.conv.conv.weight_v",
        "decoder.model.3.convtr.convtr.bias",
        "encoder.model.13.lstm.weight_hh_l1",
        "quantizer.vq.layers.31._codebook.inited",
    ],
)
def test_missing_key_is_named(models, tmp_path, key):
    state = torch.load(models["24khz"][2], weights_only=True)
    del state[key]
    source = tmp_path / "missing.th"
    torch.save(state, source)
    with pytest.raises(ValueError, match=rf"missing official keys \(1\): {key.replace('.', '[.]')}$"):
        import_encodec(source, "24khz", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_48khz_missing_norm_key_is_named(models, tmp_path):
    state = torch.load(models["48khz"][2], weights_only=True)
    del state["decoder.model.6.convtr.norm.weight"]
    source = tmp_path / "missing.th"
    torch.save(state, source)
    with pytest.raises(ValueError, match=r"decoder[.]model[.]6[.]convtr[.]norm[.]weight"):
        import_encodec(source, "48khz", tmp_path / "out.ckpt")


def test_wrong_variant_and_bad_values_are_refused(models, tmp_path):
    with pytest.raises(ValueError, match=r"missing official keys .*weight_g.*unexpected keys .*norm"):
        import_encodec(models["48khz"][2], "24khz", tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match="unknown EnCodec variant"):
        import_encodec(models["24khz"][2], "16khz", tmp_path / "out.ckpt")  # type: ignore[arg-type]
    state = torch.load(models["24khz"][2], weights_only=True)
    state["quantizer.vq.layers.0._codebook.inited"] = torch.tensor([0.5])
    with pytest.raises(ValueError, match=r"inited must hold one value 0 or 1"):
        convert_encodec_state_dict(state)
    state["quantizer.vq.layers.0._codebook.inited"] = torch.tensor([1.0])
    state["quantizer.vq.layers.0._codebook.embed"] = torch.zeros(1024, 64)
    source = tmp_path / "shape.th"
    torch.save(state, source)
    with pytest.raises(ValueError, match=r"shape mismatches .*quantizer\.layers\.0\.embed \(1024, 64\)"):
        import_encodec(source, "24khz", tmp_path / "out.ckpt")


def test_checkpoint_layout(models, tmp_path):
    out = import_encodec(models["24khz"][2], "24khz", tmp_path / "e.ckpt")
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint["family"] == "encodec" and checkpoint["source"] == str(models["24khz"][2])
    assert checkpoint["codec_config"] == encodec_codec_config("24khz")
    state = checkpoint["state_dict"]
    assert all(k.startswith("codec.") for k in state)
    assert state["codec.quantizer.layers.0.initialized"].dtype == torch.bool
    assert bool(state["codec.quantizer.layers.0.initialized"])
