"""The one checkpoint reader (codecplatform/checkpoints/io.py): its one-line errors, every loader of
the package refusing a pickle that would run code, and no other ``torch.load`` in the source."""

from __future__ import annotations

import ast
import pathlib
import re
from pathlib import Path

import pytest
import torch

from codecplatform.checkpoints.io import CheckpointError, CheckpointNotFoundError, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
SCANNED = ("codecplatform", "datamodules", "callbacks", "benchmarks")
READER = ROOT / "codecplatform" / "checkpoints" / "io.py"


class TouchesMarker:
    """A pickle payload: unpickling it creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def plant(path: Path, content: dict, marker: Path) -> Path:
    """Write ``content`` (a plausible checkpoint) plus a payload that would create ``marker``."""
    torch.save({**content, "payload": TouchesMarker(marker)}, path)
    return path


def assert_refused(error: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    assert "weights_only=True" in message and "refuses it" in message, message
    assert "Unsupported global" in message, message  # torch's reason, on the same line
    assert not marker.exists()


# -- the reader's errors -----------------------------------------------------------------------------
def test_the_payload_is_live(tmp_path):
    """The planted files below would run code if read without weights_only: the refusals matter."""
    marker = tmp_path / "ran"
    path = plant(tmp_path / "x.ckpt", {"state_dict": {}}, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_read_checkpoint_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=f"thing not found: {tmp_path / 'nowhere.ckpt'}$"):
        read_checkpoint(tmp_path / "nowhere.ckpt", "thing")
    with pytest.raises(FileNotFoundError, match="^train it first$"):  # also a FileNotFoundError, own message
        read_checkpoint(tmp_path / "nowhere.ckpt", "thing", missing="train it first")

    marker = tmp_path / "ran"
    planted = plant(tmp_path / "planted.ckpt", {"state_dict": {"w": torch.zeros(2)}}, marker)
    with pytest.raises(CheckpointError, match=f"^{planted} is not a thing: torch.load\\(weights_only=True\\)") as error:
        read_checkpoint(planted, "thing")
    assert_refused(error, planted, marker)
    assert "Unsupported global: GLOBAL getattr" in str(error.value)  # torch's reason, not its advice
    assert "weights_only=False" not in str(error.value) and "will likely succeed" not in str(error.value)

    for name, content in (("text.ckpt", b"hello\n"), ("empty.ckpt", b""), ("zip.ckpt", b"PK\x03\x04 truncated")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"^{tmp_path / name} is not a thing: torch.load cannot read it") as error:
            read_checkpoint(tmp_path / name, "thing")
        assert "\n" not in str(error.value)

    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match="list.ckpt is not a thing: it holds a list, not a dict$"):
        read_checkpoint(tmp_path / "list.ckpt", "thing")

    torch.save({"state_dict": [1], "other": 1}, tmp_path / "kind.ckpt")
    with pytest.raises(CheckpointError, match="kind.ckpt is not a thing: it has no 'config'$"):
        read_checkpoint(tmp_path / "kind.ckpt", "thing", required={"state_dict": list, "config": dict})
    with pytest.raises(CheckpointError, match="kind.ckpt is not a thing: its 'state_dict' is a list, not a dict$"):
        read_checkpoint(tmp_path / "kind.ckpt", "thing", required={"state_dict": dict})
    assert read_checkpoint(tmp_path / "kind.ckpt", "thing", required={"state_dict": (list, dict)})["other"] == 1


# -- every loader refuses a planted pickle -------------------------------------------------------------
def _codec_content() -> dict:
    return {
        "codec_config": {"class_path": "codecplatform.models.codec.Codec"},
        "state_dict": {"codec.w": torch.ones(1)},
    }


@pytest.fixture(scope="module")
def mucodec_parts():
    """The parts of the tiny MuCodec (experiments/tiny/mucodec_codec.yaml), built without stage files."""
    from codecplatform.config import compose_config, instantiate, merge_config
    from codecplatform.mucodec.flow import FlowMatchingDiT
    from codecplatform.mucodec.melvae import MelVAE
    from codecplatform.mucodec.tokenizer import MuCodecTokenizer
    from codecplatform.mucodec.vocoder import HifiGanVocoder

    merged = merge_config(
        compose_config(EXPERIMENTS / "mucodec" / "codec_1x16384.yaml"),
        compose_config(EXPERIMENTS / "tiny" / "mucodec_codec.yaml"),
    )
    args = merged["model"]["init_args"]["codec"]["init_args"]
    kinds = {"tokenizer": MuCodecTokenizer, "flow": FlowMatchingDiT, "vocoder": HifiGanVocoder, "melvae": MelVAE}
    return {name: instantiate(args[name], kind) for name, kind in kinds.items()}


def test_codec_loaders_refuse_a_planted_pickle(tmp_path):
    from codecplatform.checkpoints.io import load_codec_state
    from codecplatform.models.base import AudioCodec
    from codecplatform.models.codec import Codec

    marker = tmp_path / "ran"
    path = plant(tmp_path / "codec.ckpt", _codec_content(), marker)
    for load in (Codec.from_checkpoint, AudioCodec.from_checkpoint, load_codec_state):
        with pytest.raises(ValueError, match=f"^{path} is not a codec checkpoint: ") as error:
            load(path)
        assert_refused(error, path, marker)


def test_code_lm_loader_refuses_a_planted_pickle(tmp_path):
    from codecplatform.models.code_lm import CodeLM

    marker = tmp_path / "ran"
    content = {"lm_config": {"n_q": 2, "card": 4, "dim": 8}, "state_dict": {"lm.w": torch.ones(1)}}
    path = plant(tmp_path / "lm.ckpt", content, marker)
    with pytest.raises(ValueError, match=f"^{path} is not a code LM checkpoint: ") as error:
        CodeLM.from_checkpoint(path)
    assert_refused(error, path, marker)


def test_official_weights_reader_refuses_a_planted_pickle(tmp_path):
    from codecplatform.checkpoints.keymap import load_weights_file

    marker = tmp_path / "ran"
    path = plant(tmp_path / "weights.pth", {"state_dict": {"w": torch.ones(1)}, "metadata": {}}, marker)
    with pytest.raises(ValueError, match=f"^{path} is not a DAC weights file: ") as error:
        load_weights_file(path, "DAC")
    assert_refused(error, path, marker)


def test_mucodec_stage_loaders_refuse_a_planted_pickle(tmp_path, mucodec_parts):
    from codecplatform.mucodec.codec import MuCodec
    from codecplatform.mucodec.flow import TokenizerCodeSource
    from codecplatform.mucodec.melvae import CHECKPOINT_CONFIG_KEY as MELVAE_CONFIG
    from codecplatform.mucodec.melvae import MelVAE
    from codecplatform.mucodec.muencoder import load_muencoder_state
    from codecplatform.mucodec.stages.flow import load_frozen_melvae
    from codecplatform.mucodec.vocoder import CHECKPOINT_CONFIG_KEY as VOCODER_CONFIG
    from codecplatform.mucodec.vocoder import HifiGanVocoder

    tokenizer = mucodec_parts["tokenizer"]
    weights = {"state_dict": {"w.weight": torch.ones(1)}}
    stage_content = {
        "muencoder": {"state_dict": {"encoder.w": torch.ones(1)}},
        "tokenizer": {"state_dict": {"tokenizer.w": torch.ones(1)}},
        "melvae": {**weights, MELVAE_CONFIG: {"sample_rate": 48000}},
        "flow": {"state_dict": {"flow.w": torch.ones(1)}, MELVAE_CONFIG: {"sample_rate": 48000}},
        "vocoder": {"state_dict": {"vocoder.w": torch.ones(1)}, VOCODER_CONFIG: {"n_mels": 256}},
    }

    def mucodec_with(**stage):  # MuCodec reading one stage file: the refusal comes before any weight is set
        return lambda _: MuCodec(**mucodec_parts, **{k: str(v) for k, v in stage.items()}, require_checkpoints=False)

    loaders = [
        ("muencoder", "MuEncoder checkpoint", lambda p: load_muencoder_state(p, tokenizer.encoder)),
        ("tokenizer", "MuCodec stage checkpoint", None),  # MuCodec(tokenizer_checkpoint=...)
        ("tokenizer", "tokenizer checkpoint", lambda p: TokenizerCodeSource(tokenizer, str(p))),
        ("melvae", "Mel-VAE or flow stage checkpoint", MelVAE.from_checkpoint),
        ("melvae", "Mel-VAE or flow stage checkpoint", lambda p: load_frozen_melvae(str(p), None)),
        ("flow", "MuCodec stage checkpoint", None),  # MuCodec(flow_checkpoint=...)
        ("flow", "Mel-VAE or flow stage checkpoint", MelVAE.from_checkpoint),
        ("vocoder", "vocoder stage checkpoint", HifiGanVocoder.from_checkpoint),
        ("vocoder", "MuCodec stage checkpoint", None),  # MuCodec(vocoder_checkpoint=...)
    ]
    for i, (stage, what, load) in enumerate(loaders):
        marker = tmp_path / f"ran_{i}"
        path = plant(tmp_path / f"{stage}_{i}.ckpt", stage_content[stage], marker)
        load = load or mucodec_with(**{f"{stage}_checkpoint": path})
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))} is not a {what}") as error:
            load(path)
        assert_refused(error, path, marker)


# -- no other torch.load in the source -----------------------------------------------------------------
def checkpoint_reading_outside_the_reader(source: str) -> list[str]:
    """What in ``source`` reads a pickle other than through read_checkpoint: ``torch.load`` (also
    as ``torch.serialization.load`` or imported by name) and any ``weights_only=False``."""
    lines = enumerate(source.splitlines(), 1)
    found = [(i, "weights_only=False") for i, line in lines if re.search(r"weights_only\s*=\s*False", line)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "load":
            owner = ast.unparse(node.value)
            if owner in ("torch", "torch.serialization"):
                found.append((node.lineno, f"{owner}.load"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            if any(alias.name == "load" for alias in node.names):
                found.append((node.lineno, f"from {node.module} import load"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def test_the_scan_finds_what_it_looks_for():
    sample = "import torch\nfrom torch.serialization import load\nx = torch.load(p)\ny = f(weights_only=False)\n"
    assert checkpoint_reading_outside_the_reader(sample) == [
        "line 2: from torch.serialization import load",
        "line 3: torch.load",
        "line 4: weights_only=False",
    ]
    assert checkpoint_reading_outside_the_reader('"""Read with ``torch.load(weights_only=True)``."""\n') == []


def test_only_the_reader_calls_torch_load():
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    assert READER in files and len(files) > 50
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in files
        if path != READER and (found := checkpoint_reading_outside_the_reader(path.read_text()))
    }
    assert offenders == {}, f"read checkpoints with codecplatform.checkpoints.io.read_checkpoint: {offenders}"
    calls = [
        node
        for node in ast.walk(ast.parse(READER.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
    ]
    assert len(calls) == 1, "the reader calls torch.load once"
    weights_only = {k.arg: k.value for k in calls[0].keywords}.get("weights_only")
    assert isinstance(weights_only, ast.Constant) and weights_only.value is True
