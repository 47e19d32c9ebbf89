"""``codecplatform import-checkpoint`` and fine-tuning from its output (``init_codec_from``)."""

from __future__ import annotations

from pathlib import Path

import dac  # installed by `make test` (parity extra); a missing install must fail, not skip
import pytest
import torch
from test_dac_parity import TINY_DAC_KWARGS  # same folder: pytest puts it on sys.path

from codecplatform.checkpoints import cli as import_cli
from codecplatform.checkpoints.io import load_codec_state
from codecplatform.cli import cli_main
from codecplatform.lightning.gan_codec import GANCodecModule
from codecplatform.models.codec import Codec

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def official_file(folder: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised official DAC saved as ``DAC.save`` does (state_dict + metadata kwargs)."""
    torch.manual_seed(seed)
    model = dac.DAC(**{**TINY_DAC_KWARGS, **overrides})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)  # the official init leaves them at zero
    return Path(model.save(str(folder / f"official_{seed}.pth"), package=False))


def test_cli_imports_and_reports(tmp_path, capsys):
    source = official_file(tmp_path)
    out = tmp_path / "ours" / "tiny.ckpt"
    code = cli_main(["import-checkpoint", "--family", "dac", "--source", str(source), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    codec = Codec.from_checkpoint(out)
    assert f"{codec.num_parameters()['total']:,} parameters" in printed
    assert str(out.resolve()) in printed
    checkpoint = torch.load(out, weights_only=False)
    assert checkpoint["family"] == "dac" and checkpoint["source"] == str(source.resolve())
    official = torch.load(source, weights_only=True)["state_dict"]
    assert official["quantizer.quantizers.2.codebook.weight"].equal(codec.quantizer.layers[2].codebook.weight)


def test_cli_full_size_variant(tmp_path, capsys):
    torch.manual_seed(0)
    source = Path(dac.DAC().save(str(tmp_path / "weights_44khz.pth"), package=False))
    out = tmp_path / "dac_44khz.ckpt"
    code = import_cli.main(["--family", "dac", "--variant", "44khz", "--source", str(source), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "76,651,890 parameters" in printed  # the released 44.1 kHz model (generators/dac.py)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--family", "dac", "--variant", "44khz", "--source", "missing.pth"], "source file not found: missing.pth"),
        (["--family", "soundstream", "--variant", "24khz", "--source", "x.pth"], "unknown family 'soundstream'"),
        (["--family", "dac", "--variant", "48khz", "--source", "x.pth"], "unknown dac variant '48khz'"),
        (["--family", "encodec", "--variant", "16khz", "--source", "x.pth"], "unknown encodec variant '16khz'"),
        (["--family", "dac"], "required"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, capsys, args, message):
    code = cli_main(["import-checkpoint", *args, "--out", str(tmp_path / "out.ckpt")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.ckpt").exists()


def test_cli_variant_mismatch_fails(tmp_path, capsys):
    source = official_file(tmp_path)
    code = import_cli.main(
        ["--family", "dac", "--variant", "24khz", "--source", str(source), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    assert "is not the DAC 24khz model" in capsys.readouterr().err


def test_cli_encodec_is_dispatched(tmp_path, capsys, monkeypatch):
    """--family encodec calls EncodecImporter.import_file(source, variant, out); --variant is required."""
    from codecplatform.checkpoints.encodec import EncodecImporter

    calls = []

    def fake_import(self, source, variant, out):
        calls.append((Path(source), variant, Path(out)))
        return import_dac_tiny(tmp_path, out)

    monkeypatch.setattr(EncodecImporter, "import_file", fake_import)
    source = tmp_path / "encodec.th"
    source.write_bytes(b"x")
    code = import_cli.main(
        ["--family", "encodec", "--variant", "48khz", "--source", str(source), "--out", str(tmp_path / "e.ckpt")]
    )
    assert code == 0 and calls == [(source, "48khz", tmp_path / "e.ckpt")]
    code = import_cli.main(["--family", "encodec", "--source", str(source), "--out", str(tmp_path / "f.ckpt")])
    assert code == 2 and "--variant is required for encodec: choose one of 24khz, 48khz" in capsys.readouterr().err
    assert len(calls) == 1 and not (tmp_path / "f.ckpt").exists()


def test_family_is_a_name_or_an_importer_class_path(tmp_path, capsys):
    """One mapping (IMPORTERS) names the importers; any CheckpointImporter subclass is taken by class path."""
    from codecplatform.checkpoints.base import CheckpointImporter
    from codecplatform.checkpoints.cli import IMPORTERS, importer_class
    from codecplatform.checkpoints.dac import DACImporter
    from codecplatform.checkpoints.encodec import EncodecImporter
    from codecplatform.checkpoints.mucodec import MuCodecImporter
    from codecplatform.checkpoints.muffin import MuffinImporter
    from codecplatform.checkpoints.spectrostream import SpectroStreamImporter

    assert IMPORTERS == {
        "dac": DACImporter,
        "encodec": EncodecImporter,
        "muffin": MuffinImporter,
        "spectrostream": SpectroStreamImporter,
        "mucodec": MuCodecImporter,
    }
    assert all(issubclass(cls, CheckpointImporter) for cls in IMPORTERS.values())
    assert importer_class("codecplatform.checkpoints.dac.DACImporter") is DACImporter
    source = official_file(tmp_path)
    out = tmp_path / "by_class_path.ckpt"
    args = ["--family", "codecplatform.checkpoints.dac.DACImporter", "--source", str(source), "--out", str(out)]
    assert import_cli.main(args) == 0
    assert torch.load(out, weights_only=True)["family"] == "dac"
    capsys.readouterr()
    args = ["--family", "codecplatform.models.codec.Codec", "--source", str(source), "--out", str(tmp_path / "x")]
    assert import_cli.main(args) == 2
    assert "codecplatform.models.codec.Codec is not a CheckpointImporter subclass" in capsys.readouterr().err


def test_importers_do_not_import_the_cli(tmp_path):
    """No import circle: the importers (and their command) load without codecplatform.cli or Lightning."""
    import subprocess
    import sys

    code = (
        "import sys, codecplatform.checkpoints.cli, codecplatform.checkpoints; "
        "assert 'codecplatform.cli' not in sys.modules, 'codecplatform.cli imported'; "
        "assert 'lightning' not in sys.modules, 'lightning imported'; "
        "import codecplatform.cli"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package = Path(import_cli.__file__).parent
    for path in package.glob("*.py"):
        text = path.read_text()
        assert "codecplatform.cli " not in text and "from codecplatform.cli" not in text, path
        assert "parents[2]" not in text, f"{path} reads files outside the package"


def import_dac_tiny(folder: Path, out) -> Path:
    from codecplatform.checkpoints.dac import import_dac

    return import_dac(official_file(folder, seed=3), None, out)


# -- fine-tuning from an imported checkpoint -------------------------------------------------------
def tiny_dac_fit_args(manifests: dict[str, Path]) -> list[str]:
    return [
        "fit",
        "--config",
        str(EXPERIMENTS / "dac" / "44khz.yaml"),
        "--config",
        str(EXPERIMENTS / "tiny" / "dac.yaml"),
        *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
        "--trainer.limit_val_batches=0",
    ]


def test_fit_starts_from_the_imported_codec(make_manifests, in_tmp_dir, mlflow_db, monkeypatch):
    imported = import_dac_tiny(in_tmp_dir, in_tmp_dir / "imported.ckpt")
    _, imported_state = load_codec_state(imported)
    after_setup = []
    original_setup = GANCodecModule.setup

    def recording_setup(self, stage):
        original_setup(self, stage)
        after_setup.append({k: v.detach().clone() for k, v in self.codec.state_dict().items()})

    monkeypatch.setattr(GANCodecModule, "setup", recording_setup)
    manifests = make_manifests(44100, 1)
    cli = cli_main([*tiny_dac_fit_args(manifests), f"--model.init_args.init_codec_from={imported}"])

    assert len(after_setup) == 1
    state = after_setup[0]
    assert state.keys() == imported_state.keys()
    assert all(torch.equal(state[k], imported_state[k]) for k in state)
    module = cli.model
    assert int(module.batch_counter) == 1  # one training batch ran from the imported weights
    trained = module.codec.state_dict()
    assert any(not torch.equal(trained[k], imported_state[k]) for k in trained)


def test_fit_refuses_an_imported_codec_of_another_architecture(make_manifests, in_tmp_dir, mlflow_db):
    source = official_file(in_tmp_dir, seed=1, n_codebooks=2, codebook_size=32)
    from codecplatform.checkpoints.dac import import_dac

    imported = import_dac(source, None, in_tmp_dir / "other.ckpt")
    manifests = make_manifests(44100, 1)
    with pytest.raises(ValueError, match="different architecture") as error:
        cli_main([*tiny_dac_fit_args(manifests), f"--model.init_args.init_codec_from={imported}"])
    message = str(error.value)
    assert "quantizer.layers.2" in message and "codebook.weight (32, 4) (expected (16, 4))" in message
