"""MUFFIN import (codecplatform.checkpoints.muffin): the official train.py's ``g_<step>`` file, built by
the official code with seeded weights (tests/fixtures/muffin/weights.pt, make_muffin_golden.py), imported
into a codec checkpoint that gives the official outputs; the released configs as our codec; errors name
the file and the keys. (The official module is not imported here: its repository is not a dependency.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codecplatform.checkpoints.cli import main as import_main
from codecplatform.checkpoints.muffin import VARIANTS, import_muffin, muffin_codec_config
from codecplatform.config import compose_config
from codecplatform.models.codec import Codec

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "muffin"
WEIGHTS = FIXTURES / "weights.pt"
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "golden.pt", weights_only=True)


def tiny_config(golden) -> dict:
    """The fixture's small model as a Codec config (the released variants are built by muffin_codec_config)."""
    c = golden["config"]
    quantizer = {
        **c["quantizer"],
        "stage_hook": {
            "class_path": "codecplatform.quantizers.band_limit.BandLimit",
            "init_args": {"scales": c["scales"]},
        },
    }
    return {
        "class_path": "codecplatform.models.codec.Codec",
        "init_args": {
            "sample_rate": 24000,
            "bandwidths": None,
            "encoder": {"class_path": "codecplatform.generators.muffin.MuffinEncoder", "init_args": c["encoder"]},
            "quantizer": {
                "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
                "init_args": quantizer,
            },
            "decoder": {"class_path": "codecplatform.generators.muffin.MuffinDecoder", "init_args": c["decoder"]},
        },
    }


def test_imported_checkpoint_gives_the_official_outputs(golden, tmp_path):
    out = import_muffin(WEIGHTS, "75hz", tmp_path / "muffin.ckpt", config=tiny_config(golden))
    codec = Codec.from_checkpoint(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(codec.encoder(golden["x"]), golden["z"], **TOL)
        codes = codec.quantizer.encode(golden["z"])
        assert torch.equal(codes, golden["eval"]["codes"])
        torch.testing.assert_close(codec.quantizer.decode(codes), golden["eval"]["z_q"], **TOL)
        torch.testing.assert_close(codec.decoder(golden["eval"]["z_q"]), golden["eval"]["y"], **TOL)
        encoded = codec.encode(golden["x"])  # the codec interface, end to end
        assert torch.equal(encoded.codes, golden["eval"]["codes"])
        torch.testing.assert_close(codec.decode(encoded), golden["eval"]["y"], **TOL)
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["family"] == "muffin" and checkpoint["source"] == str(WEIGHTS)


@pytest.mark.parametrize(("variant", "experiment"), [("75hz", "75hz"), ("12.5hz", "12_5hz"), ("6.25hz", "6_25hz")])
def test_variant_config_is_the_experiment_codec(variant, experiment):
    codec = compose_config(ROOT / "experiments" / "muffin" / f"{experiment}.yaml")["model"]["init_args"]["codec"]
    ours = muffin_codec_config(variant)["init_args"]
    for part in ("encoder", "decoder"):
        assert ours[part] == codec["init_args"][part]
    quantizer = codec["init_args"]["quantizer"]["init_args"]
    assert ours["quantizer"]["init_args"] == {k: quantizer[k] for k in ours["quantizer"]["init_args"]}
    assert ours["bandwidths"] == pytest.approx(codec["init_args"]["bandwidths"])


def test_512_code_variant_has_the_official_geometry():
    args = muffin_codec_config("75hz_512codes")["init_args"]
    assert args["quantizer"]["init_args"]["codebook_size"] == 512
    assert args["encoder"]["init_args"]["resblock_dilations"] == [1, 3, 5]
    assert args["bandwidths"] == pytest.approx([0.675, 1.35, 2.025, 2.7])  # 75 Hz x 9 bits per codebook
    assert set(VARIANTS) == {"75hz", "75hz_512codes", "12.5hz", "6.25hz"}


def test_full_size_variants_have_the_official_parameter_counts():
    with torch.device("meta"):
        counts = Codec.from_config(muffin_codec_config("75hz")).num_parameters()
    assert round(counts["encoder"] / 1e6, 1) == 34.2 and round(counts["decoder"] / 1e6, 1) == 11.9


def test_cli_imports_and_reports(golden, tmp_path, capsys, monkeypatch):
    import codecplatform.checkpoints.muffin as muffin

    monkeypatch.setattr(muffin, "muffin_codec_config", lambda variant: tiny_config(golden))
    out = tmp_path / "m.ckpt"
    assert import_main(["--family", "muffin", "--variant", "75hz", "--source", str(WEIGHTS), "--out", str(out)]) == 0
    assert "imported muffin 75hz" in capsys.readouterr().out
    state = Codec.from_checkpoint(out).state_dict()
    assert torch.equal(state["quantizer.layers.3.embed"], golden_embed(3))
    assert import_main(["--family", "muffin", "--source", str(WEIGHTS), "--out", str(out)]) == 2  # no variant
    two = ["--source", str(WEIGHTS), str(WEIGHTS)]
    assert import_main(["--family", "muffin", "--variant", "75hz", *two, "--out", str(out)]) == 2
    assert "takes one --source file" in capsys.readouterr().err


def golden_embed(k: int) -> torch.Tensor:
    return torch.load(WEIGHTS, weights_only=True)["quantizer"][f"quantizer.vq.layers.{k}._codebook.embed"]


def _official(tmp_path, edit) -> Path:
    content = torch.load(WEIGHTS, weights_only=True)
    edit(content)
    path = tmp_path / "g_edited"
    torch.save(content, path)
    return path


def test_errors_name_the_file_and_the_keys(golden, tmp_path):
    config = tiny_config(golden)
    out = tmp_path / "out.ckpt"
    source = _official(tmp_path, lambda c: c["encoder"].update({"lm.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unknown keys .*g_edited.*\(1\): encoder\.lm\.weight"):
        import_muffin(source, "75hz", out, config=config)
    source = _official(tmp_path, lambda c: c["generator"].pop("ups.1.1.weight_v"))
    with pytest.raises(
        ValueError, match=r"g_edited is not the MUFFIN 75hz model: missing keys \(1\): generator\.ups\.1\.1\.weight_v$"
    ):
        import_muffin(source, "75hz", out, config=config)
    source = _official(tmp_path, lambda c: c.pop("quantizer"))
    with pytest.raises(ValueError, match=r"g_edited is not a MUFFIN generator checkpoint .*no 'quantizer'"):
        import_muffin(source, "75hz", out, config=config)
    with pytest.raises(ValueError, match=r"weights.pt is not the MUFFIN 75hz model: missing keys .*shape mismatches"):
        import_muffin(WEIGHTS, "75hz", out)  # the small fixture is not the released 75 Hz model
    assert not out.exists()
