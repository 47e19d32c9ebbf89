"""TrainingModule: the set-up every training module shares (hyperparameters, data check, batch
counter and max_batches, default optimizer), and that every training module of the platform uses it."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context
from torch import Tensor, nn
from torch.utils.data import DataLoader

from codecplatform.lightning.base import TrainingModule, is_config_value
from codecplatform.lightning.code_lm import CodeLMModule
from codecplatform.lightning.gan_codec import GANCodecModule
from codecplatform.mucodec.stages.evaluation import MuCodecEvalModule
from codecplatform.mucodec.stages.flow import FlowModule
from codecplatform.mucodec.stages.melvae import MelVAEModule
from codecplatform.mucodec.stages.muencoder import MuEncoderModule
from codecplatform.mucodec.stages.tokenizer import MuCodecTokenizerModule
from codecplatform.mucodec.stages.vocoder import HifiGanVocoderModule

MODULES = [
    GANCodecModule,
    CodeLMModule,
    MuEncoderModule,
    MuCodecTokenizerModule,
    FlowModule,
    MelVAEModule,
    HifiGanVocoderModule,
    MuCodecEvalModule,
]


class Linear(TrainingModule):
    """(B, 1, 4) -> (B, 1, 4): one linear layer fitted to the identity, for 16 kHz mono or stereo data."""

    def __init__(
        self,
        layer: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        scale: float = 1.0,
        names: list[str] | None = None,
        max_batches: int | None = None,
    ):
        super().__init__(max_batches=max_batches)
        self.layer = layer or nn.Linear(4, 4)
        self.optimizer = optimizer

    def expected_data(self) -> dict[str, int | tuple[int, ...]]:
        return {"sample_rate": 16000, "channels": (1, 2)}

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(self.layer.parameters(), self.optimizer)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        if self.skip_empty(batch):
            return None
        loss = (self.layer(batch) - batch).pow(2).mean()
        self.end_batch({"train/loss": loss.detach()}, batch_size=batch.shape[0])
        return loss


def test_every_training_module_is_a_training_module_with_its_data_check():
    for cls in MODULES:
        assert issubclass(cls, TrainingModule), cls.__name__
        assert cls.expected_data is not TrainingModule.expected_data, cls.__name__


def test_hyperparameters_keep_plain_arguments_in_python_and_the_whole_config_from_the_cli():
    module = Linear(nn.Linear(4, 4), partial(torch.optim.SGD, lr=0.1), scale=2.0, names=["a"], max_batches=3)
    assert dict(module.hparams) == {"scale": 2.0, "names": ["a"], "max_batches": 3}
    config = {"layer": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 4}}}
    with _given_hyperparameters_context(config, "test"):
        built = Linear(nn.Linear(4, 4))
    assert built.hparams["layer"] == config["layer"]
    assert is_config_value({"a": [1, 2.0, None, "x"]}) and not is_config_value({"a": nn.Identity()})
    assert not is_config_value({1: 2})


def test_data_module_values_are_checked_in_setup():
    module = Linear()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(sample_rate=16000, channels=2))
    module._trainer = trainer
    module.setup("fit")  # stereo is one of the accepted counts
    trainer.datamodule.channels = 6
    with pytest.raises(ValueError, match=r"data.channels=6 but Linear expects channels=1 or 2"):
        module.setup("fit")
    trainer.datamodule = SimpleNamespace(sample_rate=44100)
    with pytest.raises(ValueError, match=r"data.sample_rate=44100 but Linear expects sample_rate=16000"):
        module.setup("validate")
    trainer.datamodule = SimpleNamespace()  # attributes the data module lacks are not checked
    module.setup("fit")

    class Silent(TrainingModule):
        pass

    with pytest.raises(NotImplementedError, match="expected_data"):
        Silent().setup("fit")


def test_max_batches_stops_training_and_the_counter_counts_trained_batches():
    with pytest.raises(ValueError, match="max_batches"):
        Linear(max_batches=0)
    torch.manual_seed(0)
    module = Linear(max_batches=3)
    batches = [torch.randn(2, 1, 4), torch.zeros(0, 1, 4), *[torch.randn(2, 1, 4) for _ in range(4)]]
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.warns(UserWarning, match="skipping batch 1 on every rank"):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    assert int(module.batch_counter) == 3  # the empty batch is not counted
    assert trainer.global_step == 4  # stopped after batch 4 of 6 (Lightning counts the skipped batch's step call)
    assert float(trainer.callback_metrics["batches"]) == 3
    assert "batch_counter" in module.state_dict()

    by_hand = Linear()
    by_hand.end_batch({}, batch_size=2)  # no trainer: the counter moves, nothing is logged
    assert int(by_hand.batch_counter) == 1


def test_make_optimizer_uses_the_class_default_or_the_given_factory():
    module = Linear()
    default = module.configure_optimizers()
    assert isinstance(default, torch.optim.Adam)
    assert default.defaults["lr"] == 3e-4 and default.defaults["betas"] == (0.5, 0.9)
    sgd = Linear(optimizer=partial(torch.optim.SGD, lr=0.5)).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.5
    scheduled = module.make_optimizer(module.parameters(), None, partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    assert scheduled["lr_scheduler"]["interval"] == "step"
    assert scheduled["lr_scheduler"]["scheduler"].optimizer is scheduled["optimizer"]
    # each module keeps its paper's default
    assert HifiGanVocoderModule.default_optimizer.keywords == {"lr": 1e-4, "betas": (0.8, 0.99)}
    assert GANCodecModule.default_optimizer is TrainingModule.default_optimizer
