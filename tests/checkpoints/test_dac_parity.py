"""Official DAC (``descript-audio-codec``, random weights) -> import -> ``Codec.from_checkpoint``:
equal latents, codes and audio for every codebook count; and the conversion's error messages."""

from __future__ import annotations

import math
from pathlib import Path

import dac  # installed by `make test` (parity extra); a missing install must fail, not skip
import numpy as np
import pytest
import torch

from codecplatform.checkpoints.dac import (
    OFFICIAL_KWARGS,
    VARIANTS,
    convert_dac_state_dict,
    dac_codec_config,
    dac_codec_config_from_kwargs,
    import_dac,
)
from codecplatform.checkpoints.io import load_codec_state
from codecplatform.config import compose_config
from codecplatform.models.codec import Codec
from codecplatform.types import EncodedAudio

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SAMPLE_RATE = 44100
LENGTH = SAMPLE_RATE // 2 + 123  # 0.5 s (the full-size model is slow on CPU); not a multiple of the hop (512)
DECODE_FRAMES = 16  # frames decoded per codebook count below the full one (the decoder is slow on CPU)


#: An official DAC with the sizes of experiments/tiny/dac.yaml.
TINY_DAC_KWARGS = dict(
    encoder_dim=4,
    encoder_rates=[2, 4],
    latent_dim=16,
    decoder_dim=16,
    decoder_rates=[4, 2],
    n_codebooks=3,
    codebook_size=16,
    codebook_dim=4,
    sample_rate=44100,
)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial random weights: random Snake alphas, weight-norm gains and biases (the official
    init leaves alpha = 1, g = ||v|| and zero biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(0.5 + 1.5 * torch.rand(p.shape, generator=generator))
            elif name.endswith("weight_g"):
                p.mul_(0.7 + 0.6 * torch.rand(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


def test_audio(length: int = LENGTH) -> torch.Tensor:
    """(1, 1, T): a chirp 80 Hz -> 12 kHz, a harmonic tone with vibrato and some noise."""
    t = np.arange(length) / SAMPLE_RATE
    duration = length / SAMPLE_RATE
    f0, f1 = 80.0, 12000.0
    chirp = np.sin(2 * math.pi * f0 * duration / math.log(f1 / f0) * ((f1 / f0) ** (t / duration) - 1))
    phase = 2 * math.pi * 220 * t + 3 * np.sin(2 * math.pi * 5 * t)
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = np.random.default_rng(0).standard_normal(length)
    x = 0.3 * chirp + 0.2 * tone + 0.05 * noise
    return torch.from_numpy(x).float()[None, None]


test_audio.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(official DAC 44.1 kHz, its official file, our imported Codec), random seeded weights."""
    torch.manual_seed(0)
    official = dac.DAC(**{**OFFICIAL_KWARGS["44khz"], "latent_dim": None, "quantizer_dropout": False})
    randomize(official)
    official.eval()
    folder = tmp_path_factory.mktemp("dac")
    source = official.save(str(folder / "weights_44khz.pth"), package=False)  # the official writer
    out = import_dac(source, "44khz", folder / "dac_44khz.ckpt")
    codec = Codec.from_checkpoint(out)
    return official, source, codec


@pytest.fixture(scope="module")
def encoded(models):
    """Latents and codes of both models for n = 1..9 on the same audio."""
    official, _, codec = models
    x = test_audio()
    with torch.no_grad():
        x_pre = official.preprocess(x, SAMPLE_RATE)
        enc_off = official.encoder(x_pre)  # DAC.encode = encoder, then quantizer(z, n_quantizers)
        _, codes_off_9, *_ = official.quantizer(enc_off, n_quantizers=9)
        ours = codec.encode(x, n_q=9)  # the public path: pads, encodes, quantizes
        z_ours = codec.encoder(x)
        per_n = {}
        for n in range(1, 10):
            z_q_off, codes_off, *_ = official.quantizer(enc_off, n_quantizers=n)
            per_n[n] = (z_q_off, codes_off, codec.quantizer.encode(z_ours, n))
    return x, x_pre, enc_off, z_ours, codes_off_9, ours, per_n


def test_official_file_carries_the_variant_kwargs(models):
    _, source, _ = models
    content = torch.load(source, weights_only=True)
    kwargs = content["metadata"]["kwargs"]
    assert {k: kwargs[k] for k in OFFICIAL_KWARGS["44khz"]} == OFFICIAL_KWARGS["44khz"]
    config, state = load_codec_state(source.replace("weights_44khz.pth", "dac_44khz.ckpt"))
    assert config == dac_codec_config("44khz")
    assert len(state) == len(content["state_dict"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_experiment_configs_match_the_official_kwargs(variant):
    assert dac_codec_config(variant) == dac_codec_config_from_kwargs(OFFICIAL_KWARGS[variant])
    # the import config is built in code; it is the codec of the variant's experiment YAML
    experiment = compose_config(EXPERIMENTS / "dac" / f"{variant}.yaml")["model"]["init_args"]["codec"]
    assert dac_codec_config(variant) == experiment


def test_encoder_latents_and_codes_match(encoded):
    x, x_pre, enc_off, z_ours, codes_off_9, ours, per_n = encoded
    assert x_pre.shape[-1] % 512 == 0 and x_pre.shape[-1] > x.shape[-1]
    assert z_ours.shape == enc_off.shape == (1, 1024, math.ceil(LENGTH / 512))
    latent_err = (z_ours - enc_off).abs().max().item()
    print(f"\nencoder latents: max abs diff {latent_err:.3g} (latent std {enc_off.std().item():.3g})")
    assert latent_err < 1e-5
    assert torch.equal(ours.codes, codes_off_9)
    for n, (_, codes_off, codes_ours) in per_n.items():
        assert codes_ours.shape == codes_off.shape == (1, n, enc_off.shape[-1])
        assert torch.equal(codes_ours, codes_off), f"codes differ with {n} codebooks"
        assert torch.equal(codes_ours, ours.codes[:, :n])
    usage = [len(torch.unique(ours.codes[0, k])) for k in range(9)]
    print(f"distinct codes per codebook over {enc_off.shape[-1]} frames: {usage}")
    assert min(usage) > 10  # the quantizer is not degenerate


def test_quantized_latents_match(models, encoded):
    official, _, codec = models
    *_, per_n = encoded
    worst = 0.0
    with torch.no_grad():
        for n, (z_q_off, codes_off, codes_ours) in per_n.items():
            z_q_ours = codec.quantizer.decode(codes_ours)
            z_q_from_codes = official.quantizer.from_codes(codes_off)[0]
            scale = z_q_off.abs().max().item()
            err = max((z_q_ours - z_q_off).abs().max().item(), (z_q_ours - z_q_from_codes).abs().max().item())
            worst = max(worst, err / scale)
            assert err < 1e-5 * max(1.0, scale), f"quantized latents differ with {n} codebooks: {err}"
    print(f"\nquantized latents: largest relative diff {worst:.3g}")


def test_decoded_audio_matches_for_every_codebook_count(models, encoded):
    official, _, codec = models
    x, _, _, _, _, ours, per_n = encoded
    errors = {}
    with torch.no_grad():
        # all codebooks, whole signal, through Codec.decode(EncodedAudio)
        audio_off = official.decode(per_n[9][0])[..., : x.shape[-1]]
        audio_ours = codec.decode(ours)
        assert audio_ours.shape == x.shape
        assert audio_off.std() > 1e-3  # not silent
        errors[9] = (audio_ours - audio_off).abs().max().item()
        # fewer codebooks: the first DECODE_FRAMES frames of each (bare codes), in one official batch
        z_q_off = torch.cat([per_n[n][0][..., :DECODE_FRAMES] for n in range(1, 9)])
        audio_off_n = official.decode(z_q_off)
        for n in range(1, 9):
            audio_ours_n = codec.decode(per_n[n][2][..., :DECODE_FRAMES])
            assert audio_ours_n.shape == (1, 1, DECODE_FRAMES * 512)
            errors[n] = (audio_ours_n - audio_off_n[n - 1 : n]).abs().max().item()
    print(
        "\ndecoded audio max abs diff per codebook count: "
        + ", ".join(f"{n}: {e:.3g}" for n, e in sorted(errors.items()))
    )
    assert max(errors.values()) < 1e-4, errors


# -- conversion errors ---------------------------------------------------------------------------
def tiny_official(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return dac.DAC(**{**TINY_DAC_KWARGS, **overrides})


def test_conversion_accepts_old_and_new_weight_norm_names():
    official = tiny_official()
    old = official.state_dict()
    new = {
        k.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1"
        ): v
        for k, v in old.items()
    }
    a, b = convert_dac_state_dict(old), convert_dac_state_dict(new)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "decoder.model.1.block.1.convtr.parametrizations.weight.original0" in a
    assert "encoder.block.1.block.4.conv.parametrizations.weight.original1" in a
    assert "quantizer.layers.2.codebook.weight" in a


def test_unknown_keys_are_named():
    state = tiny_official().state_dict()
    state["quantizer.quantizers.0.ema.weight"] = torch.zeros(1)
    state["discriminator.x.weight"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"unknown keys.*quantizer\.quantizers\.0\.ema\.weight.*discriminator\.x\.weight"
    ):
        convert_dac_state_dict(state)


def test_mixed_weight_norm_styles_are_refused():
    state = tiny_official().state_dict()
    state["encoder.block.0.parametrizations.weight.original0"] = state["encoder.block.0.weight_g"]
    with pytest.raises(ValueError, match="given twice.*encoder.block.0.parametrizations.weight.original0"):
        convert_dac_state_dict(state)


def test_missing_keys_are_named(tmp_path):
    official = tiny_official()
    state = official.state_dict()
    del state["quantizer.quantizers.1.codebook.weight"]
    del state["decoder.model.1.block.1.weight_v"]
    torch.save({"state_dict": state, "metadata": {"kwargs": dict(tiny_official_kwargs())}}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"missing keys \(2\)") as error:
        import_dac(tmp_path / "w.pth", None, tmp_path / "out.ckpt")
    assert "decoder.model.1.block.1.convtr.parametrizations.weight.original1" in str(error.value)
    assert "quantizer.layers.1.codebook.weight" in str(error.value)
    assert not (tmp_path / "out.ckpt").exists()


def tiny_official_kwargs() -> dict:
    return {**TINY_DAC_KWARGS, "quantizer_dropout": False}


def test_variant_mismatch_with_metadata_is_an_error(tmp_path):
    path = tiny_official().save(str(tmp_path / "tiny.pth"), package=False)
    with pytest.raises(ValueError, match=r"not the DAC 44khz model.*encoder_dim=4 \(expected 64\)"):
        import_dac(path, "44khz", tmp_path / "out.ckpt")
    # the 24 kHz metadata named as 16 kHz: the message says which model it is
    kwargs = {**OFFICIAL_KWARGS["24khz"], "quantizer_dropout": False}
    torch.save({"state_dict": {}, "metadata": {"kwargs": kwargs}}, tmp_path / "w24.pth")
    with pytest.raises(ValueError, match=r"n_codebooks=32 \(expected 12\).*sample_rate=24000.*it is the 24khz model"):
        import_dac(tmp_path / "w24.pth", "16khz", tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match="unknown DAC variant"):
        import_dac(path, "32khz", tmp_path / "out.ckpt")


def test_bare_state_dict_needs_a_variant_and_the_right_shapes(tmp_path):
    torch.save(tiny_official().state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match="no metadata.*name the variant"):
        import_dac(tmp_path / "bare.pth", None, tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match=r"shape mismatches.*encoder\.block\.0\.conv"):
        import_dac(tmp_path / "bare.pth", "44khz", tmp_path / "out.ckpt")
    with pytest.raises(FileNotFoundError):
        import_dac(tmp_path / "nope.pth", "44khz", tmp_path / "out.ckpt")


def test_custom_sizes_from_metadata_round_trip(tmp_path):
    official = tiny_official()
    randomize(official, seed=1)
    official.eval()
    path = official.save(str(tmp_path / "tiny.pth"), package=False)
    codec = Codec.from_checkpoint(import_dac(path, None, tmp_path / "tiny.ckpt"))
    x = test_audio(3000)
    with torch.no_grad():
        x_pre = official.preprocess(x, SAMPLE_RATE)
        z, codes, *_ = official.encode(x_pre)
        encoded = codec.encode(x)
        assert torch.equal(encoded.codes, codes)
        assert (codec.decode(encoded) - official.decode(z)[..., : x.shape[-1]]).abs().max() < 1e-5
    assert isinstance(encoded, EncodedAudio)
