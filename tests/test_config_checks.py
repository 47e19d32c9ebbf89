"""Config mistakes are refused before anything trains, in one line naming the key (issue 27):
dict-valued arguments merge across ``_base_`` files, the sample rate is one setting (every other rate
follows it or is refused), unknown keys come with the file and a close match, missing manifests are
named before MLflow is touched, ``test``/``validate`` need only their manifest, and a checkpoint is
not tested under another codec's config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
NO_DATA = [f"--data.init_args.{split}_cuts=null" for split in ("train", "val", "test")]


def parsed_config(args: list[str]):
    """The parsed fit config of ``args`` (CodecCLI without instantiating anything)."""
    from codecplatform.cli import _codec_cli_class, expand_args

    class ParseOnly(_codec_cli_class()):
        def instantiate_classes(self) -> None:
            pass

    return ParseOnly(args=expand_args(args), run=False).config


def built(args: list[str]):
    from codecplatform.cli import _codec_cli_class, expand_args

    return _codec_cli_class()(args=expand_args([*args, *NO_DATA, "--trainer.logger=false"]), run=False)


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# -- item 2: dicts of named parts merge across _base_ files ----------------------------------------
def test_base_override_of_one_loss_keeps_the_others(tmp_path):
    mel = {"class_path": "codecplatform.losses.reconstruction.MultiScaleMelLoss", "init_args": {"sample_rate": 24000}}
    config = write_yaml(
        tmp_path / "mine.yaml",
        {"_base_": [str(QUICKSTART)], "model": {"init_args": {"reconstruction_losses": {"mel": mel}}}},
    )
    losses = parsed_config(["--config", str(config)])["model.init_args.reconstruction_losses"]
    assert sorted(losses) == ["mel", "time"]
    assert losses["mel"]["init_args"]["n_mels"] == [5, 10, 20, 40, 80, 160, 320]  # same class: arguments merge too


def test_a_part_with_another_class_path_replaces_the_earlier_one_whole():
    from codecplatform.config import merge_config

    base = {"loss": {"class_path": "a.A", "init_args": {"f_min": 64.0, "n": 1}}, "keep": {"x": 1}}
    assert merge_config(base, {"loss": {"class_path": "b.B", "init_args": {"n": 2}}})["loss"] == {
        "class_path": "b.B",
        "init_args": {"n": 2},
    }
    assert merge_config(base, {"loss": {"init_args": {"n": 2}}})["loss"]["init_args"] == {"f_min": 64.0, "n": 2}
    assert merge_config(base, {"keep": {"y": 2}})["keep"] == {"x": 1, "y": 2}


def test_loss_weights_naming_no_loss_is_refused_at_construction():
    from codecplatform.config import compose_config, instantiate
    from codecplatform.lightning.gan_codec import GANCodecModule

    model = compose_config(QUICKSTART)["model"]
    del model["init_args"]["reconstruction_losses"]["time"]
    with pytest.raises(ValueError, match=r"loss_weights names no loss: \['time'\]"):
        instantiate(model, GANCodecModule)


# -- item 1: the sample rate is one setting ------------------------------------------------------------
def test_the_codecs_sample_rate_retargets_data_losses_and_bandwidths():
    cli = built(["--config", str(QUICKSTART), "--model.init_args.codec.init_args.sample_rate=16000"])
    module = cli.model
    assert module.codec.sample_rate == 16000
    assert cli.datamodule.sample_rate == 16000
    assert module.gan.reconstruction_losses["mel"].sample_rate == 16000
    assert module.codec.bandwidths == [1.5, 3.0, 6.0, 12.0]  # the same 1, 2, 4, 8 codebooks at 250 Hz
    assert list(module.evaluation.bitrate_labels.values()) == ["1.5kbps", "3kbps", "6kbps", "12kbps"]


def test_a_data_rate_other_than_the_codecs_is_refused_in_one_line():
    from codecplatform.config import ConfigError

    args = ["--config", str(QUICKSTART), "--model.init_args.codec.init_args.sample_rate=16000"]
    with pytest.raises(ConfigError) as error:
        built([*args, "--data.init_args.sample_rate=24000"])
    message = str(error.value)
    assert "\n" not in message and "24000" in message and "16000" in message
    assert "data.init_args.sample_rate" in message


def test_a_yaml_retargeting_only_the_codec_carries_what_its_bases_wrote_for_their_rate(tmp_path):
    codec_16k = {"model": {"init_args": {"codec": {"init_args": {"sample_rate": 16000}}}}}
    config = write_yaml(tmp_path / "16k.yaml", {"_base_": [str(QUICKSTART)], **codec_16k})
    cli = built(["--config", str(config)])
    assert cli.datamodule.sample_rate == 16000 and cli.model.gan.reconstruction_losses["mel"].sample_rate == 16000
    assert cli.model.codec.bandwidths == [1.5, 3.0, 6.0, 12.0]


def test_a_rate_written_against_the_codecs_is_refused_naming_the_key(tmp_path):
    from codecplatform.config import ConfigError

    mel = {"mel": {"init_args": {"sample_rate": 24000}}}
    codec_16k = {"codec": {"init_args": {"sample_rate": 16000}}, "reconstruction_losses": mel}
    config = write_yaml(tmp_path / "16k.yaml", {"_base_": [str(QUICKSTART)], "model": {"init_args": codec_16k}})
    with pytest.raises(ConfigError, match=r"reconstruction_losses\.mel\.init_args\.sample_rate=24000 .* 16000"):
        built(["--config", str(config)])


def test_the_module_refuses_a_mel_loss_or_metric_for_another_rate():
    from codecplatform.config import compose_config, instantiate
    from codecplatform.lightning.gan_codec import GANCodecModule

    def build(codec_rate: int, mel_rate: int, test_metrics: dict | None = None) -> None:
        model = compose_config(QUICKSTART)["model"]
        model["init_args"]["codec"]["init_args"]["sample_rate"] = codec_rate
        model["init_args"]["reconstruction_losses"]["mel"]["init_args"]["sample_rate"] = mel_rate
        model["init_args"]["test_metrics"] = test_metrics
        instantiate(model, GANCodecModule)

    with pytest.raises(ValueError, match=r"reconstruction_losses\.mel has sample_rate 16000 but the codec's is 24000"):
        build(24000, 16000)
    metric = {"class_path": "codecplatform.metrics.reconstruction.MelDistance", "init_args": {"sample_rate": 16000}}
    with pytest.raises(ValueError, match=r"test_metrics\.mel16 has sample_rate 16000"):
        build(24000, 24000, {"mel16": metric})


# -- item 8: one-line errors, manifests, test needs only its manifest ------------------------------------
def test_a_mistyped_key_names_the_file_and_the_close_match(tmp_path):
    from codecplatform.cli import cli_main
    from codecplatform.config import ConfigError

    config = write_yaml(
        tmp_path / "typo.yaml",
        {"_base_": [str(QUICKSTART)], "model": {"init_args": {"codec": {"init_args": {"sampl_rate": 16000}}}}},
    )
    with pytest.raises(ConfigError) as error:
        cli_main(["fit", "--config", str(config)])
    message = str(error.value)
    assert "\n" not in message
    assert "sampl_rate" in message and str(config) in message and "did you mean sample_rate?" in message
    with pytest.raises(ConfigError, match=r"max_step .*did you mean max_steps\?"):
        cli_main(["fit", "--config", str(QUICKSTART), "--trainer.max_step=3"])
    with pytest.raises(ConfigError, match=r"n_qq .*ResidualVectorQuantizer; did you mean n_q\?"):
        cli_main(["fit", "--config", str(QUICKSTART), "--model.init_args.codec.init_args.quantizer.init_args.n_qq=2"])


def test_the_console_script_prints_one_line(tmp_path, monkeypatch, capsys):
    from codecplatform.cli import main

    monkeypatch.setattr(sys, "argv", ["codecplatform", "fit", "--config", str(QUICKSTART), "--dta.init_args.x=1"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean data?" in err


def test_a_missing_manifest_is_named_before_mlflow_is_touched(in_tmp_dir, make_manifests):
    from codecplatform.cli import cli_main
    from codecplatform.config import ConfigError

    manifests = make_manifests(24000)
    args = ["fit", "--config", str(QUICKSTART), f"--data.init_args.val_cuts={manifests['val']}"]
    with pytest.raises(ConfigError) as error:
        cli_main([*args, "--data.init_args.train_cuts=my_data/cuts_train.jsonl.gz"])
    assert "\n" not in str(error.value)
    assert "data.init_args.train_cuts" in str(error.value) and "my_data/cuts_train.jsonl.gz" in str(error.value)
    assert not (in_tmp_dir / "mlflow.db").exists() and not (in_tmp_dir / "mlruns").exists()


def test_test_needs_only_the_test_manifest(in_tmp_dir, make_manifests):
    from codecplatform.cli import cli_main

    manifests = make_manifests(24000)
    cli = cli_main(
        [
            "test",
            "--config",
            str(QUICKSTART),
            f"--data.init_args.test_cuts={manifests['test']}",
            "--data.init_args.train_cuts=missing/cuts_train.jsonl.gz",
            "--data.init_args.val_cuts=missing/cuts_val.jsonl.gz",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.limit_test_batches=1",
        ]
    )
    assert cli.datamodule.train_cuts is None and cli.datamodule.val_cuts is None
    assert "test/mel_distance" in cli.trainer.callback_metrics


# -- item 3: a checkpoint is tested with its own codec config ------------------------------------------
def test_a_checkpoint_of_another_sample_rate_is_refused(in_tmp_dir, make_manifests):
    import torch

    from codecplatform.cli import cli_main
    from codecplatform.config import ConfigError, compose_config

    codec = compose_config(QUICKSTART)["model"]["init_args"]["codec"]
    codec["init_args"]["sample_rate"] = 16000
    checkpoint = in_tmp_dir / "16k.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"codec": codec}, "codec_config": codec}, checkpoint)
    manifests = make_manifests(24000)
    with pytest.raises(ConfigError) as error:
        cli_main(
            [
                "test",
                "--config",
                str(QUICKSTART),
                f"--data.init_args.test_cuts={manifests['test']}",
                f"--ckpt_path={checkpoint}",
                "--trainer.logger=false",
            ]
        )
    message = str(error.value)
    assert "\n" not in message and "sample_rate 16000" in message and "24000" in message


def test_upsampled_test_data_is_warned_about_with_the_source_rates(make_manifests):
    from types import SimpleNamespace

    from codecplatform.lightning.base import warn_upsampled

    low = make_manifests(16000)
    with pytest.warns(
        UserWarning, match=r"test_cuts: 1 of 1 recordings come from source rates below the 24000 Hz .*16000 Hz: 1"
    ):
        warn_upsampled(SimpleNamespace(test_cuts=str(low["test"])), "test", 24000)
    same = make_manifests(24000)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_upsampled(SimpleNamespace(test_cuts=str(same["test"])), "test", 24000)


def test_a_wrong_value_is_one_line_naming_the_key():
    from codecplatform.cli import cli_main
    from codecplatform.config import ConfigError

    with pytest.raises(ConfigError) as error:
        cli_main(["fit", "--config", str(QUICKSTART), "--model.init_args.codec.init_args.sample_rate=abc", *NO_DATA])
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("model.init_args.codec.init_args.sample_rate: Expected a <class 'int'>")
    with pytest.raises(ConfigError, match=r"^data\.init_args\.batch_size: Expected a <class 'int'> \(given: \[1\]\)$"):
        cli_main(["fit", "--config", str(QUICKSTART), "--data.init_args.batch_size=[1]", *NO_DATA])


def test_a_missing_checkpoint_is_one_line(in_tmp_dir, make_manifests):
    from codecplatform.cli import cli_main
    from codecplatform.config import ConfigError

    manifests = make_manifests(24000)
    test_cuts = f"--data.init_args.test_cuts={manifests['test']}"
    with pytest.raises(ConfigError, match=r"^--ckpt_path outputs/nothing\.ckpt: no such checkpoint file$"):
        cli_main(["test", "--config", str(QUICKSTART), test_cuts, "--ckpt_path=outputs/nothing.ckpt"])
    assert not (in_tmp_dir / "mlflow.db").exists()
