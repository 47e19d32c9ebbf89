"""End-to-end MuCodec behind the codec interface: built from stage checkpoint files (tiny geometries),
decode has the input's length and channels and is reproducible, bad inputs give clear errors, and one
bundled file works with AudioCodec.from_checkpoint and `codecplatform encode/decode` (.cpc)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codecplatform.config import compose_config, instantiate, merge_config
from codecplatform.inference import decode_main, encode_main
from codecplatform.models.base import AudioCodec
from codecplatform.mucodec.bundle import bundle, save_bundle
from codecplatform.mucodec.codec import MuCodec
from codecplatform.mucodec.melvae import CHECKPOINT_CONFIG_KEY
from codecplatform.mucodec.vocoder import HifiGanVocoder

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def tiny_config(variant: str = "1x16384") -> dict:
    merged = merge_config(
        compose_config(EXPERIMENTS / "mucodec" / f"codec_{variant}.yaml"),
        compose_config(EXPERIMENTS / "tiny" / "mucodec_codec.yaml"),
    )
    return merged["model"]["init_args"]["codec"]


def build(config: dict) -> MuCodec:
    return instantiate(copy.deepcopy(config), MuCodec)


def with_args(config: dict, **args) -> dict:
    return {**config, "init_args": {**config["init_args"], **args}}


@pytest.fixture(scope="module")
def stage_files(tmp_path_factory):
    """Stage checkpoint files as the stage modules write them (prefixes, configs), from random parts."""
    root = tmp_path_factory.mktemp("stages")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="untrained"):
        parts = build(tiny_config())
    vae = parts.melvae
    with torch.no_grad():
        vae.normalizer.count.fill_(4)
        vae.normalizer.sum.normal_()
        vae.normalizer.sum_sq.copy_(vae.normalizer.sum.pow(2) * 4 + 4.0)
    tokenizer = {f"tokenizer.{k}": v for k, v in parts.tokenizer.state_dict().items()}
    torch.save({"state_dict": tokenizer}, root / "tokenizer.ckpt")
    flow = {f"flow.{k}": v for k, v in parts.flow.state_dict().items()}
    flow.update({f"melvae.{k}": v for k, v in vae.state_dict().items()})
    torch.save({"state_dict": flow, CHECKPOINT_CONFIG_KEY: vae.config()}, root / "flow.ckpt")
    vocoder_args = tiny_config()["init_args"]["vocoder"]["init_args"]
    vocoder = HifiGanVocoder(**vocoder_args)
    vocoder.save_pretrained(root / "vocoder")
    vstate = {f"vocoder.{k}": v for k, v in vocoder.state_dict().items()}
    torch.save({"state_dict": vstate, "vocoder_config": vocoder.config()}, root / "vocoder.ckpt")
    return root


def from_files(root: Path, vocoder: str = "vocoder.ckpt", **extra) -> dict:
    args = {
        "melvae": None,
        "tokenizer_checkpoint": str(root / "tokenizer.ckpt"),
        "flow_checkpoint": str(root / "flow.ckpt"),
        "vocoder_checkpoint": str(root / vocoder),
        "require_checkpoints": True,
    }
    return with_args(tiny_config(), **{**args, **extra})


def test_interface_rates_and_operating_points():
    with pytest.warns(UserWarning, match="untrained"):
        low, high = build(tiny_config("1x16384")), build(tiny_config("4x10000"))
    assert (low.sample_rate, low.channels, low.frame_rate, low.samples_per_frame) == (48000, 2, 25.0, 1920)
    assert low.bitrate(1) == pytest.approx(0.35) and low.operating_points() == {0.35: 1}
    assert high.bitrate(4) == pytest.approx(1.3288, abs=1e-4) and list(high.operating_points().values()) == [4]


def test_chain_from_stage_files_decodes_input_length_and_channels(stage_files):
    codec = build(from_files(stage_files))
    assert int(codec.melvae.normalizer.count) == 4  # the flow checkpoint's statistics
    assert not codec.vocoder.weight_norm  # folded for inference
    x = torch.randn(2, 2, 24123) * 0.1
    encoded = codec.encode(x)
    assert encoded.codes.shape == (2, 1, 13) and encoded.length == 24123  # ceil(24123 / 1920) frames
    y = codec.decode(encoded)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(codec.decode(encoded), y)  # seeded: reproducible
    mono = torch.randn(1, 1, 9000) * 0.1
    assert codec.decode(codec.encode(mono), channels=1).shape == mono.shape
    at_24k = codec.encode(torch.randn(1, 2, 12000), sample_rate=24000)  # any rate: resampled
    assert at_24k.length == 24000 and codec.decode(at_24k).shape == (1, 2, 24000)
    other_seed = build(from_files(stage_files, seed=1))
    assert not torch.equal(other_seed.decode(encoded), y)  # another seed, other noise
    same = build(from_files(stage_files, vocoder="vocoder"))  # the vocoder's save_pretrained directory
    torch.testing.assert_close(same.decode(encoded), y)


def test_long_input_encodes_as_its_independent_windows(stage_files):
    codec = build(from_files(stage_files, encode_window_seconds=0.16))  # 4 codes per window
    assert codec.encode_window_codes == 4
    x = torch.randn(1, 2, 14000) * 0.1  # at 24 kHz: 15 codes (padded to 16) -> windows of 4 codes
    codes = codec.encode(x, sample_rate=24000).codes
    padded = torch.nn.functional.pad(x, (0, 15360 - 14000))
    windows = [codec.tokenizer.encode(padded[..., s : s + 3840]).codes[..., :4] for s in range(0, 15360, 3840)]
    torch.testing.assert_close(codes, torch.cat(windows, -1)[..., :15])
    codec.encode_window_codes = 1024  # the default 40.96 s: one window here
    one_pass = codec.encode(x, sample_rate=24000).codes
    assert not torch.equal(codes, one_pass)  # the windows are encoded without each other's context
    with pytest.raises(ValueError, match="encode_window_seconds=0.1 must be"):
        build(from_files(stage_files, encode_window_seconds=0.1))


def test_bad_inputs_give_clear_errors(stage_files, tmp_path):
    codec = build(from_files(stage_files))
    codes = codec.encode(torch.randn(1, 2, 4800)).codes
    with pytest.raises(ValueError, match=r"codebook 0 must be in \[0, 16383\]"):
        codec.decode(codes + 16384)
    with pytest.raises(ValueError, match=r"codes must be \(B, 1, T\)"):
        codec.decode(codes[:, :0])
    with pytest.raises((FileNotFoundError, ValueError), match=r"flow_checkpoint=.*nowhere\.ckpt: no such file"):
        build(from_files(stage_files, flow_checkpoint=str(tmp_path / "nowhere.ckpt")))
    with pytest.raises(ValueError, match="tokenizer_checkpoint, flow_checkpoint, vocoder_checkpoint null"):
        build(with_args(tiny_config(), require_checkpoints=True))
    # a flow checkpoint of another geometry (4 x 10000 codebooks) for the 1 x 16384 YAML
    with pytest.warns(UserWarning):
        high = build(tiny_config("4x10000"))
    state = {f"flow.{k}": v for k, v in high.flow.state_dict().items()}
    state.update({f"melvae.{k}": v for k, v in codec.melvae.state_dict().items()})
    torch.save({"state_dict": state, CHECKPOINT_CONFIG_KEY: codec.melvae.config()}, tmp_path / "flow4.ckpt")
    with pytest.raises(ValueError, match=r"flow_checkpoint=.*flow4\.ckpt.*quantizer"):
        build(from_files(stage_files, flow_checkpoint=str(tmp_path / "flow4.ckpt")))
    # a vocoder of another mel
    other = HifiGanVocoder(**{**tiny_config()["init_args"]["vocoder"]["init_args"], "n_mels": 32})
    other.save_pretrained(tmp_path / "voc32")
    with pytest.raises(ValueError, match=r"vocoder_checkpoint=.*voc32.*n_mels"):
        build(from_files(stage_files, vocoder_checkpoint=str(tmp_path / "voc32")))
    # a tokenizer checkpoint that is another stage's file
    with pytest.raises(ValueError, match=r"tokenizer_checkpoint=.*vocoder\.ckpt: no 'tokenizer\.\*' weights"):
        build(from_files(stage_files, tokenizer_checkpoint=str(stage_files / "vocoder.ckpt")))
    with pytest.raises(ValueError, match="n_q"):
        codec.encode(torch.randn(1, 2, 4800), n_q=2)


def test_bundle_loads_with_from_checkpoint_and_codes_cpc_files(stage_files, tmp_path, monkeypatch):
    config = from_files(stage_files)
    codec = build(config)
    path = save_bundle(codec, config, tmp_path / "mucodec.ckpt")
    raw = torch.load(path, weights_only=True)  # plain data and tensors only
    assert raw["codec_config"]["init_args"]["flow_checkpoint"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "untrained MuCodec": the bundle's weights follow
        loaded = AudioCodec.from_checkpoint(path)
    assert isinstance(loaded, MuCodec)
    x = torch.randn(1, 2, 30000) * 0.1
    encoded = codec.encode(x)
    torch.testing.assert_close(loaded.encode(x).codes, encoded.codes)
    torch.testing.assert_close(loaded.decode(encoded), codec.decode(encoded))

    wav = tmp_path / "in.wav"
    sf.write(wav, (np.random.default_rng(0).standard_normal((30000, 2)) * 0.1).astype(np.float32), 48000)
    assert encode_main([str(wav), str(tmp_path / "in.cpc"), "--checkpoint", str(path)]) == 0
    assert decode_main([str(tmp_path / "in.cpc"), str(tmp_path / "out.wav"), "--checkpoint", str(path)]) == 0
    out, rate = sf.read(tmp_path / "out.wav")
    assert rate == 48000 and out.shape == (30000, 2)


def test_bundle_from_yaml(stage_files, tmp_path):
    yaml = tmp_path / "codec.yaml"
    import yaml as pyyaml

    yaml.write_text(pyyaml.safe_dump({"model": {"init_args": {"codec": from_files(stage_files)}}}))
    path = bundle(yaml, tmp_path / "b.ckpt")
    assert isinstance(AudioCodec.from_checkpoint(path), MuCodec)
