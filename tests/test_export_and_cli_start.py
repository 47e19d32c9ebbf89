"""`codecplatform export --format onnx` on tiny models (the written graphs run with onnxruntime
here, against PyTorch; the families it refuses), and the fast start of the light subcommands:
they never import Lightning."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codecplatform.config import compose_config, merge_config
from codecplatform.models.codec import Codec

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"


def tiny_checkpoint(path: Path, family: str = "encodec", base: str = "24khz_mono.yaml") -> Path:
    """A checkpoint of ``experiments/<family>/<base>`` with the family's tiny override, or of
    ``experiments/quickstart.yaml`` as it is (family "quickstart": already small)."""
    if family == "quickstart":
        config = compose_config(EXPERIMENTS / "quickstart.yaml")
    else:
        tiny = compose_config(EXPERIMENTS / "tiny" / f"{family}.yaml")
        config = merge_config(compose_config(EXPERIMENTS / family / base), tiny)
    codec_config = config["model"]["init_args"]["codec"]
    torch.manual_seed(0)
    codec = Codec.from_config(codec_config).train()
    with torch.no_grad():  # k-means initialization of the codebooks
        codec(0.1 * torch.randn(2, codec.channels, codec.sample_rate // 10), n_q=codec.n_q)
    state = {f"codec.{k}": v for k, v in codec.state_dict().items()}
    torch.save({"codec_config": codec_config, "state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    ("family", "base"),
    [
        ("encodec", "24khz_mono.yaml"),
        ("dac", "44khz.yaml"),
        ("quickstart", ""),  # normalizes its input: the scale travels with the codes
        ("encodec", "48khz_stereo.yaml"),  # normalized and segmented: the graphs code one segment
    ],
)
def test_onnx_export_matches_pytorch(tmp_path, family, base, capsys):
    """The written encoder.onnx / decoder.onnx, opened here with onnxruntime, against the PyTorch
    codec read from the same checkpoint (weight norm not folded) on fresh audio: batch 2 and a
    length neither the export's tracing (50 frames) nor its own check (37, 81 frames) uses. A
    normalizing codec's encoder also outputs the scale (B, 1, 1), which its decoder takes back."""
    import onnxruntime as ort

    from codecplatform.cli import cli_main
    from codecplatform.models.base import AudioCodec

    checkpoint = tiny_checkpoint(tmp_path / "c.ckpt", family, base)
    out = tmp_path / "onnx"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out_dir", str(out)]) == 0
    assert "audio max abs difference" in capsys.readouterr().out
    info = json.loads((out / "export.json").read_text())

    codec = AudioCodec.from_checkpoint(checkpoint).eval()
    assert info["n_q"] == codec.n_q and info["hop_length"] == codec.hop_length
    assert info["normalize"] == codec.normalize and info["segment_samples"] == codec.segment_length
    generator = torch.Generator().manual_seed(1234)
    frames = 23
    t = torch.arange(frames * codec.hop_length) / codec.sample_rate
    tone = 0.3 * torch.sin(2 * torch.pi * 330 * t)
    x = tone + 0.05 * torch.randn(2, codec.channels, t.numel(), generator=generator)  # (2, C, T)
    x[1] *= 4  # another level: a normalizing codec codes both alike and restores each one's scale
    with torch.inference_mode():
        encoded = codec.encode(x, n_q=codec.n_q)  # (2, K, 23), one segment
        audio = codec.decode(encoded)  # (2, C, 23 * hop)
    assert encoded.codes.shape == (2, codec.n_q, frames)
    codes = encoded.codes

    providers = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(str(out / "encoder.onnx"), providers=providers)
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=providers)
    scaled = codec.normalize
    assert [o.name for o in encoder.get_outputs()] == ["codes", "scale"][: 1 + scaled]
    assert [i.name for i in decoder.get_inputs()] == ["codes", "scale"][: 1 + scaled]
    outputs = encoder.run(None, {"audio": x.numpy()})
    onnx_codes = outputs[0]
    assert onnx_codes.dtype == np.int64 and onnx_codes.shape == tuple(codes.shape)
    np.testing.assert_array_equal(onnx_codes, codes.numpy())
    feed = {"codes": codes.numpy()}
    if scaled:
        assert encoded.scale.shape == (2, 1, 1) and outputs[1].shape == (2, 1, 1)
        np.testing.assert_allclose(outputs[1], encoded.scale.numpy(), rtol=1e-5)
        assert outputs[1][1, 0, 0] > 3 * outputs[1][0, 0, 0]
        feed["scale"] = outputs[1]
    onnx_audio = decoder.run(["audio"], feed)[0]
    assert onnx_audio.shape == tuple(audio.shape)
    np.testing.assert_allclose(onnx_audio, audio.numpy(), rtol=0, atol=1e-4 * max(1.0, float(audio.abs().max())))
    # other codes (every entry of every codebook, drawn at random) through both
    sizes = torch.tensor(codec.codebook_sizes[: codec.n_q]).view(1, -1, 1)
    random_codes = (torch.rand(2, codec.n_q, frames, generator=generator) * sizes).long()
    with torch.inference_mode():
        expected = codec.decode(dataclasses.replace(encoded, codes=random_codes))
    other = decoder.run(["audio"], {**feed, "codes": random_codes.numpy()})[0]
    np.testing.assert_allclose(other, expected.numpy(), rtol=0, atol=1e-4 * max(1.0, float(expected.abs().max())))
    # the decoder graph follows its codes: other codes move the audio far beyond the ONNX error
    error = max(np.abs(onnx_audio - audio.numpy()).max(), np.abs(other - expected.numpy()).max())
    assert np.abs(other - onnx_audio).max() > max(100 * error, 1e-3 * np.abs(onnx_audio).max())
    if codec.segment_length is not None:  # a whole segment, the longest input: the codec's first segment
        signal = 0.1 * torch.randn(1, codec.channels, 2 * codec.segment_length, generator=generator)
        with torch.inference_mode():
            expected = codec.encode(signal, n_q=codec.n_q)
        assert info["segment_stride"] == codec.segment_stride
        first = codec.segment_length // codec.hop_length
        segment_codes, segment_scale = encoder.run(None, {"audio": signal[..., : codec.segment_length].numpy()})
        np.testing.assert_array_equal(segment_codes, expected.codes[..., :first].numpy())
        np.testing.assert_allclose(segment_scale, expected.scale[:, :1].numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("family", "base", "reason"),
    [
        ("muffin", "75hz.yaml", "MUFFIN is not exported: its band-limited quantizer stages take an FFT"),
        ("spectrostream", "48khz_stereo.yaml", "SpectroStream is not exported: its STFT front and back ends"),
    ],
)
def test_onnx_export_refuses_what_it_cannot_export_in_one_line(tmp_path, family, base, reason, capsys):
    from codecplatform.cli import cli_main

    checkpoint = tiny_checkpoint(tmp_path / "c.ckpt", family, base)
    out = tmp_path / "onnx"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err, err
    assert not (out / "encoder.onnx").exists()


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_light_subcommands_do_not_import_lightning(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "c.ckpt")
    t = np.arange(24000) / 24000
    sf.write(tmp_path / "in.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000, subtype="FLOAT")
    wav, cpc, out = (str(tmp_path / name) for name in ("in.wav", "a.cpc", "out.wav"))
    code = f"""
import sys
from codecplatform.cli import cli_main
assert cli_main(["encode", {wav!r}, {cpc!r}, "--checkpoint", {str(checkpoint)!r}]) == 0
assert cli_main(["decode", {cpc!r}, {out!r}]) == 0
# encode/decode need no data pipeline either: +0.5 s of start-up (measured, benchmarks/cli_start.py)
data = ("lhotse", "datamodules", "scipy.fft")
print("DATA", sorted(m for m in data if m in sys.modules))
for sub in ("encode", "decode", "export", "import-checkpoint", "prepare"):
    try:
        cli_main([sub, "--help"])
    except SystemExit:
        pass
assert cli_main(["--help"]) == 0
heavy = ("lightning", "lightning.pytorch", "pytorch_lightning", "mlflow", "scipy.signal")
print("HEAVY", sorted(m for m in heavy if m in sys.modules))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DATA []" in result.stdout, result.stdout[-2000:]
    assert "HEAVY []" in result.stdout, result.stdout[-2000:]
    assert sf.info(str(tmp_path / "out.wav")).frames == 24000


def test_codec_cli_is_still_importable_lazily():
    result = run_python(
        "import sys, codecplatform.cli as c; assert 'lightning' not in sys.modules; "
        "from codecplatform.cli import CodecCLI; assert 'lightning' in sys.modules; "
        "from lightning.pytorch.cli import LightningCLI; assert issubclass(CodecCLI, LightningCLI); "
        "assert CodecCLI.__module__ == 'codecplatform.cli' and CodecCLI is c.CodecCLI"
    )
    assert result.returncode == 0, result.stderr[-3000:]
