"""CodeLMModule: trains the entropy-coding language model (EnCodec section 3.3) on a frozen codec's codes.

Any family: the codec is loaded from its checkpoint with ``AudioCodec.from_checkpoint`` and used
only through the codec interface (``encode(x, n_q=K).codes``, ``n_q``, ``codebook_sizes``,
``frame_rate``, ``bitrate``, ``operating_points``). It is frozen and kept out of the module's
state dict (an LM checkpoint holds ``lm.*``, ``batch_counter``, the LM's config ``lm_config`` and
the codec checkpoint path): ``CodeLM.from_checkpoint(lm.ckpt)`` loads the LM without Lightning.

One training batch: audio (B, C, T) from the data module -> codes (B, K, T') with K drawn per batch
from ``n_q`` (EnCodec: "at train time, we select a bandwidth and the corresponding number of
codebooks"; the draw is seeded by the batch index, so DDP ranks agree) -> logits with a random
position offset per example (EnCodec: "we offset by a random amount the initial position of the
sinusoidal position embedding") -> cross-entropy over every codebook and frame, logged as
``train/lm/ce`` (nats per symbol). ``batch_counter`` counts trained batches and ``max_batches`` stops
training (automatic optimization: one optimizer step per batch).

Validation and test, per codebook count K of ``n_q`` (``<stage>/lm/nq<K>/...``) and for the
largest one (``<stage>/lm/...``): ``ce`` (nats per symbol), ``kbps`` = bits per frame (K x ce /
ln 2) x frame rate / 1000 (the entropy-coded bitrate the LM predicts; the coder adds a few bytes
per segment), ``nominal_kbps`` (the codec's ``bitrate(K)``) and ``saving`` = 100 x (1 - kbps /
nominal) in percent (EnCodec Table 1: 1.5 -> 0.9, 3 -> 1.9, 6 -> 4.1, 12 -> 8.9 kbps).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.schedule import uniform_from
from codecplatform.models.base import AudioCodec
from codecplatform.models.code_lm import CodeLM, context_frames


class CodeLMModule(TrainingModule):
    """Trains a :class:`~codecplatform.models.code_lm.CodeLM` on the codes of a frozen codec.

    Args:
        codec_checkpoint: the codec's checkpoint (a ``codecplatform fit`` checkpoint of any family or
            an imported one), loaded with ``AudioCodec.from_checkpoint``.
        codec_weights: ``auto`` / ``raw`` / ``ema`` (see ``AudioCodec.from_checkpoint``).
        dim, num_heads, num_layers, ffn_dim, dropout, norm_first: the LM (EnCodec: 200, 8, 5, 800,
            0, post-norm).
        context_seconds: attention window (EnCodec 3.5 s -> ``int(3.5 * frame_rate)`` frames).
        n_q: the codebook counts to train with, one drawn per batch (None: the counts of the codec's
            operating points). The LM has embeddings and heads for all ``codec.n_q`` codebooks.
        max_position_offset: training position offsets are drawn uniformly in
            ``[0, max_position_offset]`` (NOT FOUND in the paper; default 10 min at 75 Hz).
        optimizer, scheduler: factories (default Adam, lr 3e-4: NOT FOUND in the paper).
        max_batches: stop training after this many batches (None: the trainer decides).
        seed: seeds the per-batch draws (codebook count, offsets), identical on all ranks.
    """

    default_optimizer = partial(torch.optim.Adam, lr=3e-4)  # NOT FOUND in the paper

    def __init__(
        self,
        codec_checkpoint: str,
        codec_weights: str = "auto",
        dim: int = 200,
        num_heads: int = 8,
        num_layers: int = 5,
        ffn_dim: int = 800,
        dropout: float = 0.0,
        norm_first: bool = False,
        context_seconds: float = 3.5,
        n_q: list[int] | None = None,
        max_position_offset: int = 45000,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        max_batches: int | None = None,
        seed: int = 0,
    ):
        super().__init__(max_batches=max_batches)
        if max_position_offset < 0:
            raise ValueError(f"max_position_offset must be >= 0, got {max_position_offset}")
        codec = AudioCodec.from_checkpoint(codec_checkpoint, weights=codec_weights).requires_grad_(False).eval()
        # a plain attribute, not a submodule: frozen, outside the state dict, optimizer and DDP
        self._codec: list[AudioCodec] = [codec]
        self.codec_checkpoint = str(codec_checkpoint)
        counts = sorted(set(n_q)) if n_q else sorted(set(codec.operating_points().values()))
        if not counts or counts[0] < 1 or counts[-1] > codec.n_q:
            raise ValueError(f"n_q={n_q}: every count must be in 1..{codec.n_q} (the codec's codebooks)")
        self.n_q_choices = counts
        self.lm = CodeLM(
            n_q=codec.n_q,
            card=max(codec.codebook_sizes),
            dim=dim,
            num_heads=num_heads,
            num_layers=num_layers,
            ffn_dim=ffn_dim,
            past_context=context_frames(context_seconds, codec.frame_rate),
            dropout=dropout,
            norm_first=norm_first,
            frame_rate=float(codec.frame_rate),
        )
        self.max_position_offset = max_position_offset
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.seed = seed

    @property
    def codec(self) -> AudioCodec:
        """The frozen codec (callbacks read its sample rate)."""
        return self._codec[0]

    # -- set-up ------------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.codec.sample_rate, "channels": self.codec.channels}

    def configure_optimizers(self) -> Any:
        return self.make_optimizer(self.lm.parameters(), self.optimizer, self.scheduler)

    # -- codes -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor, n_q: int) -> Tensor:
        """Audio (B, C, T) -> codes (B, n_q, T') of the frozen codec."""
        codec = self.codec
        param = next(codec.parameters(), None)
        if param is not None and param.device != x.device:
            codec.to(x.device)
        codec.eval()
        with torch.autocast(device_type=x.device.type, enabled=False):
            return codec.encode(x.float(), n_q=n_q).codes.long()

    def cross_entropy(self, codes: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Mean cross-entropy (nats per symbol) of the LM on codes (B, K, T)."""
        logits = self.lm(codes, offset=offset).float()  # (B,K,T,card)
        return F.cross_entropy(logits.flatten(0, 2), codes.flatten())

    # -- training ------------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = batch
        step = int(self.batch_counter)
        generator = torch.Generator().manual_seed(int(uniform_from(self.seed, step, "code_lm") * 2**62))
        n_q = self.n_q_choices[int(torch.randint(len(self.n_q_choices), (1,), generator=generator))]
        codes = self.encode(x, n_q)
        offsets = torch.randint(self.max_position_offset + 1, (codes.shape[0],), generator=generator)
        loss = self.cross_entropy(codes, offsets.to(codes.device))
        if self._trainer is not None:
            self.log("train/lm/ce", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x.shape[0])
        self.end_batch({"train/lm/n_q": torch.tensor(float(n_q))}, batch_size=x.shape[0])
        return loss

    # -- evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, x: Tensor, stage: str) -> dict[str, Tensor]:
        full = self.n_q_choices[-1]
        codes = self.encode(x, full)
        logs: dict[str, Tensor] = {}
        for k in self.n_q_choices:
            ce = self.cross_entropy(codes[:, :k])
            kbps = ce * k / math.log(2) * self.codec.frame_rate / 1000.0
            nominal = self.codec.bitrate(k)
            values = {
                "ce": ce,
                "kbps": kbps,
                "nominal_kbps": torch.tensor(nominal),
                "saving": 100.0 * (1 - kbps / nominal),
            }
            names = [f"{stage}/lm/nq{k}"] if len(self.n_q_choices) > 1 else []
            if k == full:
                names.append(f"{stage}/lm")
            for prefix in names:
                for name, value in values.items():
                    logs[f"{prefix}/{name}"] = value
        for key, value in logs.items() if self._trainer is not None else ():
            self.log(key, value, on_step=False, on_epoch=True, batch_size=x.shape[0], prog_bar=key == f"{stage}/lm/ce")
        return logs

    def validation_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test")

    # -- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lm_config"] = self.lm.config()
        checkpoint["codec_checkpoint"] = self.codec_checkpoint


def save_lm(lm: CodeLM, path: str | Path) -> None:
    """Write ``lm`` as ``CodeLM.from_checkpoint`` reads it (without Lightning)."""
    torch.save({"lm_config": lm.config(), "state_dict": {f"lm.{k}": v for k, v in lm.state_dict().items()}}, path)
