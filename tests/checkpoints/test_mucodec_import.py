"""MuCodec import (codecplatform.checkpoints.mucodec): the released layout of mucodec.pt
(PromptCondAudioDiffusion state dict, tests/fixtures/mucodec/golden.pt) and audioldm_48k.pth (AudioLDM's
first stage, tests/fixtures/mucodec/audioldm_golden.pt), both written by the official code at small sizes,
imported into one MuCodec checkpoint whose parts give the official outputs; errors name the files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecplatform.checkpoints.cli import main as import_main
from codecplatform.checkpoints.mucodec import convert_audioldm_state, import_mucodec, mucodec_codec_config
from codecplatform.config import compose_config
from codecplatform.models.base import AudioCodec
from codecplatform.mucodec.melvae import MelVAE
from codecplatform.mucodec.vocoder import HifiGanVocoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mucodec"
ROOT = FIXTURES.parents[2]
TOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def ldm():
    return torch.load(FIXTURES / "audioldm_golden.pt", weights_only=True)


def test_audioldm_vae_and_vocoder_give_the_official_outputs(ldm):
    state, scale = convert_audioldm_state(ldm["checkpoint"]["state_dict"])
    assert scale == pytest.approx(0.75)
    melvae = MelVAE(**ldm["vae_config"]).eval()
    melvae.vae.load_state_dict({k[len("melvae.vae.") :]: v for k, v in state.items() if k.startswith("melvae.vae.")})
    vocoder = HifiGanVocoder(**ldm["vocoder_config"], weight_norm=False).eval()
    hifigan = {k[len("vocoder.hifigan.") :]: v for k, v in state.items() if k.startswith("vocoder.")}
    vocoder.hifigan.load_state_dict({**vocoder.hifigan.state_dict(), **hifigan})
    with torch.no_grad():
        torch.testing.assert_close(melvae.vae.decode(ldm["z"]).sample, ldm["mel"], **TOL)
        torch.testing.assert_close(melvae.vae.encode(ldm["mel_in"]).latent_dist.mean, ldm["posterior_mean"], **TOL)
        audio = vocoder.hifigan(ldm["vocoder_mel"].transpose(1, 2))  # (B, N, mels) -> (B, samples)
    torch.testing.assert_close(audio, ldm["audio"][:, 0], **TOL)


def tiny_config(golden, ldm) -> dict:
    config = mucodec_codec_config()
    args = config["init_args"]
    args["tokenizer"]["init_args"]["encoder"]["init_args"] = {**golden["muencoder"]["config"], "feature_layer": 2}
    for part in ("tokenizer", "flow"):
        args[part]["init_args"]["quantizer"]["init_args"] = {
            **golden["flow"]["config"]["quantizer"],
            "stale_tolerance": 200,
        }
    args["flow"]["init_args"]["transformer"] = dict(golden["flow"]["config"]["transformer"])
    args["melvae"]["init_args"] = dict(ldm["vae_config"])
    args["vocoder"]["init_args"].update(ldm["vocoder_config"])
    return config


def official_files(golden, ldm, tmp_path) -> list[Path]:
    """mucodec.pt (the flow model's state with the MuQ under muencoder.model.) and audioldm_48k.pth."""
    state = dict(golden["flow"]["official_state"])
    g = torch.Generator().manual_seed(0)  # statistics of 8 windows (the fixture's are 1e9 sums, inf in float16)
    state["normfeat.counts"] = torch.tensor([8.0])
    state["normfeat.sum_x"] = 8 * torch.randn(32, 32, generator=g)
    state["normfeat.sum_x2"] = state["normfeat.sum_x"] ** 2 / 8 + 8 * torch.rand(32, 32, generator=g) + 1
    state.update({f"muencoder.model.{k}": v for k, v in golden["muencoder"]["official_state"].items()})
    torch.save(state, tmp_path / "mucodec.pt")
    torch.save(ldm["checkpoint"], tmp_path / "audioldm_48k.pth")
    return [tmp_path / "audioldm_48k.pth", tmp_path / "mucodec.pt"]  # either order


def test_imported_bundle_gives_the_official_outputs(golden, ldm, tmp_path):
    out = import_mucodec(
        official_files(golden, ldm, tmp_path), None, tmp_path / "m.ckpt", config=tiny_config(golden, ldm)
    )
    codec = AudioCodec.from_checkpoint(out).eval()
    flow = golden["flow"]
    with torch.no_grad():
        assert torch.equal(codec.tokenizer.quantizer.encode(flow["features"]), flow["rvq_codes"])
        x, prompt, condition = flow["dit_in"].float().chunk(3, dim=1)
        torch.testing.assert_close(codec.flow.velocity(x, flow["dit_t"], prompt, condition), flow["dit_out"], **TOL)
        states = codec.tokenizer.encoder(golden["muencoder"]["audio"].float()).hidden_states
        torch.testing.assert_close(torch.stack(states), golden["muencoder"]["layer_results"], **TOL)
        torch.testing.assert_close(codec.melvae.vae.decode(ldm["z"]).sample, ldm["mel"], **TOL)
    # the official statistics are of 0.75 z: ours of z give the same normalized latents
    official = torch.load(tmp_path / "mucodec.pt", weights_only=True)
    counts = official["normfeat.counts"].float()
    mean = official["normfeat.sum_x"].float() / counts
    std = (official["normfeat.sum_x2"].float() / counts - mean**2).clamp(min=0).sqrt()
    torch.testing.assert_close(codec.melvae.normalizer.mean * 0.75, mean, **TOL)
    torch.testing.assert_close(codec.melvae.normalizer.std * 0.75, std, **TOL)
    assert torch.load(out, weights_only=True)["family"] == "mucodec"


def test_released_config_is_the_experiment_codec():
    codec = compose_config(ROOT / "experiments" / "mucodec" / "codec_1x16384.yaml")["model"]["init_args"]["codec"]
    ours = mucodec_codec_config()["init_args"]
    for part in ("tokenizer", "flow"):
        assert ours[part] == codec["init_args"][part]
    yaml_vocoder = {**codec["init_args"]["vocoder"]["init_args"], "weight_norm": False}
    assert ours["vocoder"]["init_args"] == yaml_vocoder


def test_cli_and_errors_name_the_files(golden, ldm, tmp_path, capsys, monkeypatch):
    import codecplatform.checkpoints.mucodec as mucodec

    files = official_files(golden, ldm, tmp_path)
    monkeypatch.setattr(mucodec, "mucodec_codec_config", lambda variant: tiny_config(golden, ldm))
    out = tmp_path / "cli.ckpt"
    assert import_main(["--family", "mucodec", "--source", *map(str, files), "--out", str(out)]) == 0
    assert "imported mucodec" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"needs two files"):
        import_mucodec(files[:1], None, out)
    state = torch.load(files[1], weights_only=True)
    state["lyrics_head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(
        ValueError, match=r"unknown keys in the MuCodec state dict .*extra\.pt \(1\): lyrics_head\.weight"
    ):
        import_mucodec([files[0], tmp_path / "extra.pt"], None, out)
    del state["lyrics_head.weight"], state["cfm_wrapper.estimator.proj_out.bias"]
    torch.save(state, tmp_path / "less.pt")
    with pytest.raises(ValueError, match=r"less\.pt \+ .*missing keys \(1\): cfm_wrapper\.estimator\.proj_out\.bias$"):
        import_mucodec([files[0], tmp_path / "less.pt"], None, tmp_path / "x.ckpt")
    checkpoint = dict(ldm["checkpoint"]["state_dict"])
    checkpoint["first_stage_model.vocoder.conv_pre.weight_g"] = checkpoint.pop(
        "first_stage_model.vocoder.conv_pre.weight"
    )
    torch.save({"state_dict": checkpoint}, tmp_path / "wn.pth")
    with pytest.raises(ValueError, match=r"unknown first-stage keys in .*wn\.pth \(1\): .*vocoder\.conv_pre\.weight_g"):
        import_mucodec([tmp_path / "wn.pth", files[1]], None, out)
    assert not (tmp_path / "x.ckpt").exists()
