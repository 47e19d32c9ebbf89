"""FlowModule: MuCodec stage "flow matching" (DiT from codes to normalized Mel-VAE latents).

Parts, passed in (YAML):
  ``flow``: :class:`~codecplatform.mucodec.flow.FlowMatchingDiT` (the trained part: the DiT, the
      condition projection and, with ``train_quantizer``, the quantizer's codebooks and output
      projections); its quantizer starts from the code source's tokenizer quantizer when there is one;
  ``code_source``: a frozen :class:`~codecplatform.mucodec.flow.CodeSource` (audio -> codes):
      the MuEncoder + tokenizer in the real system, ``RandomProjectionCodeSource`` until then and in tests;
  the frozen Mel-VAE of stage 1, from ``melvae_checkpoint`` (a ``MelVAE.save_pretrained`` directory,
      or a Mel-VAE / flow stage ``.ckpt``); or, for tests only, ``melvae`` (a Mel-VAE built from its
      YAML with random weights) when ``melvae_checkpoint`` is null. Given both, the checkpoint's
      weights are loaded and its geometry must equal ``melvae``'s.

One training batch (automatic optimization, one optimizer over ``flow``):
  audio x (B, C, T) at the Mel-VAE's rate (mono data is duplicated when the VAE is stereo)
  -> Mel-VAE latent (posterior sample, frozen, float32) -> normalized with the latent statistics,
     which are updated from these batches until ``statistics_samples`` windows (then frozen; saved in
     this stage's checkpoint under ``melvae.normalizer.*``)
  -> codes = code_source.codes(x resampled to its rate), cropped/padded to r codes per latent frame
  -> ``FlowMatchingDiT.loss`` with a random in-context prompt: with probability ``prompt_probability``
     an example's first U(0, max_prompt_fraction) of the frames are its prompt (left out of the loss).
  Logs ``train/flow``, ``train/condition_dropped``, ``train/prompt_frames``, ``batches``.

Validation/test: ``<stage>/flow`` (the loss with a fixed seed, no condition dropout, no prompt) and
``<stage>/mel_distance``: the Euler sample (``eval_num_steps``, ``eval_guidance_scale``) decoded by the
Mel-VAE vs the log-mel of the audio, mean L1 (the checkpoint monitor; includes the VAE's own error).

``codes_to_mel``: codes of any length -> log-mel (B, C, N, n_mels), generated in overlapping windows
(``window_codes`` 1024, ``hop_codes`` 768, prompt = the previous window's last 128 latent frames),
each decoded on its own and crossfaded linearly over the overlap (here on the mel; the official code
crossfades waveforms after its vocoder, and ``crossfade`` works on waveforms alike).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from codecplatform.dsp.spectral import resample
from codecplatform.lightning.base import TrainingModule
from codecplatform.mucodec.flow import CodeSource, FlowMatchingDiT, crossfade
from codecplatform.mucodec.melvae import CHECKPOINT_CONFIG_KEY, MelVAE
from codecplatform.mucodec.stages.melvae import device_generator


def load_frozen_melvae(
    path: str | None, melvae: MelVAE | None, field: str = "model.init_args.melvae_checkpoint"
) -> MelVAE:
    """The Mel-VAE of stage 1 (see the module docstring), frozen. Errors name the file and the field."""
    if path is None:
        if melvae is None:
            raise ValueError(
                f"{field} is null and model.init_args.melvae is null: give the stage-1 Mel-VAE "
                "(a MelVAE.save_pretrained directory or a Mel-VAE stage .ckpt)"
            )
        warnings.warn(
            f"{field} is null: the flow trains on a Mel-VAE with RANDOM weights (model.init_args.melvae); "
            "only meaningful in tests",
            stacklevel=2,
        )
        loaded = melvae
    else:
        if not Path(path).exists():
            raise FileNotFoundError(f"{field}={path}: no such file or directory (train the Mel-VAE stage first)")
        loaded = MelVAE.from_checkpoint(path)
        if melvae is not None and loaded.config() != melvae.config():
            diff = {k: (melvae.config().get(k), v) for k, v in loaded.config().items() if melvae.config().get(k) != v}
            raise ValueError(
                f"{field}={path}: the checkpoint's Mel-VAE differs from model.init_args.melvae in {diff} (yaml, file)"
            )
    return loaded.requires_grad_(False).eval()


class FlowModule(TrainingModule):
    """Trains the flow-matching DiT on a frozen Mel-VAE and frozen codes.

    Args:
        flow: the DiT and its conditioning.
        code_source: frozen audio -> codes (``codebook_sizes`` must be the flow's).
        melvae_checkpoint: the stage-1 Mel-VAE (directory or .ckpt); null only with ``melvae``.
        melvae: a Mel-VAE architecture (random weights: tests) or the expected geometry.
        optimizer, scheduler: of ``flow`` (scheduler stepped per batch).
        max_batches: stop after this many batches.
        sample_posterior: encode with a posterior sample (official ``get_first_stage_encoding``) or the mean.
        prompt_probability, max_prompt_fraction: the random in-context prompt of training.
        eval_num_steps, eval_guidance_scale: the Euler sampler at validation/test.
        num_steps, guidance_scale, window_codes, hop_codes: ``codes_to_mel`` defaults (50, 1.5, 1024, 768).
        seed: seeds training draws (batch index based) and evaluation.
    """

    # NOT FOUND in the official code (inference only)
    default_optimizer = partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01)

    def __init__(
        self,
        flow: FlowMatchingDiT,
        code_source: CodeSource,
        melvae_checkpoint: str | None = None,
        melvae: MelVAE | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        max_batches: int | None = None,
        sample_posterior: bool = True,
        prompt_probability: float = 0.5,
        max_prompt_fraction: float = 0.5,
        eval_num_steps: int = 20,
        eval_guidance_scale: float = 1.5,
        num_steps: int = 50,
        guidance_scale: float = 1.5,
        window_codes: int = 1024,
        hop_codes: int = 768,
        seed: int = 0,
    ):
        super().__init__(max_batches=max_batches)
        for name, p in (("prompt_probability", prompt_probability), ("max_prompt_fraction", max_prompt_fraction)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.flow = flow
        self.code_source = code_source.freeze()
        self._start_quantizer_from_tokenizer()
        self.melvae = load_frozen_melvae(melvae_checkpoint, melvae)
        self._check_geometry(melvae_checkpoint or "model.init_args.melvae")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sample_posterior, self.seed = sample_posterior, seed
        self.prompt_probability, self.max_prompt_fraction = prompt_probability, max_prompt_fraction
        self.eval_num_steps, self.eval_guidance_scale = eval_num_steps, eval_guidance_scale
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.window_codes, self.hop_codes = window_codes, hop_codes

    def _start_quantizer_from_tokenizer(self) -> None:
        """The flow's quantizer starts as the tokenizer's (official: one quantizer, inside the flow
        model), so the codes' ``from_codes`` vectors are the tokenizer's own."""
        tokenizer = getattr(self.code_source, "tokenizer", None)
        quantizer = getattr(tokenizer, "quantizer", None)
        if quantizer is None:
            return
        try:
            self.flow.quantizer.load_state_dict(quantizer.state_dict(), strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[-1].strip()
            raise ValueError(
                "model.init_args.flow.init_args.quantizer differs from the code source's tokenizer quantizer "
                f"(make them the same geometry): {first}"
            ) from None

    def _check_geometry(self, source: str) -> None:
        vae, flow, codes = self.melvae, self.flow, self.code_source
        checks = [
            (
                "latent channels (audio_channels x latent_channels)",
                vae.stacked_channels,
                "flow.init_args.latent_channels",
                flow.latent_channels,
            ),
            ("latent bins (n_mels / downsampling)", vae.latent_bins, "flow.init_args.latent_bins", flow.latent_bins),
            (
                "latent rate x codes_per_frame (Hz)",
                vae.latent_rate * flow.codes_per_frame,
                "code_source frame_rate",
                codes.frame_rate,
            ),
            ("codebook sizes", list(flow.codebook_sizes), "code_source codebook_sizes", list(codes.codebook_sizes)),
        ]
        for what, theirs, field, mine in checks:
            if theirs != mine:
                raise ValueError(f"{source}: Mel-VAE {what} = {theirs} but model.init_args.{field} = {mine}")

    # -- set-up --------------------------------------------------------------------------------
    def expected_data(self) -> dict[str, int | tuple[int, ...]]:
        # mono data is repeated for a stereo Mel-VAE
        return {"sample_rate": self.melvae.sample_rate, "channels": (1, self.melvae.audio_channels)}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.flow.parameters() if p.requires_grad]  # a frozen quantizer is left out
        return self.make_optimizer(params, self.optimizer_factory, self.scheduler_factory)

    def train(self, mode: bool = True) -> FlowModule:
        super().train(mode)
        self.melvae.eval()  # frozen parts stay in eval mode
        self.code_source.eval()
        return self

    # -- data -> latents and codes ---------------------------------------------------------------
    def _audio(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1 and self.melvae.audio_channels > 1:
            x = x.expand(-1, self.melvae.audio_channels, -1)  # mono data for a stereo VAE: L = R
        return x

    @torch.no_grad()
    def latents(
        self, x: Tensor, update: bool = False, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, C, T) audio -> (mel (B, C, N, n_mels), normalized latent (B, Cl, Tl, Fl)); ``update``
        adds the batch to the latent statistics (until they freeze)."""
        mel = self.melvae.mel(self._audio(x))
        with torch.autocast(device_type=mel.device.type, enabled=False):
            z = self.melvae.encode_mel(mel, sample=self.sample_posterior and generator is not None, generator=generator)
        return mel, self.melvae.normalize(z.float(), update=update)

    @torch.no_grad()
    def codes(self, x: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        """(B, C, T) audio -> (codes (B, K, frames * r), valid code counts (B,))."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # the code source in float32
            audio = resample(x.float().contiguous(), self.melvae.sample_rate, self.code_source.sample_rate)
            codes = self.code_source.codes(audio).long()
        need = frames * self.flow.codes_per_frame
        valid = torch.full((x.shape[0],), min(codes.shape[-1], need), device=x.device)
        return F.pad(codes, (0, max(0, need - codes.shape[-1])))[..., :need], valid

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor | None:
        x = batch
        if self.skip_empty(x):
            return None
        step = int(self.batch_counter)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        _, x1 = self.latents(x, update=True, generator=device_generator(generator, x.device))
        codes, valid = self.codes(x, x1.shape[2])
        condition = self.flow.condition(codes, x1.shape[2], valid)
        b, frames = x1.shape[0], x1.shape[2]
        with_prompt = torch.rand(b, generator=generator) < self.prompt_probability
        lengths = (torch.rand(b, generator=generator) * self.max_prompt_fraction * frames).long() * with_prompt
        loss, extra = self.flow.loss(x1, condition, lengths.to(x.device), generator)
        logs = {"train/flow": loss.detach(), **{f"train/{k}": v for k, v in extra.items()}}
        logs["train/latent_statistics_samples"] = self.melvae.normalizer.count.float()
        self.end_batch(logs, batch_size=b)
        return loss

    # -- evaluation ------------------------------------------------------------------------------
    def _evaluate(self, x: Tensor, batch_idx: int, stage: str) -> None:
        if x.shape[0] == 0:
            return
        if int(self.melvae.normalizer.count) == 0:
            warnings.warn("no latent statistics yet (no training batch seen): skipping evaluation", stacklevel=2)
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (batch_idx + 1))
        mel, x1 = self.latents(x)
        codes, valid = self.codes(x, x1.shape[2])
        condition = self.flow.condition(codes, x1.shape[2], valid)
        loss, _ = self.flow.loss(x1, condition, None, generator)
        z = self.flow.sample(
            codes,
            x1.shape[2],
            valid_codes=valid,
            num_steps=self.eval_num_steps,
            guidance_scale=self.eval_guidance_scale,
            generator=generator,
        )
        mel_hat = self.melvae.decode(self.melvae.denormalize(z))
        b = x.shape[0]
        self.log(f"{stage}/flow", loss, on_epoch=True, sync_dist=True, batch_size=b)
        self.log(
            f"{stage}/mel_distance", (mel_hat.float() - mel).abs().mean(), on_epoch=True, sync_dist=True, batch_size=b
        )

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def codes_to_mel(
        self,
        codes: Tensor,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(B, K, Tc) codes of any length -> log-mel (B, C, ceil(Tc / r) * d, n_mels), in windows."""
        long = self.flow.sample_long(
            codes,
            self.window_codes,
            self.hop_codes,
            self.num_steps if num_steps is None else num_steps,
            self.guidance_scale if guidance_scale is None else guidance_scale,
            generator,
        )
        mels = [self.melvae.decode(self.melvae.denormalize(z)) for z in long.windows]
        mel = crossfade(mels, long.overlap * self.melvae.downsample, dim=2)
        return mel[:, :, : long.frames * self.melvae.downsample]

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """Audio (B, C, T) -> codes -> generated log-mel (B, C, N, n_mels)."""
        frames = self.melvae.latent_frames(batch.shape[-1])
        codes, _ = self.codes(batch, frames)
        return self.codes_to_mel(codes)

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the frozen Mel-VAE (with the statistics collected here) can be read back from this file
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.melvae.config()
