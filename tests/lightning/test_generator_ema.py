"""Generator EMA (``GANCodecModule(generator_ema=...)``, audiocraft's ``optim.ema``): the average
after n updates, evaluation with the EMA weights (swapped in and back), checkpoints holding both
sets and ``Codec.from_checkpoint`` choosing between them."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.loggers import Logger
from test_gan_codec import NoiseAudio, fit, tiny_module
from torch import nn
from torch.utils.data import DataLoader

from codecplatform.checkpoints.io import load_codec_state
from codecplatform.lightning.ema import GeneratorEMA, ema_weight, swap_weights_, update_ema_
from codecplatform.models.codec import Codec

SEANET = {"channels": 1, "dimension": 8, "n_filters": 4, "ratios": [4, 2], "lstm_layers": 1}
CODEC_CONFIG = {  # test_gan_codec.tiny_codec as a config (the PerBatchChoice dropout only matters in training)
    "class_path": "codecplatform.models.codec.Codec",
    "init_args": {
        "sample_rate": 8000,
        "encoder": {"class_path": "codecplatform.generators.seanet.SEANetEncoder", "init_args": SEANET},
        "quantizer": {
            "class_path": "codecplatform.quantizers.ema_residual.ResidualVectorQuantizer",
            "init_args": {"dimension": 8, "n_q": 2, "codebook_size": 16, "kmeans_iters": 2},
        },
        "decoder": {"class_path": "codecplatform.generators.seanet.SEANetDecoder", "init_args": SEANET},
    },
}


def float_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def expected_ema(history: list[dict[str, torch.Tensor]], decay: float, start=None, unbias=True):
    """sum_k d^(n-k) w_k / sum_k d^(n-k) (unbiased), or d^n start + sum_k (1-d) d^(n-k) w_k."""
    n = len(history)
    out = {}
    for key in history[0]:
        if unbias:
            weights = [decay ** (n - k) for k in range(1, n + 1)]
            out[key] = sum(w * h[key] for w, h in zip(weights, history)) / sum(weights)
        else:
            out[key] = decay**n * start[key] + sum(
                (1 - decay) * decay ** (n - k) * h[key] for k, h in enumerate(history, 1)
            )
    return out


@pytest.mark.parametrize("unbias", [True, False])
def test_ema_math_after_n_updates(unbias):
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    ema.load_state_dict(model.state_dict())
    start = float_state(model)
    history, decay = [], 0.7
    for n in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append(float_state(model))
        update_ema_(ema, model, ema_weight(n, decay, unbias))
    expected = expected_ema(history, decay, start, unbias)
    for key, value in float_state(ema).items():
        torch.testing.assert_close(value, expected[key])
    assert ema_weight(1, 0.99) == 1.0  # the first unbiased update copies the weights
    assert ema_weight(3, 0.99, unbias=False) == pytest.approx(0.01)


def test_swap_exchanges_values_and_keeps_parameter_identity():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    wa, wb, param = a.weight.detach().clone(), b.weight.detach().clone(), a.weight
    swap_weights_(a, b)
    assert a.weight is param and torch.equal(a.weight, wb) and torch.equal(b.weight, wa)


class History(Callback):
    """The codec's float weights after each trained batch (callbacks run before the module's EMA update)."""

    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append(float_state(pl_module.codec))


@pytest.mark.parametrize("every", [1, 2])
def test_module_ema_follows_the_trained_weights(every):
    torch.manual_seed(0)
    module = tiny_module(generator_ema=GeneratorEMA(decay=0.6, every_n_batches=every))
    history = History()
    fit(module, batches=4, callbacks=[history])
    updates = history.states[every - 1 :: every]
    assert int(module.ema_updates) == len(updates) == 4 // every
    expected = expected_ema(updates, 0.6)
    ema = float_state(module.codec_ema)
    assert ema.keys() == expected.keys() and any(".embed" in k for k in ema)  # codebooks averaged too
    for key, value in ema.items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert not any(p.requires_grad for p in module.codec_ema.parameters())
    assert torch.equal(module.codec_ema.quantizer.layers[0].initialized, module.codec.quantizer.layers[0].initialized)


def test_evaluation_runs_on_the_ema_weights_and_restores_the_raw_ones():
    torch.manual_seed(0)
    module = tiny_module(generator_ema=GeneratorEMA(decay=0.5))
    fit(module, batches=3)
    raw, ema = float_state(module.codec), float_state(module.codec_ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)

    seen = {}

    class Spy(Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"] = float_state(pl_module.codec)

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["test"] = float_state(pl_module.codec)

    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Spy()]
    )
    val = trainer.validate(module, DataLoader(NoiseAudio(n=4), batch_size=2))[0]
    trainer.test(module, DataLoader(NoiseAudio(n=4), batch_size=2))
    for stage in ("val", "test"):
        for key in raw:
            assert torch.equal(seen[stage][key], ema[key]), f"{stage} ran on raw {key}"
    for key, value in float_state(module.codec).items():
        assert torch.equal(value, raw[key]), f"raw {key} not restored"
    for key, value in float_state(module.codec_ema).items():
        assert torch.equal(value, ema[key])

    # the validation metrics are those of the EMA codec on its own
    plain = tiny_module()
    plain.codec.load_state_dict(module.codec_ema.state_dict())
    plain_val = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    reference = plain_val.validate(plain, DataLoader(NoiseAudio(n=4), batch_size=2))[0]
    assert val["val/mel_distance"] == pytest.approx(reference["val/mel_distance"])


def test_checkpoint_round_trip_and_from_checkpoint_weights(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(generator_ema=GeneratorEMA(decay=0.5))
    trainer = fit(module, batches=2)
    raw, ema = float_state(module.codec), float_state(module.codec_ema)

    path = tmp_path / "last.ckpt"
    module._use_ema_weights(True)  # a checkpoint written during evaluation still stores each set by name
    trainer.save_checkpoint(path)
    module._use_ema_weights(False)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["codec_config"] = CODEC_CONFIG  # built in Python, the module has no codec config to store
    torch.save(checkpoint, path)
    assert int(checkpoint["state_dict"]["ema_updates"]) == 2
    for key in raw:
        assert torch.equal(checkpoint["state_dict"][f"codec.{key}"], raw[key])
        assert torch.equal(checkpoint["state_dict"][f"codec_ema.{key}"], ema[key])

    # load_codec_state: EMA by default, raw on request
    for weights, reference in (("auto", ema), ("ema", ema), ("raw", raw)):
        _, state = load_codec_state(path, weights=weights)
        for key in reference:
            assert torch.equal(state[key], reference[key]), f"{weights}: {key}"

    # resume: a new module restores both sets and the update count
    restored = tiny_module(generator_ema=GeneratorEMA(decay=0.5))
    restored.on_load_checkpoint(checkpoint)
    restored.load_state_dict(checkpoint["state_dict"], strict=True)
    assert int(restored.ema_updates) == 2
    for key in raw:
        assert torch.equal(float_state(restored.codec)[key], raw[key])
        assert torch.equal(float_state(restored.codec_ema)[key], ema[key])

    # a module without EMA loads it (the EMA entries are dropped) ...
    plain = tiny_module()
    without = torch.load(path, weights_only=False)
    plain.on_load_checkpoint(without)
    plain.load_state_dict(without["state_dict"], strict=True)
    # ... and its checkpoints load into a module with EMA, which starts from the raw weights
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("codec_ema.") and k != "ema_updates"}
    with pytest.warns(UserWarning, match="no generator EMA"):
        restored.on_load_checkpoint({"state_dict": state})
    restored.load_state_dict(state, strict=True)
    assert int(restored.ema_updates) == 0
    with pytest.raises(ValueError, match="no generator EMA"):
        torch.save({"codec_config": {}, "state_dict": {"codec.x": torch.zeros(1)}}, tmp_path / "raw.ckpt")
        load_codec_state(tmp_path / "raw.ckpt", weights="ema")


def test_codec_from_checkpoint_loads_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(generator_ema=GeneratorEMA(decay=0.5))
    trainer = fit(module, batches=2)
    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["codec_config"] = CODEC_CONFIG
    torch.save(checkpoint, path)
    for weights, reference in (("auto", module.codec_ema), ("raw", module.codec)):
        codec = Codec.from_checkpoint(path, weights=weights)
        for key, value in float_state(reference).items():
            assert torch.equal(float_state(codec)[key], value), f"{weights}: {key}"


def test_global_batch_size_is_logged_as_a_hyperparameter():
    class Data(LightningDataModule):
        batch_size = 4

        def train_dataloader(self):
            return DataLoader(NoiseAudio(), batch_size=self.batch_size)

    class Recording(Logger):
        name, version = "recording", 0
        params: dict = {}

        def log_hyperparams(self, params, *args, **kwargs):
            if isinstance(params, dict):
                self.params.update(params)

        def log_metrics(self, metrics, step=None):
            pass

    logger = Recording()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(tiny_module(), datamodule=Data())
    assert logger.params["train/global_batch_size"] == 4  # batch_size x devices x nodes
