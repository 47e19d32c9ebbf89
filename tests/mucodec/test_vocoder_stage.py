"""MuCodec vocoder stage: the tiny YAML trains one GAN batch through the CLI (GANStep, MPD + MSD), the
export round-trips through transformers' save_pretrained/from_pretrained and the .ckpt loads; the real
geometry's parameter count."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codecplatform.cli import cli_main
from codecplatform.config import compose_config, instantiate
from codecplatform.mucodec.melvae import MelVAE
from codecplatform.mucodec.vocoder import HifiGanVocoder

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
# Official counts: xuyaoxun/MuCodec@128f91be tools/get_melvaehifigan48k.py, Generator_old built from
# get_vocoder_config_48k() and counted: 190,322,114 with weight norm, 190,281,889 after its remove_weight_norm().
REAL_VOCODER = 190_281_889  # official; weight norm folded in (the saved / inference model)
WEIGHT_NORM_GAINS = 40_225  # official 190,322,114 - 190,281,889: one gain per conv output channel while training


def test_vocoder_stage_trains_and_exports(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(48000, 2, n_files=5)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "mucodec" / "vocoder.yaml"),
            "--config",
            str(EXPERIMENTS / "tiny" / "mucodec_vocoder.yaml"),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            f"--model.init_args.export_dir={in_tmp_dir / 'vocoder'}",
        ]
    )
    module = cli.model
    assert int(module.batch_counter) == 1
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert {"train/g/mel", "train/g/adv", "train/g/feat", "train/d/loss", "val/mel_distance"} <= set(metrics)
    assert any(k.startswith("train/d/mpd") for k in metrics) and any(k.startswith("train/d/msd") for k in metrics)

    x = torch.randn(1, 2, 4800) * 0.1
    mel = module.vocoder.mel(x)
    expected = module.vocoder.eval()(mel)
    assert expected.shape == (1, 2, mel.shape[2] * 480)
    exported = HifiGanVocoder.from_pretrained(in_tmp_dir / "vocoder")  # transformers' files + vocoder.json
    assert (in_tmp_dir / "vocoder" / "config.json").is_file()
    torch.testing.assert_close(exported.eval()(mel), expected)
    from_ckpt = HifiGanVocoder.from_checkpoint(latest_checkpoint(cli.trainer))
    torch.testing.assert_close(from_ckpt.eval()(mel), expected)


def test_vocoder_mel_is_the_melvae_mel():
    vae_args = compose_config(EXPERIMENTS / "tiny" / "mucodec_melvae.yaml")["model"]["init_args"]["vae"]["init_args"]
    vae = MelVAE(**vae_args)
    vocoder = HifiGanVocoder(
        n_mels=64, upsample_initial_channel=64, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]]
    )
    vocoder.check_mel_matches(vae)
    x = torch.randn(1, 2, 9600)
    torch.testing.assert_close(vocoder.mel(x)[:, :, : vae.mel(x).shape[2]], vae.mel(x))
    other = HifiGanVocoder(
        n_mels=64, f_min=0.0, upsample_initial_channel=64, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]]
    )
    with pytest.raises(ValueError, match="f_min"):
        other.check_mel_matches(vae, "vocoder.ckpt")


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="hop_length"):
        HifiGanVocoder(upsample_rates=[6, 5, 4, 2], upsample_kernel_sizes=[12, 10, 8, 4])


def test_real_vocoder_config_parameter_count(capsys):
    config = compose_config(EXPERIMENTS / "mucodec" / "vocoder.yaml")["model"]["init_args"]["vocoder"]
    config = {**config, "init_args": {**config["init_args"], "weight_norm": False}}  # weight norm cannot run on meta
    with torch.device("meta"):
        vocoder = instantiate(config, HifiGanVocoder)
    n = vocoder.num_parameters()["inference"]
    with capsys.disabled():
        print(
            f"\nmucodec/vocoder.yaml: HiFi-GAN {n:,} parameters (+{WEIGHT_NORM_GAINS:,} weight-norm gains in training)"
        )
    assert n == REAL_VOCODER
    hifigan = vocoder.hifigan.config
    assert (hifigan.model_in_dim, hifigan.upsample_initial_channel, hifigan.normalize_before) == (256, 1536, False)
    assert list(hifigan.upsample_rates) == [6, 5, 4, 2, 2]


def test_weight_norm_gain_count():
    v = HifiGanVocoder(
        n_mels=8, upsample_initial_channel=64, resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 3]]
    )
    counts = v.num_parameters()
    # conv_pre 64 + upsamplers (in channels) 64+32+16+8+4 + resblocks 2 kernels x 4 convs x (32+16+8+4+2) + post 1
    assert counts["total"] - counts["inference"] == 64 + 124 + 8 * 62 + 1
