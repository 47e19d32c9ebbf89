"""`codecplatform export --format onnx` on a tiny model (checked with onnxruntime in the same
command), and the fast start of the light subcommands: they never import Lightning."""

from __future__ import annotations

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


@pytest.mark.parametrize(("family", "base"), [("encodec", "24khz_mono.yaml"), ("dac", "44khz.yaml")])
def test_onnx_export_matches_pytorch(tmp_path, family, base, capsys):
    from codecplatform.cli import cli_main

    checkpoint = tiny_checkpoint(tmp_path / "c.ckpt", family, base)
    out = tmp_path / "onnx"
    assert cli_main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--out_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "audio max abs difference" in printed
    info = json.loads((out / "export.json").read_text())
    assert info["passed"] and min(info["check"]["codes_equal"]) == 1.0
    assert max(info["check"]["audio_max_abs_diff"]) < 1e-4
    assert len(set(info["check"]["lengths"])) == 2  # two lengths through one graph: a dynamic axis
    assert (out / "encoder.onnx").is_file() and (out / "decoder.onnx").is_file()


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
