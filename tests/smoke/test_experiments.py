"""Every experiment YAML parses, builds, and trains one batch with its family's tiny override;
the real (full-size) configs build and report their parameter counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from codecplatform.cli import CodecCLI, cli_main
from codecplatform.config import compose_config, expand_config
from codecplatform.lightning.gan_codec import GANCodecModule

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def data_args(manifests: dict[str, Path]) -> list[str]:
    return [f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()]


def experiment_files() -> list[Path]:
    skip = {"_base", "tiny", "launch", "code_lm"}  # code_lm needs a codec checkpoint: tests/entropy
    return sorted(
        p
        for p in EXPERIMENTS.rglob("*.yaml")
        if not skip & set(p.relative_to(EXPERIMENTS).parts) and not p.name.startswith("_")
    )


def test_there_are_experiments():
    names = {str(p.relative_to(EXPERIMENTS)) for p in experiment_files()}
    assert {"encodec/24khz_mono.yaml", "encodec/48khz_stereo.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("config", experiment_files(), ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_trains_one_batch_with_tiny_override(config, make_manifests, mlflow_db):
    # mlflow_db: the working directory holds an empty mlflow.db, which the configs' logger fills
    merged = compose_config(config)
    family = merged["trainer"]["logger"]["init_args"]["tags"]["family"]
    tiny = EXPERIMENTS / "tiny" / f"{family}.yaml"
    assert tiny.is_file(), f"no tiny override for family {family!r}: add {tiny}"
    data = merged["data"]["init_args"]
    manifests = make_manifests(data["sample_rate"], data["channels"], n_files=5)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--config",
            str(tiny),
            *data_args(manifests),
            "--model.init_args.max_batches=1",
        ]
    )
    module = cli.model
    assert int(module.batch_counter) == 1
    assert all(math.isfinite(float(v)) for k, v in cli.trainer.callback_metrics.items())
    # what the config's checkpointing monitors was measured (GAN codecs: val/mel_distance; MuCodec
    # stages that make no audio monitor their own losses)
    monitors = [cb.monitor for cb in cli.trainer.checkpoint_callbacks if cb.monitor]
    assert monitors and all(m in cli.trainer.callback_metrics for m in monitors)
    if isinstance(module, GANCodecModule):
        assert "val/mel_distance" in cli.trainer.callback_metrics


REAL_COUNTS = {
    # SEANet encoder + decoder (EMA codebooks are buffers, not parameters), MS-STFT discriminator:
    # 472,490 per copy, one copy per bandwidth (1.5, 3, 6, 12, 24 kbps; discriminator_per_bandwidth).
    "encodec/24khz_mono.yaml": (14_851_810, 5 * 472_490),
    "encodec/48khz_stereo.yaml": (14_856_294, None),
    # DAC encoder + decoder + factorized quantizer (weight-normed projections), MPD + MRD.
    "dac/44khz.yaml": (76_651_890, 42_519_760),
    "dac/24khz.yaml": (74_708_706, None),
    "dac/16khz.yaml": (74_175_906, None),
    # SpectroStream 2D encoder + decoder (64 x 1024 EMA codebooks of 256-d are buffers: 16,777,216
    # entries), 2D multi-scale STFT discriminator (sizes NOT FOUND in the paper: config values).
    "spectrostream/48khz_stereo.yaml": (44_955_970, 3_660_965),
    # MUFFIN encoder + decoder (EMA codebooks of 512-d are buffers), MPD + MSD + MS-STFT.
    "muffin/75hz.yaml": (34_185_344 + 11_852_802, None),
    "muffin/25hz.yaml": (34_379_904 + 12_047_362, None),
    "muffin/12_5hz.yaml": (36_477_056 + 14_144_514, None),
    "muffin/6_25hz.yaml": (36_741_248 + 14_408_706, None),
}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_config_builds_and_reports_parameter_counts(name, in_tmp_dir, capsys):
    no_data = [f"--data.init_args.{split}_cuts=null" for split in ("train", "val", "test")]
    cli = CodecCLI(args=["--config", *_expanded(EXPERIMENTS / name), "--trainer.logger=false", *no_data], run=False)
    counts = cli.model.codec.num_parameters()
    discriminator = sum(p.numel() for p in cli.model.gan.discriminator.parameters())
    codebooks = sum(b.numel() for n, b in cli.model.codec.quantizer.named_buffers() if n.endswith(".embed"))
    codebooks += sum(
        p.numel() for n, p in cli.model.codec.quantizer.named_parameters() if n.endswith("codebook.weight")
    )
    with capsys.disabled():
        print(
            f"\n{name}: encoder {counts['encoder']:,} decoder {counts['decoder']:,} "
            f"codec {counts['total']:,} codebook entries x dim {codebooks:,} discriminator {discriminator:,}"
        )
    generator, disc = REAL_COUNTS[name]
    assert counts["total"] == generator
    if disc is not None:
        assert discriminator == disc


def _expanded(path: Path) -> list[str]:
    items = expand_config(path)
    out = [items[0]]
    for item in items[1:]:
        out += ["--config", item]
    return out
