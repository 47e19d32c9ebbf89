"""SpectroStream import (codecplatform.checkpoints.spectrostream): the released layout (flax paths in
safetensors: encoder.safetensors and the model checkpoint's params/soundstream), written by the official
JAX code with seeded weights (tests/fixtures/spectrostream, make_spectrostream_golden.py), imported into a
codec checkpoint that gives the official outputs; other spellings of the same tree; errors name the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from codecplatform.checkpoints.cli import main as import_main
from codecplatform.checkpoints.spectrostream import (
    import_spectrostream,
    read_parameter_file,
    spectrostream_codec_config,
)
from codecplatform.models.codec import Codec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "spectrostream"
SOURCES = [FIXTURES / "encoder.safetensors", FIXTURES / "soundstream.safetensors"]


def tiny_config() -> dict:
    """The fixture's model (official layout at widths 2 .. 32, 8-d latent, 4 x 16 codebooks)."""
    config = spectrostream_codec_config(n_q=4)
    args = config["init_args"]
    for part in ("encoder", "decoder"):
        args[part]["init_args"].update(dimension=8, base_depth=2)
    args["quantizer"]["init_args"].update(dimension=8, n_q=4, codebook_size=16)
    args["bandwidths"] = None
    return config


def load(name: str) -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / name) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def test_imported_checkpoint_gives_the_official_outputs(tmp_path):
    out = import_spectrostream(SOURCES, None, tmp_path / "ss.ckpt", config=tiny_config())
    codec = Codec.from_checkpoint(out).eval()
    golden, rvq = load("codec_golden.npz"), load("golden.npz")
    with torch.no_grad():
        z = codec.encoder(golden["audio"].transpose(1, 2))
        torch.testing.assert_close(z.transpose(1, 2), golden["z"], rtol=1e-5, atol=2e-5)
        y = codec.decoder(golden["z"].transpose(1, 2))[..., : golden["y"].shape[1]]
        torch.testing.assert_close(y, golden["y"].transpose(1, 2), rtol=1e-5, atol=2e-6)
        codes = codec.quantizer.encode(rvq["rvq_embeddings"].transpose(1, 2))
        valid = rvq["rvq_mask"]
        assert torch.equal(codes.transpose(1, 2)[valid], rvq["rvq_codes"][valid].long())
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["family"] == "spectrostream" and checkpoint["variant"] == "48khz_stereo"


def test_other_spellings_of_the_tree_are_read(tmp_path):
    """One file, boxed leaves (``/value``), no ``conv/`` level, no ``params/`` prefix, and an .npz."""
    params = {**read_parameter_file(SOURCES[0]), **read_parameter_file(SOURCES[1])}
    respelled = {}
    for key, value in params.items():
        key = key.removeprefix("params/").replace("/conv/", "/")
        respelled[key + ("/value" if key.endswith("kernel") else "")] = value
    respelled["params/depthformer/embed"] = torch.zeros(3)  # another part of a model checkpoint: ignored
    save_file(respelled, str(tmp_path / "one.safetensors"))
    np.savez(tmp_path / "one.npz", **{k: v.numpy() for k, v in respelled.items()})
    reference = Codec.from_checkpoint(import_spectrostream(SOURCES, None, tmp_path / "a.ckpt", config=tiny_config()))
    for name in ("one.safetensors", "one.npz"):
        out = import_spectrostream(tmp_path / name, None, tmp_path / f"{name}.ckpt", config=tiny_config())
        state = Codec.from_checkpoint(out).state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_released_config_has_the_official_sizes():
    with torch.device("meta"):
        counts = Codec.from_config(spectrostream_codec_config()).num_parameters()
    assert round(counts["encoder"] / 1e6, 1) == 9.3 and round(counts["decoder"] / 1e6, 1) == 35.7
    args = spectrostream_codec_config(n_q=16)["init_args"]
    assert args["quantizer"]["init_args"]["n_q"] == 16 and args["bandwidths"] == [4.0]
    assert args["encoder"]["init_args"]["norm"] == "none"  # the released code has no weight norm


def test_cli_takes_several_sources(tmp_path, capsys, monkeypatch):
    import codecplatform.checkpoints.spectrostream as spectrostream

    monkeypatch.setattr(spectrostream, "spectrostream_codec_config", lambda variant, n_q: tiny_config())
    out = tmp_path / "ss.ckpt"
    args = ["--family", "spectrostream", "--source", *map(str, SOURCES), "--out", str(out)]
    assert import_main(args) == 0
    assert "imported spectrostream" in capsys.readouterr().out and out.is_file()


def test_errors_name_the_files_and_the_paths(tmp_path):
    out = tmp_path / "out.ckpt"
    with pytest.raises(ValueError, match=r"soundstream\.safetensors: no SpectroStream encoder parameters found"):
        import_spectrostream(SOURCES[1], None, out, config=tiny_config())
    params = read_parameter_file(SOURCES[1])
    params["params/soundstream/decoder/decoder_9/conv2d_3x3/conv/kernel"] = torch.zeros(3, 3, 2, 2)
    save_file(params, str(tmp_path / "extra.safetensors"))
    unexpected = r"extra\.safetensors is not the .*unexpected keys \(1\): .*decoder_9/conv2d_3x3/conv/kernel"
    with pytest.raises(ValueError, match=unexpected):
        import_spectrostream([SOURCES[0], tmp_path / "extra.safetensors"], None, out, config=tiny_config())
    params["params/soundstream/decoder/decoder_1/conv2d_9x9/conv/kernel"] = params.pop(
        "params/soundstream/decoder/decoder_9/conv2d_3x3/conv/kernel"
    )
    save_file(params, str(tmp_path / "unknown.safetensors"))
    with pytest.raises(ValueError, match=r"unknown parameters in .*unknown\.safetensors.*decoder_1/conv2d_9x9"):
        import_spectrostream([SOURCES[0], tmp_path / "unknown.safetensors"], None, out, config=tiny_config())
    del params["params/soundstream/decoder/decoder_1/conv2d_9x9/conv/kernel"]
    del params["params/soundstream/decoder/output_layer/base_conv_last/conv/bias"]
    save_file(params, str(tmp_path / "less.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): decoder/output_layer/base_conv_last/bias$"):
        import_spectrostream([SOURCES[0], tmp_path / "less.safetensors"], None, out, config=tiny_config())
    with pytest.raises(ValueError, match=r"is not the SpectroStream 48khz_stereo model: .*shape mismatches"):
        import_spectrostream(SOURCES, None, out)  # the small fixture is not the released model
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(ValueError, match=r"text\.safetensors is not a safetensors file of SpectroStream parameters"):
        import_spectrostream(tmp_path / "text.safetensors", None, out)
    assert not out.exists()
