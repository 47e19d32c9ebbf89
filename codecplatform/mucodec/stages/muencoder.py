"""MuEncoderModule: MuCodec's MuEncoder stages 1 and 2 (masked prediction, then + reconstruction + lyrics CTC).

One module, two stages, chosen by ``loss_weights`` (a loss's name is its weight key and its log
key ``train/muencoder/<name>``); each head exists only when its weight is > 0:

* ``ce`` (both stages): BEST-RQ masked prediction (official ``MuQ.forward``). The mono input is
  masked *in the waveform*: each whole ``mask_seconds`` span (0.4 s) is replaced with probability
  ``mask_prob`` (0.6) by N(0, ``mask_noise_std`` ^ 2) noise (0.1); the targets are the frozen
  :class:`~codecplatform.mucodec.muencoder.RandomProjectionQuantizer` codes of the clean
  audio's normalized mel, 4 frames stacked per 25 Hz token; ``Linear(H, 4096)`` on the last hidden
  state predicts them; cross-entropy over the masked tokens only (a span covers 10 tokens). Also
  logged: ``train/muencoder/accuracy`` (masked tokens) and ``train/muencoder/masked`` (fraction).
* ``mel`` (stage 2, weight 1): ``Linear(H, 4 x n_mels)`` regresses the clean 4-frame-stacked
  normalized mel of each token, MSE over the masked tokens (official ``recon_proj``/``get_recon_loss``).
* ``cqt`` (stage 2, weight 1): ``Linear(H, cqt_bins)`` regresses the clean audio's CQT (hop 960 =
  one frame per token, 84 bins from 32.7 Hz, 12 per octave; :mod:`codecplatform.dsp.cqt`),
  normalized with ``cqt_mean``/``cqt_std``, MSE over the masked tokens like ``mel``. The official
  code has no CQT loss (its ``CQTPreprocessor`` is nnAudio's CQT + AmplitudeToDB); the default
  statistics are the official stat table's ``cqt_mean``/``cqt_std`` (0.463, 0.954), which fit
  magnitudes, so ``cqt_db`` defaults to false (set it with dB statistics of your data).
* ``ctc`` (stage 2, weight 0.2): lyrics/transcript recognition, ``Linear(H, 257)`` on the last
  hidden state, CTC over all tokens against the window's supervision text as UTF-8 bytes (ids
  1..256, blank 0; any language, no vocabulary file), ``zero_infinity`` (a text longer than the
  window's tokens gives 0). Needs ``data.init_args.return_text: true`` (batches
  ``{"audio", "text"}``); examples without text (None: no sidecar) are left out. The paper's
  lyrics loss is CTC + RNN-T; the RNN-T term is not implemented here.

Stage 2 starts from a stage-1 checkpoint: ``muencoder_checkpoint`` (loaded in ``setup("fit")``:
the encoder strictly, the target quantizer too when the file has it); a missing file or another
geometry is an error naming the field and the file. ``null`` starts from random weights (tiny
tests; stage 1).

Masks are drawn from generators seeded by (seed, batch counter, rank) in training and (seed,
batch index) in validation, so validation masks are the same at every validation and a resumed
run draws what the uninterrupted one would have. Optimization is automatic (one optimizer);
``batch_counter`` counts trained batches and ``max_batches`` stops the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from codecplatform.dsp.cqt import cqt, cqt_kernels
from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.schedule import uniform_from
from codecplatform.mucodec.muencoder import (
    MuEncoder,
    RandomProjectionQuantizer,
    load_muencoder_state,
    mask_waveform,
    span_mask,
    stack_frames,
    token_mask,
)

LOSSES = ("ce", "mel", "cqt", "ctc")
PREFIX = "muencoder"
CTC_VOCAB = 257  # blank + 256 byte values
CQT_MEAN = 0.46341379757927165  # official stat table, "cqt_mean"
CQT_STD = 0.9543998080910191  # "cqt_std"


def text_to_ids(text: str) -> Tensor:
    """UTF-8 bytes of ``text`` as CTC targets 1..256 (0 is the blank): (L,) long."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) + 1


def ids_to_text(ids: list[int]) -> str:
    """Inverse of :func:`text_to_ids` for ids 1..256 (blanks and invalid bytes dropped)."""
    return bytes(i - 1 for i in ids if 1 <= i <= 256).decode("utf-8", errors="ignore")


def split_batch(batch: Any) -> tuple[Tensor, list[str | None] | None]:
    """A batch -> (audio (B, C, T), texts or None): a tensor, or ``{"audio", "text"}`` (return_text)."""
    if isinstance(batch, Mapping):
        return batch["audio"], list(batch.get("text")) if batch.get("text") is not None else None
    return batch, None


class MuEncoderModule(TrainingModule):
    """Trains a :class:`MuEncoder` (stage 1: ``loss_weights: {ce: 1}``; stage 2: ``{ce: 1, mel: 1,
    cqt: 1, ctc: 0.2}``). See the module docstring.

    Args:
        encoder: the MuEncoder.
        loss_weights: weight per loss (``ce``, ``mel``, ``cqt``, ``ctc``); ``ce`` is required.
        target: the frozen BEST-RQ quantizer; default ``RandomProjectionQuantizer(4 * n_mels, 16,
            4096, seed=142)`` (official).
        mask_seconds, mask_prob, mask_noise_std: waveform masking (0.4 s, 0.6, 0.1); a span must
            be a whole number of tokens (960 samples at 24 kHz).
        cqt_bins, cqt_fmin, cqt_bins_per_octave: the CQT target (84, 32.7 Hz, 12); hop = one token.
        cqt_mean, cqt_std, cqt_db: CQT target normalization (see the module docstring).
        muencoder_checkpoint: stage-1 checkpoint to start from (None: random init).
        optimizer: optimizer factory (default AdamW lr 1e-4, betas (0.9, 0.98), weight decay 0.01).
        scheduler: optional scheduler factory, stepped every batch.
        max_batches: stop training after this many batches (None: the trainer decides).
        seed: seeds the masks.
    """

    default_optimizer = partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)

    def __init__(
        self,
        encoder: MuEncoder,
        loss_weights: dict[str, float] | None = None,
        target: RandomProjectionQuantizer | None = None,
        mask_seconds: float = 0.4,
        mask_prob: float = 0.6,
        mask_noise_std: float = 0.1,
        cqt_bins: int = 84,
        cqt_fmin: float = 32.7,
        cqt_bins_per_octave: int = 12,
        cqt_mean: float = CQT_MEAN,
        cqt_std: float = CQT_STD,
        cqt_db: bool = False,
        muencoder_checkpoint: str | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        max_batches: int | None = None,
        seed: int = 0,
    ):
        super().__init__(max_batches=max_batches)
        weights = {"ce": 1.0} if loss_weights is None else dict(loss_weights)
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"loss_weights: unknown losses {unknown}; known: {list(LOSSES)}")
        if weights.get("ce", 0.0) <= 0:
            raise ValueError("loss_weights must give the masked prediction loss 'ce' a weight > 0")
        span = round(mask_seconds * encoder.sample_rate)
        if span < encoder.samples_per_token or span % encoder.samples_per_token:
            raise ValueError(
                f"mask_seconds={mask_seconds} is {span} samples: it must be a positive multiple of one token "
                f"({encoder.samples_per_token} samples)"
            )
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")
        self.encoder = encoder
        self.loss_weights = {k: float(v) for k, v in weights.items() if v > 0}
        stacked = encoder.frames_per_token * encoder.n_mels
        self.target = target if target is not None else RandomProjectionQuantizer(stacked, 16, 4096, seed=142)
        if self.target.projection.shape[0] != stacked:
            raise ValueError(
                f"target quantizer takes {self.target.projection.shape[0]} inputs, the encoder's token has "
                f"{encoder.frames_per_token} x {encoder.n_mels} = {stacked} mel values"
            )
        hidden = encoder.hidden_size
        self.logits = nn.Linear(hidden, self.target.codebook_size)
        self.mel_head = nn.Linear(hidden, stacked) if "mel" in self.loss_weights else None
        self.cqt_head = nn.Linear(hidden, cqt_bins) if "cqt" in self.loss_weights else None
        self.ctc_head = nn.Linear(hidden, CTC_VOCAB) if "ctc" in self.loss_weights else None
        if self.cqt_head is not None:
            kernels, lengths = cqt_kernels(encoder.sample_rate, cqt_bins, cqt_fmin, cqt_bins_per_octave)
            self.register_buffer("cqt_kernels", kernels, persistent=False)
            self.register_buffer("cqt_lengths", lengths, persistent=False)
        self.span = span
        self.mask_prob = mask_prob
        self.mask_noise_std = mask_noise_std
        self.cqt_mean, self.cqt_std, self.cqt_db = cqt_mean, cqt_std, cqt_db
        self.muencoder_checkpoint = muencoder_checkpoint
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.seed = seed

    # -- set-up ------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.encoder.sample_rate}  # any channel count: the encoder takes the mono mix

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if "ctc" in self.loss_weights and data is not None and getattr(data, "return_text", True) is False:
            raise ValueError(
                "loss_weights has 'ctc' but the batches carry no text: set data.init_args.return_text: true"
            )
        if stage == "fit" and self.muencoder_checkpoint is not None:
            state = load_muencoder_state(self.muencoder_checkpoint, self.encoder)
            target = {k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")}
            if target:
                from codecplatform.checkpoints.io import check_codec_state

                check_codec_state(
                    self.target, target, f"target quantizer of muencoder_checkpoint={self.muencoder_checkpoint}"
                )
                self.target.load_state_dict(target)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return self.make_optimizer(params, self.optimizer_factory, self.scheduler_factory)

    # -- the losses ----------------------------------------------------------------------------
    def _generator(self, step: int, salt: str) -> torch.Generator:
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator().manual_seed(int(uniform_from(self.seed, step, f"{salt}/{rank}") * 2**62))

    def compute(self, x: Tensor, texts: list[str | None] | None, generator: torch.Generator) -> dict[str, Tensor]:
        """Losses (unweighted) and logged values of one batch x (B, C, T)."""
        enc = self.encoder
        mono = enc.mono(x)  # (B, T)
        b, t = mono.shape
        tokens = t // enc.samples_per_token
        spans = span_mask(b, t, self.span, self.mask_prob, generator)
        masked_audio = mask_waveform(mono, spans, self.span, self.mask_noise_std, generator)
        mask = token_mask(spans.to(mono.device), self.span // enc.samples_per_token, tokens)  # (B, T')
        with torch.no_grad():
            clean_mel = stack_frames(enc.front_end(mono), enc.frames_per_token)  # (B, T', 4 n_mels)
            targets = self.target(clean_mel)  # (B, T')
        last = enc.run(masked_audio).hidden_states[-1]  # (B, T', H)
        out: dict[str, Tensor] = {}
        logits = self.logits(last).float()  # (B, T', K)
        n_masked = mask.sum()
        if bool(n_masked > 0):
            out["ce"] = F.cross_entropy(logits[mask], targets[mask])
            out["accuracy"] = (logits[mask].argmax(-1) == targets[mask]).float().mean().detach()
        else:  # no span drawn: nothing to predict (keeps every head in the graph for DDP)
            out["ce"] = logits.sum() * 0.0
        out["masked"] = (n_masked / mask.numel()).detach().float()
        if self.mel_head is not None:
            out["mel"] = self._masked_mse(self.mel_head(last), clean_mel, mask)
        if self.cqt_head is not None:
            with torch.no_grad():
                spec = cqt(mono[:, None], self.cqt_kernels, self.cqt_lengths, enc.samples_per_token)[:, 0, :, :tokens]
                if self.cqt_db:
                    spec = 10.0 * torch.log10(spec.clamp(min=1e-10))
                spec = ((spec - self.cqt_mean) / self.cqt_std).transpose(1, 2)  # (B, bins, T')->(B, T', bins)
            out["cqt"] = self._masked_mse(self.cqt_head(last), spec, mask)
        if self.ctc_head is not None:
            out["ctc"] = self._ctc(self.ctc_head(last), texts)
        return out

    @staticmethod
    def _masked_mse(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        if bool(mask.any()):
            return F.mse_loss(prediction[mask].float(), target[mask].float())
        return prediction.sum() * 0.0

    def _ctc(self, logits: Tensor, texts: list[str | None] | None) -> Tensor:
        """CTC of logits (B, T', V) against the byte ids of the examples' texts (None: left out)."""
        if texts is None:
            raise ValueError(
                "loss_weights has 'ctc' but the batch carries no text: set data.init_args.return_text: true"
            )
        keep = [i for i, text in enumerate(texts) if text is not None]
        if not keep:
            return logits.sum() * 0.0
        targets = [text_to_ids(texts[i]) for i in keep]
        log_probs = logits[keep].float().log_softmax(-1).transpose(0, 1)  # (B,T',V)->(T',B',V)
        input_lengths = torch.full((len(keep),), log_probs.shape[0], dtype=torch.long)
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        flat = torch.cat(targets) if any(len(t) for t in targets) else torch.zeros(0, dtype=torch.long)
        loss = F.ctc_loss(log_probs, flat.to(logits.device), input_lengths, target_lengths, blank=0, zero_infinity=True)
        return loss + logits.sum() * 0.0  # examples without text still put the head in the graph

    def _total(self, values: dict[str, Tensor]) -> Tensor:
        return sum(self.loss_weights[k] * values[k] for k in self.loss_weights)  # type: ignore[return-value]

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor] | None:
        x, texts = split_batch(batch)
        if self.skip_empty(x):
            return None
        values = self.compute(x, texts, self._generator(int(self.batch_counter), "mask"))
        loss = self._total(values)
        logs = {f"train/{PREFIX}/{k}": v for k, v in values.items()}
        logs[f"train/{PREFIX}/loss"] = loss.detach()
        self.end_batch(logs, batch_size=x.shape[0])
        return {"loss": loss}

    def _evaluate(self, batch: Any, batch_idx: int, stage: str) -> None:
        x, texts = split_batch(batch)
        if x.shape[0] == 0:
            return
        values = self.compute(x, texts, self._generator(batch_idx, f"{stage}-mask"))
        logs = {f"{stage}/{PREFIX}/{k}": v.detach() for k, v in values.items()}
        logs[f"{stage}/{PREFIX}/loss"] = self._total(values).detach()
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")


__all__ = ["MuEncoderModule", "ids_to_text", "split_batch", "text_to_ids"]
