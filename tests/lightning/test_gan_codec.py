"""GANCodecModule: the manual-optimization contract.

Both optimizers step, the discriminator gets no generator gradients (and vice versa), the
discriminator schedule is deterministic, non-finite steps are skipped without touching weights,
clipping acts on true (unscaled) gradients, validation changes nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from codecplatform.discriminators.msstft import MultiScaleSTFTDiscriminator
from codecplatform.generators.seanet import SEANetDecoder, SEANetEncoder
from codecplatform.lightning.gan_codec import GANCodecModule
from codecplatform.lightning.schedule import DiscriminatorSchedule
from codecplatform.losses.adversarial import HingeGANLoss
from codecplatform.losses.balancer import Balancer
from codecplatform.losses.reconstruction import MultiScaleMelLoss, TimeL1Loss
from codecplatform.models.codec import Codec
from codecplatform.quantizers.dropout import PerBatchChoice
from codecplatform.quantizers.ema_residual import ResidualVectorQuantizer

SR = 8000


class NoiseAudio(Dataset):
    """Deterministic (C, T) clips: a few sines plus noise."""

    def __init__(self, n: int = 16, channels: int = 1, length: int = 2048):
        g = torch.Generator().manual_seed(0)
        t = torch.arange(length) / SR
        freqs = torch.rand(n, 3, generator=g) * 2000 + 100
        clean = torch.sin(2 * math.pi * freqs[..., None] * t).sum(1, keepdim=True) / 3
        self.x = (0.5 * clean + 0.05 * torch.randn(n, 1, length, generator=g)).repeat(1, channels, 1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def tiny_codec() -> Codec:
    kw = dict(channels=1, dimension=8, n_filters=4, ratios=[4, 2], lstm_layers=1)
    return Codec(
        SEANetEncoder(**kw),
        ResidualVectorQuantizer(dimension=8, n_q=2, codebook_size=16, kmeans_iters=2, dropout=PerBatchChoice()),
        SEANetDecoder(**kw),
        sample_rate=SR,
    )


def tiny_module(**overrides) -> GANCodecModule:
    kwargs = dict(
        codec=tiny_codec(),
        discriminators=[MultiScaleSTFTDiscriminator(filters=4, n_ffts=[128, 64])],
        reconstruction_losses={
            "time": TimeL1Loss(),
            "mel": MultiScaleMelLoss(SR, window_lengths=[64, 128], n_mels=[16, 16]),
        },
        loss_weights={"time": 0.1, "mel": 1.0, "adv": 3.0, "feat": 3.0, "commit": 1.0},
    )
    kwargs.update(overrides)
    return GANCodecModule(**kwargs)


def fit(
    module: GANCodecModule,
    batches: int = 1,
    precision: str = "32-true",
    callbacks=(),
    examples: int = 16,
    **trainer_kwargs,
) -> Trainer:
    """Fits ``module`` on CPU for ``batches`` batches of 4 of ``examples`` NoiseAudio clips (no logger,
    no checkpoints, no validation unless ``trainer_kwargs`` say otherwise)."""
    kwargs = dict(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer = Trainer(**{**kwargs, **trainer_kwargs})
    trainer.fit(module, DataLoader(NoiseAudio(n=examples), batch_size=4))
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if v.is_floating_point())


def count_gradient_events(module: torch.nn.Module) -> list[int]:
    events = [0]

    def hook(grad):
        events[0] += 1
        return grad

    for p in module.parameters():
        p.register_hook(hook)
    return events


def test_one_batch_steps_both_optimizers_and_keeps_gradients_apart():
    torch.manual_seed(0)
    module = tiny_module()
    g_before, d_before = snapshot(module.codec), snapshot(module.gan.discriminator)
    d_param_count = len(list(module.gan.discriminator.parameters()))
    g_param_count = len(list(module.codec.parameters()))
    d_events, g_events = count_gradient_events(module.gan.discriminator), count_gradient_events(module.codec)
    trainer = fit(module, batches=1)

    assert changed(g_before, module.codec) and changed(d_before, module.gan.discriminator)
    g_opt, d_opt = (o.optimizer for o in module.optimizers())
    assert all(g_opt.state[p]["step"] == 1 for p in module.codec.parameters() if p in g_opt.state)
    assert all(d_opt.state[p]["step"] == 1 for p in module.gan.discriminator.parameters())
    # each discriminator parameter received a gradient once (its own step), never from the
    # generator loss; each generator parameter once (its step), never from the discriminator loss
    assert d_events[0] == d_param_count
    assert g_events[0] == g_param_count
    assert int(module.batch_counter) == 1
    assert trainer.global_step == 2  # optimizer steps: one generator + one discriminator


def test_discriminator_schedule_is_followed_exactly():
    torch.manual_seed(0)
    schedule = DiscriminatorSchedule(start_step=1, period=1, probability=0.5, seed=11)
    module = tiny_module(discriminator_schedule=schedule)
    d_steps: list[int] = []
    d_opt_hook = lambda opt, args, kwargs: d_steps.append(int(module.batch_counter))  # noqa: E731
    module.configure_optimizers_original = module.configure_optimizers

    def configure():
        opts, scheds = module.configure_optimizers_original()
        opts[1].register_step_pre_hook(d_opt_hook)
        return opts, scheds

    module.configure_optimizers = configure
    fit(module, batches=4)
    expected = [i for i in range(4) if schedule.should_update(i)]
    assert d_steps == expected
    assert 0 not in d_steps  # before start_step


def test_nan_generator_loss_skips_the_step_and_keeps_weights():
    class NaNLoss(torch.nn.Module):
        def forward(self, x, x_hat):
            return (x_hat * float("nan")).mean()

    torch.manual_seed(0)
    module = tiny_module(
        reconstruction_losses={"time": TimeL1Loss(), "bad": NaNLoss()},
        loss_weights={"time": 1.0, "bad": 1.0, "adv": 1.0, "feat": 1.0, "commit": 1.0},
    )
    params_before = {k: v.clone() for k, v in module.codec.named_parameters()}
    d_before = snapshot(module.gan.discriminator)
    fit(module, batches=1)
    for name, p in module.codec.named_parameters():
        assert torch.equal(p, params_before[name]), f"{name} changed after a non-finite step"
        assert torch.isfinite(p).all()
    assert module.gan.skipped_steps.tolist() == [1, 0]
    assert changed(d_before, module.gan.discriminator)  # the discriminator step was fine


def test_nan_discriminator_loss_skips_only_the_discriminator():
    class NaNHinge(HingeGANLoss):
        def discriminator_loss(self, real_logits, fake_logits):
            total, per = super().discriminator_loss(real_logits, fake_logits)
            return total * float("nan"), per

    torch.manual_seed(0)
    module = tiny_module(gan_loss=NaNHinge())
    d_before = snapshot(module.gan.discriminator)
    g_before = snapshot(module.codec)
    fit(module, batches=1)
    assert not changed(d_before, module.gan.discriminator)
    assert changed(g_before, module.codec)
    assert module.gan.skipped_steps.tolist() == [0, 1]


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    lr, clip = 1.0, 1e-4
    sgd = lambda params: torch.optim.SGD(params, lr=lr)  # noqa: E731
    module = tiny_module(
        generator_optimizer=sgd, discriminator_optimizer=sgd, generator_grad_clip=clip, discriminator_grad_clip=clip
    )
    g_before = {k: v.clone() for k, v in module.codec.named_parameters()}
    d_before = {k: v.clone() for k, v in module.gan.discriminator.named_parameters()}
    fit(module, batches=1)
    g_step = torch.sqrt(sum((p - g_before[k]).pow(2).sum() for k, p in module.codec.named_parameters()))
    d_step = torch.sqrt(sum((p - d_before[k]).pow(2).sum() for k, p in module.gan.discriminator.named_parameters()))
    assert 0 < g_step <= lr * clip * 1.001
    assert 0 < d_step <= lr * clip * 1.001
    assert module.gan.grad_norms[0] > clip  # the unclipped norm was larger: clipping acted


def test_balancer_path_trains_and_balancer_state_is_in_the_checkpoint():
    torch.manual_seed(0)
    module = tiny_module(balancer=Balancer())
    g_before = snapshot(module.codec)
    fit(module, batches=2)
    assert changed(g_before, module.codec)
    extra = module.gan.balancer.get_extra_state()
    assert set(extra) == {"time", "mel", "adv", "feat"}
    assert any(k.startswith("gan.balancer.") for k in module.state_dict())


def test_bf16_mixed_precision_batch_is_finite():
    torch.manual_seed(0)
    module = tiny_module(balancer=Balancer())
    fit(module, batches=2, precision="bf16-mixed")
    assert module.gan.skipped_steps.tolist() == [0, 0]
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_validation_updates_nothing_and_reports_metrics():
    torch.manual_seed(0)
    module = tiny_module()
    fit(module, batches=1)
    before = snapshot(module)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.validate(module, DataLoader(NoiseAudio(n=4), batch_size=2))
    after = module.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"validation changed {k}"
    assert {"val/mel_distance", "val/si_sdr", "val/g/mel", "val/g/time"} <= set(results[0])
    assert all(math.isfinite(v) for v in results[0].values())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"loss_weights has no weight for \['mel'\]"):
        tiny_module(loss_weights={"time": 1.0, "adv": 1.0, "feat": 1.0, "commit": 1.0})
    with pytest.raises(ValueError, match="generator_grad_clip"):
        tiny_module(generator_grad_clip=0.0)
    with pytest.raises(ValueError, match="probability"):
        DiscriminatorSchedule(probability=2.0)


def test_quantizer_loss_without_weight_is_reported():
    module = tiny_module(loss_weights={"time": 0.1, "mel": 1.0, "adv": 3.0, "feat": 3.0})
    with pytest.raises(ValueError, match="commit"):
        fit(module, batches=1)


def test_misspelled_loss_weight_is_reported_at_construction():
    with pytest.raises(ValueError, match=r"loss_weights names no loss: \['mell'\]"):
        tiny_module(loss_weights={"time": 0.1, "mel": 1.0, "adv": 3.0, "feat": 3.0, "commit": 1.0, "mell": 1.0})


def test_max_batches_stops_training():
    torch.manual_seed(0)
    module = tiny_module(max_batches=2)
    fit(module, batches=10)
    assert int(module.batch_counter) == 2


def _fit_with_cpu_grad_scaler(module: GANCodecModule, init_scale: float):
    """16-mixed with an explicit GradScaler, so the AMP unscale/skip path runs on CPU too."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision(
        precision="16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale)
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        plugins=[plugin],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(NoiseAudio(), batch_size=4))
    return plugin.scaler


def test_16_mixed_clips_unscaled_gradients():
    torch.manual_seed(0)
    lr, clip = 1.0, 1e-4
    sgd = lambda params: torch.optim.SGD(params, lr=lr)  # noqa: E731
    module = tiny_module(
        generator_optimizer=sgd, discriminator_optimizer=sgd, generator_grad_clip=clip, discriminator_grad_clip=clip
    )
    g_before = {k: v.clone() for k, v in module.codec.named_parameters()}
    _fit_with_cpu_grad_scaler(module, init_scale=4.0)
    g_step = torch.sqrt(sum((p - g_before[k]).pow(2).sum() for k, p in module.codec.named_parameters()))
    # Clipping scaled gradients would leave the update 4x too large (the scaler divides after).
    assert 0 < g_step <= lr * clip * 1.001
    assert module.gan.skipped_steps.tolist() == [0, 0]


def test_16_mixed_overflow_is_skipped_and_counted():
    torch.manual_seed(0)
    module = tiny_module()
    params_before = {k: v.clone() for k, v in module.codec.named_parameters()}
    scaler = _fit_with_cpu_grad_scaler(module, init_scale=2.0**60)  # guaranteed fp16 overflow
    assert module.gan.skipped_steps[0] == 1
    assert scaler.get_scale() < 2.0**60  # the scaler backed off
    for name, p in module.codec.named_parameters():
        assert torch.equal(p, params_before[name])
