"""MuCodecTokenizerModule: trains MuCodec's RVQ over frozen MuEncoder features (the tokenizer stage).

The MuEncoder comes from ``muencoder_checkpoint`` (a stage-1 or stage-2 checkpoint of
:class:`~codecplatform.mucodec.stages.muencoder.MuEncoderModule`, loaded strictly in
``setup("fit")``; a missing file or another geometry is an error naming the field and the file;
``null`` keeps a random encoder: tiny tests only). It is frozen (eval mode, no gradient) and its
weights are saved in this stage's checkpoints too (``tokenizer.encoder.*``), so a tokenizer
checkpoint is self-contained.

Losses (``loss_weights``; log keys ``train/tokenizer/<name>``), those of the official quantizer
file's "w/ reconstruction" recipe (``libs/rvq/descript_quantize3.py``, ``__main__``):
``commit`` 0.25 and ``codebook`` 1.0 (DAC's, summed over codebooks) and ``recon`` 1.0 = mean
|z - z_q| between the features and their quantized reconstruction (it trains the output
projections; without it they would get no gradient). Stale entries (unused for 200 consecutive
steps) are replaced by the quantizer (``stale_tolerance``); ``train/tokenizer/replaced_codes``
counts them. Also logged: ``train/codebook/perplexity/<k>`` (what ``TrainingHealthMonitor``
watches). In MuCodec the RVQ is trained with the flow-matching model; training it alone first on
these losses is this platform's stage split.

Validation returns ``{"codes": (B, K, T')}`` so ``callbacks.CodebookUsageLogger`` counts the codes
without encoding again; the module's ``codec`` is the :class:`MuCodecTokenizer` (``codebook_sizes``,
``n_q``, ``sample_rate``, ``encode``, ``describe``: what the callbacks and run tags use).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.diagnostics import codebook_perplexities
from codecplatform.mucodec.muencoder import load_muencoder_state
from codecplatform.mucodec.stages.muencoder import split_batch
from codecplatform.mucodec.tokenizer import MuCodecTokenizer

LOSSES = ("commit", "codebook", "recon")
PREFIX = "tokenizer"


class MuCodecTokenizerModule(TrainingModule):
    """Trains the quantizer of a :class:`MuCodecTokenizer` (the MuEncoder stays frozen).

    Args:
        tokenizer: frozen MuEncoder + RVQ.
        muencoder_checkpoint: MuEncoder stage checkpoint to take the encoder from (None: random).
        loss_weights: ``commit``, ``codebook``, ``recon`` (default 0.25, 1.0, 1.0).
        optimizer: optimizer factory (default AdamW lr 1e-4, betas (0.8, 0.99), DAC's).
        scheduler: optional scheduler factory, stepped every batch.
        max_batches: stop training after this many batches (None: the trainer decides).
    """

    default_optimizer = partial(torch.optim.AdamW, lr=1e-4, betas=(0.8, 0.99))  # DAC's

    def __init__(
        self,
        tokenizer: MuCodecTokenizer,
        muencoder_checkpoint: str | None = None,
        loss_weights: dict[str, float] | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        max_batches: int | None = None,
    ):
        super().__init__(max_batches=max_batches)
        weights = {"commit": 0.25, "codebook": 1.0, "recon": 1.0} if loss_weights is None else dict(loss_weights)
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"loss_weights: unknown losses {unknown}; known: {list(LOSSES)}")
        self.tokenizer = tokenizer
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self.muencoder_checkpoint = muencoder_checkpoint
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    @property
    def codec(self) -> MuCodecTokenizer:
        """The tokenizer, under the name the codebook callbacks and run tags look for."""
        return self.tokenizer

    # -- set-up ------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.tokenizer.sample_rate}  # any channel count: the encoder takes the mono mix

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.muencoder_checkpoint is not None:
            load_muencoder_state(self.muencoder_checkpoint, self.tokenizer.encoder)

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(
            self.tokenizer.quantizer.parameters(), self.optimizer_factory, self.scheduler_factory
        )

    # -- steps -----------------------------------------------------------------------------------
    def compute(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """(unweighted losses, codes (B, K, T')) of a batch x (B, C, T)."""
        z, out = self.tokenizer(x)
        values = {
            "commit": out.losses["commit"],
            "codebook": out.losses["codebook"],
            "recon": (z - out.z_q).abs().mean(),
        }
        return values, out.codes

    def _total(self, values: dict[str, Tensor]) -> Tensor:
        return sum(w * values[k] for k, w in self.loss_weights.items())  # type: ignore[return-value]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        x, _ = split_batch(batch)
        if self.skip_empty(x):
            return None
        before = sum(layer.replaced_codes for layer in self.tokenizer.quantizer.layers)
        values, codes = self.compute(x)
        loss = self._total(values)
        logs = {f"train/{PREFIX}/{k}": v.detach() for k, v in values.items()}
        logs[f"train/{PREFIX}/loss"] = loss.detach()
        replaced = sum(layer.replaced_codes for layer in self.tokenizer.quantizer.layers) - before
        logs[f"train/{PREFIX}/replaced_codes"] = torch.tensor(float(replaced))
        sizes = self.tokenizer.codebook_sizes
        for k, value in enumerate(codebook_perplexities(codes, None, max(sizes), len(sizes))):
            logs[f"train/codebook/perplexity/{k}"] = value
        self.end_batch(logs, batch_size=x.shape[0])
        return {"loss": loss, **logs}

    def _evaluate(self, batch: Any, stage: str) -> dict[str, Tensor] | None:
        x, _ = split_batch(batch)
        if x.shape[0] == 0:
            return None
        values, codes = self.compute(x)
        logs = {f"{stage}/{PREFIX}/{k}": v.detach() for k, v in values.items()}
        logs[f"{stage}/{PREFIX}/loss"] = self._total(values).detach()
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return {"codes": codes}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        return self._evaluate(batch, "test")


__all__ = ["MuCodecTokenizerModule"]
