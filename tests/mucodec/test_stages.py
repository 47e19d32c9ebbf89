"""MuCodec Mel-VAE and flow stages through the CLI with their tiny YAMLs, chained by checkpoint paths;
clear errors for a missing or mismatched stage checkpoint; the real YAMLs' sizes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codecplatform.cli import CodecCLI, cli_main
from codecplatform.config import compose_config, expand_config, instantiate
from codecplatform.mucodec.flow import FlowMatchingDiT, RandomProjectionCodeSource
from codecplatform.mucodec.melvae import MelVAE
from codecplatform.mucodec.stages.flow import FlowModule
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def fit(stage: str, manifests: dict[str, Path], *extra: str):
    return cli_main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "mucodec" / f"{stage}.yaml"),
            "--config",
            str(EXPERIMENTS / "tiny" / f"mucodec_{stage}.yaml"),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            *extra,
        ]
    )


def finite_metrics(cli) -> dict[str, float]:
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    return metrics


def test_melvae_then_flow_chained_by_checkpoint_path(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(48000, 2, n_files=5)
    melvae = fit(
        "melvae",
        manifests,
        f"--model.init_args.export_dir={in_tmp_dir / 'melvae'}",
        "--trainer.default_root_dir=stage1",
    )
    assert int(melvae.model.batch_counter) == 1
    assert {"train/g/mel", "train/g/kl", "val/mel_distance"} <= set(finite_metrics(melvae))
    exported = MelVAE.from_pretrained(in_tmp_dir / "melvae")
    assert exported.config() == melvae.model.vae.config()
    checkpoint = latest_checkpoint(melvae.trainer)
    assert MelVAE.from_checkpoint(checkpoint).config() == exported.config()  # the .ckpt chains too

    flow = fit(
        "flow",
        manifests,
        f"--model.init_args.melvae_checkpoint={in_tmp_dir / 'melvae'}",
        "--trainer.default_root_dir=stage2",
    )
    module = flow.model
    assert int(module.batch_counter) == 1
    assert {"train/flow", "val/flow", "val/mel_distance"} <= set(finite_metrics(flow))
    for a, b in zip(module.melvae.vae.parameters(), exported.vae.parameters()):  # stage 1's weights, frozen
        torch.testing.assert_close(a, b)
        assert not a.requires_grad
    # the latent statistics were collected from the training batch and are in the flow checkpoint
    assert int(module.melvae.normalizer.count) == 2
    state = torch.load(latest_checkpoint(flow.trainer), map_location="cpu", weights_only=False)
    assert int(state["state_dict"]["melvae.normalizer.count"]) == 2
    assert not any(k.startswith("code_source.") for k in state["state_dict"])  # deterministic, not saved
    with_stats = MelVAE.from_checkpoint(latest_checkpoint(flow.trainer))
    assert int(with_stats.normalizer.count) == 2


def test_melvae_recipe_trains_the_vae_and_its_discriminator(make_manifests, in_tmp_dir):
    """The recipe's adversarial term (PatchGAN, hinge, adaptive weight; from batch 25000, here from 0):
    a batch steps both networks, logs the adversarial loss and its adaptive weight."""
    recipe = compose_config(EXPERIMENTS / "mucodec" / "melvae.yaml")["model"]["init_args"]
    assert recipe["discriminators"][0]["class_path"].endswith("MelPatchDiscriminator")
    assert recipe["discriminator_schedule"]["init_args"]["start_step"] == 25000
    assert recipe["loss_weights"]["adv"] == 0.5 and recipe["balancer"]["class_path"].endswith(
        "AdaptiveAdversarialWeight"
    )
    manifests = make_manifests(48000, 2, n_files=5)
    configs = (EXPERIMENTS / "mucodec" / "melvae.yaml", EXPERIMENTS / "tiny" / "mucodec_melvae.yaml")
    args = [a for config in configs for item in expand_config(config) for a in ("--config", item)]
    args.append("--trainer.logger=false")
    args += [f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()]
    cli = CodecCLI(args=[*args, "--model.init_args.discriminator_schedule.init_args.start_step=0"], run=False)
    module = cli.model
    before = {
        "vae": [p.detach().clone() for p in module.vae.parameters()],
        "discriminator": [p.detach().clone() for p in module.gan.discriminator.parameters()],
    }
    cli.trainer.fit(module, datamodule=cli.datamodule)
    assert int(module.batch_counter) == 1
    metrics = finite_metrics(cli)
    assert {"train/g/adv", "train/g/kl", "train/d/loss", "train/balancer/adv", "val/mel_distance"} <= set(metrics)
    assert metrics["train/balancer/adv"] > 0  # the adaptive weight of adv
    for name, params in (("vae", module.vae.parameters()), ("discriminator", module.gan.discriminator.parameters())):
        assert any(not torch.equal(a, b) for a, b in zip(before[name], params)), f"the {name} did not change"
    d_opt = cli.trainer.optimizers[1]
    assert type(d_opt) is torch.optim.Adam and d_opt.defaults["betas"] == (0.5, 0.9)


def test_flow_trains_on_a_random_tiny_vae_without_stage_files(make_manifests, in_tmp_dir):
    """The smoke-test scheme: tiny/mucodec_flow.yaml sets melvae_checkpoint null + a tiny melvae."""
    manifests = make_manifests(48000, 2, n_files=5)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        cli = fit("flow", manifests)
    assert int(cli.model.batch_counter) == 1
    assert "val/mel_distance" in finite_metrics(cli)
    # generation from codes of any length, in windows (8 codes, hop 6), to a log-mel
    codes = torch.randint(0, 16, (1, 1, 19))
    mel = cli.model.codes_to_mel(codes, num_steps=2)
    assert mel.shape == (1, 2, math.ceil(19 / 2) * 8, 64)


def tiny_parts(latent_channels: int = 8):
    config = compose_config(EXPERIMENTS / "tiny" / "mucodec_flow.yaml")["model"]["init_args"]
    flow = FlowMatchingDiT(
        **{
            **config["flow"]["init_args"],
            "quantizer": FactorizedResidualVectorQuantizer(
                n_q=1, **config["flow"]["init_args"]["quantizer"]["init_args"]
            ),
            "latent_channels": latent_channels,
            "transformer": {
                **config["flow"]["init_args"]["transformer"],
                "in_channels": 3 * latent_channels,
                "out_channels": latent_channels,
            },
        }
    )
    source = RandomProjectionCodeSource(**config["code_source"]["init_args"])
    return flow, source, config["melvae"]["init_args"]


def test_missing_melvae_checkpoint_names_the_field_and_file(tmp_path):
    flow, source, _ = tiny_parts()
    with pytest.raises(FileNotFoundError, match=r"melvae_checkpoint=.*nowhere"):
        FlowModule(flow, source, melvae_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="melvae_checkpoint is null"):
        FlowModule(flow, source)


def test_melvae_checkpoint_of_another_geometry_is_refused(tmp_path):
    flow, source, vae_args = tiny_parts()
    other = MelVAE(**{**vae_args, "latent_channels": 2}).save_pretrained(tmp_path / "other")
    with pytest.raises(
        ValueError,
        match=r"other: Mel-VAE latent channels .* = 4 but model.init_args.flow.init_args.latent_channels = 8",
    ):
        FlowModule(flow, source, melvae_checkpoint=str(other))
    with pytest.raises(ValueError, match="differs from model.init_args.melvae"):
        FlowModule(flow, source, melvae_checkpoint=str(other), melvae=MelVAE(**vae_args))
    fast = MelVAE(**{**vae_args, "hop_length": 240})  # 25 Hz latents: 50 Hz codes needed
    with pytest.raises(ValueError, match="latent rate"):
        FlowModule(flow, source, melvae_checkpoint=str(fast.save_pretrained(tmp_path / "fast")))


def test_real_melvae_config_builds(capsys):
    config = compose_config(EXPERIMENTS / "mucodec" / "melvae.yaml")
    with torch.device("meta"):
        vae = instantiate(config["model"]["init_args"]["vae"], MelVAE)
    n = sum(p.numel() for p in vae.parameters())
    with capsys.disabled():
        print(
            f"\nmucodec/melvae.yaml: Mel-VAE {n:,} parameters, latent {vae.stacked_channels} x "
            f"{vae.latent_rate:g} Hz x {vae.latent_bins} bins"
        )
    assert n == 223_535_569
    assert (vae.stacked_channels, vae.latent_rate, vae.latent_bins) == (32, 12.5, 32)
    assert (
        config["model"]["init_args"]["export_dir"]
        == compose_config(EXPERIMENTS / "mucodec" / "flow.yaml")["model"]["init_args"]["melvae_checkpoint"]
    )  # the stages are chained by this path


def test_flow_quantizer_starts_as_the_tokenizers_and_a_frozen_one_is_not_optimized():
    from torch import nn

    from codecplatform.mucodec.flow import TokenizerCodeSource

    flow, _, vae_args = tiny_parts()

    class Tokenizer(nn.Module):
        sample_rate, frame_rate, codebook_sizes = 24000, 25.0, [16]

        def __init__(self):
            super().__init__()
            self.quantizer = FactorizedResidualVectorQuantizer(dimension=16, n_q=1, codebook_size=16, codebook_dim=4)

        def encode(self, x):
            raise NotImplementedError

    source = TokenizerCodeSource(Tokenizer())
    with pytest.warns(UserWarning, match="RANDOM weights"):
        module = FlowModule(flow, source, melvae=MelVAE(**vae_args))
    for name, value in source.tokenizer.quantizer.state_dict().items():
        torch.testing.assert_close(module.flow.quantizer.state_dict()[name], value)
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert id(module.flow.quantizer.layers[0].codebook.weight) in optimized
    frozen, _, _ = tiny_parts()
    frozen = FlowMatchingDiT(
        frozen.transformer.config,
        FactorizedResidualVectorQuantizer(16, 1, 16, 4),
        train_quantizer=False,
        latent_channels=8,
        latent_bins=8,
    )
    with pytest.warns(UserWarning, match="RANDOM weights"):
        module = FlowModule(frozen, source, melvae=MelVAE(**vae_args))
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in module.flow.quantizer.parameters()}
