"""MuCodec (Xu et al. 2024) end to end, behind the codec interface (:class:`~codecplatform.models.base.AudioCodec`).

    encode: audio (B, C, T) at ``sample_rate`` (48 kHz; or any rate given as ``sample_rate=``), C = 1 or 2
            -> resampled to the tokenizer's rate (24 kHz), mono mix inside the MuEncoder; encoded in
               independent windows of ``encode_window_seconds`` (40.96 s = 1024 codes, official
               ``sound2code``), their codes concatenated (memory bounded by the window, not the file)
            -> EncodedAudio(codes (B, K, T25), scale None, length = T at 48 kHz)
    decode: codes -> flow-matching DiT (Euler, ``num_steps`` 50, classifier-free guidance
            ``guidance_scale`` 1.5; windows of 1024 codes, hop 768, the previous window's last 128
            latent frames as in-context prompt) -> normalized Mel-VAE latents -> denormalized ->
            Mel-VAE decoder -> log-mel (windows crossfaded) -> HiFi-GAN vocoder (as the official
            inference: chunks of 1024 mel frames every 256, crossfaded; ``HifiGanVocoder.synthesize``)
            -> audio (B, C, length) at 48 kHz, C = the Mel-VAE's channels (``channels=1`` mixes down)

Rates: 25 Hz codes; 1 x 16384 codes = 0.35 kbps, 4 x 10000 = 1.33 kbps. The flow is conditioned on
the quantizer's ``from_codes`` vectors of all K codebooks (their sum), so MuCodec decodes all its
codebooks: its only operating point is the full bitrate (``bandwidths``), and fewer codebooks or a
codebook ablation are refused.

The last encoding window is encoded at its own length (zero-padded to whole latent frames); the
official code instead fills it by repeating the file from its start, which changes the codes of a
short file by what the encoder attends to in the copies.

The diffusion decode is random; it draws its noise from a generator seeded with ``seed`` at every
``decode`` call, so decoding the same codes twice gives the same audio.

Built from the stage checkpoints named in ``experiments/mucodec/codec_*.yaml`` (weights under
``tokenizer.``, ``flow.`` + ``melvae.``, ``vocoder.``; a vocoder may also be a ``save_pretrained``
directory), architectures from the YAML; a missing file or another geometry is a ValueError naming
the field and the file. Or from one bundled file (:mod:`codecplatform.mucodec.bundle`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from codecplatform.checkpoints.io import check_codec_state, read_checkpoint
from codecplatform.dsp.spectral import resample
from codecplatform.models.base import AudioCodec
from codecplatform.mucodec.flow import FlowMatchingDiT, crossfade
from codecplatform.mucodec.melvae import MelVAE
from codecplatform.mucodec.tokenizer import MuCodecTokenizer
from codecplatform.mucodec.vocoder import CHECKPOINT_CONFIG_KEY as VOCODER_CONFIG_KEY
from codecplatform.mucodec.vocoder import CHUNK_FRAMES, HOP_FRAMES, HifiGanVocoder
from codecplatform.types import EncodedAudio

FIELD = "model.init_args.codec.init_args"


def _load_checkpoint(path: str, field: str) -> dict[str, Any]:
    """The stage checkpoint given as ``field`` (:func:`~codecplatform.checkpoints.io.read_checkpoint`:
    tensors and plain data only); ValueError naming ``field`` and the file when it is missing,
    refused, unreadable or holds no state dict."""
    checkpoint = read_checkpoint(
        path, f"MuCodec stage checkpoint ({field})", missing=f"{field}={path}: no such file (train that stage first)"
    )
    if not isinstance(checkpoint.get("state_dict", checkpoint), dict):
        raise ValueError(f"{field}={path}: holds no state dict")
    return checkpoint


def _load_prefixed(module: nn.Module, checkpoint: dict[str, Any], prefix: str, path: str, field: str) -> None:
    state = checkpoint.get("state_dict", checkpoint)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{field}={path}: no '{prefix}*' weights: not the checkpoint of that stage")
    check_codec_state(module, sub, f"'{prefix}*' weights of {field}={path}")
    module.load_state_dict(sub, strict=True)


class MuCodec(AudioCodec):
    """MuEncoder + tokenizer -> codes -> flow DiT -> Mel-VAE decoder -> HiFi-GAN (see the module docstring).

    Args:
        tokenizer: the MuEncoder + RVQ architecture (the tokenizer stage's YAML).
        flow: the DiT architecture (the flow stage's YAML); its ``codebook_sizes`` are the tokenizer's.
        vocoder: the HiFi-GAN architecture (the vocoder stage's YAML); its mel is the Mel-VAE's.
        melvae: the Mel-VAE architecture; None: the one stored in ``flow_checkpoint``.
        tokenizer_checkpoint, flow_checkpoint, vocoder_checkpoint: the stage files.
        require_checkpoints: a null checkpoint is an error (true) or keeps the given weights (false:
            a bundle, whose state dict brings the weights, or tests).
        num_steps, guidance_scale: the Euler sampler (50, 1.5).
        window_codes, hop_codes: long audio in windows (1024 codes = 40.96 s, hop 768).
        seed: the decode's noise generator seed.
        encode_window_seconds: ``encode`` runs the tokenizer on independent windows of this length
            (40.96 s; a whole number of latent frames: 0.08 s steps at 25 Hz, 2 codes per frame).
        vocoder_chunk_frames, vocoder_hop_frames: ``decode`` vocodes the mel in chunks of this many
            frames every hop (1024, 256, the official inference's); None: one pass over the whole mel.
    """

    def __init__(
        self,
        tokenizer: MuCodecTokenizer,
        flow: FlowMatchingDiT,
        vocoder: HifiGanVocoder,
        melvae: MelVAE | None = None,
        tokenizer_checkpoint: str | None = None,
        flow_checkpoint: str | None = None,
        vocoder_checkpoint: str | None = None,
        require_checkpoints: bool = True,
        num_steps: int = 50,
        guidance_scale: float = 1.5,
        window_codes: int = 1024,
        hop_codes: int = 768,
        seed: int = 0,
        encode_window_seconds: float = 40.96,
        vocoder_chunk_frames: int | None = CHUNK_FRAMES,
        vocoder_hop_frames: int = HOP_FRAMES,
    ):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"{FIELD}.num_steps must be >= 1, got {num_steps}")
        if vocoder_chunk_frames is not None and not 1 <= vocoder_hop_frames <= vocoder_chunk_frames:
            raise ValueError(
                f"{FIELD}: vocoder_hop_frames={vocoder_hop_frames} must be in [1, vocoder_chunk_frames="
                f"{vocoder_chunk_frames}]"
            )
        self.vocoder_chunk_frames, self.vocoder_hop_frames = vocoder_chunk_frames, vocoder_hop_frames
        window = encode_window_seconds * float(tokenizer.frame_rate) / flow.codes_per_frame
        if window < 1 or abs(window - round(window)) > 1e-6:
            raise ValueError(
                f"{FIELD}.encode_window_seconds={encode_window_seconds} must be a positive whole number of "
                f"latent frames ({flow.codes_per_frame} codes at {tokenizer.frame_rate:g} Hz each)"
            )
        self.encode_window_codes = round(window) * flow.codes_per_frame
        missing = [
            name
            for name, path in (
                ("tokenizer_checkpoint", tokenizer_checkpoint),
                ("flow_checkpoint", flow_checkpoint),
                ("vocoder_checkpoint", vocoder_checkpoint),
            )
            if path is None
        ]
        if missing and require_checkpoints:
            raise ValueError(
                f"{FIELD}: {', '.join(missing)} null: give the stage checkpoint(s) "
                "(or require_checkpoints: false for a bundle or a test with untrained weights)"
            )
        if tokenizer_checkpoint is not None:
            field = f"{FIELD}.tokenizer_checkpoint"
            _load_prefixed(
                tokenizer, _load_checkpoint(tokenizer_checkpoint, field), "tokenizer.", tokenizer_checkpoint, field
            )
        if flow_checkpoint is not None:
            field = f"{FIELD}.flow_checkpoint"
            checkpoint = _load_checkpoint(flow_checkpoint, field)
            _load_prefixed(flow, checkpoint, "flow.", flow_checkpoint, field)
            loaded = MelVAE.from_checkpoint(flow_checkpoint)
            if melvae is not None and loaded.config() != melvae.config():
                diff = {
                    k: (melvae.config().get(k), v) for k, v in loaded.config().items() if melvae.config().get(k) != v
                }
                raise ValueError(
                    f"{field}={flow_checkpoint}: its Mel-VAE differs from {FIELD}.melvae in {diff} (yaml, file)"
                )
            melvae = loaded
        if melvae is None:
            raise ValueError(f"{FIELD}.melvae is null and there is no flow_checkpoint to take the Mel-VAE from")
        if vocoder_checkpoint is not None:
            vocoder = self._load_vocoder(vocoder, vocoder_checkpoint, f"{FIELD}.vocoder_checkpoint")
        vocoder.remove_weight_norm()  # inference: plain weights (bundles store them so)
        self.tokenizer, self.flow, self.melvae, self.vocoder = tokenizer, flow, melvae, vocoder
        self.requires_grad_(False)
        self._check_geometry(flow_checkpoint or f"{FIELD}.flow", vocoder_checkpoint or f"{FIELD}.vocoder")
        if missing and int(melvae.normalizer.count) == 0:
            warnings.warn(
                f"{FIELD}: {', '.join(missing)} null and no latent statistics: untrained MuCodec (tests only); "
                "the statistics are set to mean 0, std 1",
                stacklevel=2,
            )
            with torch.no_grad():
                melvae.normalizer.count.fill_(1)
                melvae.normalizer.sum.zero_()
                melvae.normalizer.sum_sq.fill_(1.0)
        if int(melvae.normalizer.count) == 0:
            raise ValueError(
                f"{FIELD}.flow_checkpoint={flow_checkpoint}: the Mel-VAE has no latent statistics (count 0): "
                "give a flow stage checkpoint written after at least one training batch"
            )
        self.sample_rate = int(melvae.sample_rate)
        self.channels = int(melvae.audio_channels)
        self.num_steps, self.guidance_scale, self.seed = num_steps, guidance_scale, seed
        self.window_codes, self.hop_codes = window_codes, hop_codes
        self.bandwidths = [self.bitrate(self.n_q)]
        self.eval()

    # -- loading ---------------------------------------------------------------------------------
    @staticmethod
    def _load_vocoder(vocoder: HifiGanVocoder, path: str, field: str) -> HifiGanVocoder:
        if Path(path).is_dir():
            loaded = HifiGanVocoder.from_pretrained(path, weight_norm=vocoder.weight_norm)
            config = loaded.config()
        else:
            checkpoint = _load_checkpoint(path, field)
            config = checkpoint.get(VOCODER_CONFIG_KEY)
            if config is None:
                raise ValueError(f"{field}={path}: no {VOCODER_CONFIG_KEY!r}: not a vocoder stage checkpoint")
            loaded = None
        mine = vocoder.config()
        diff = {k: (mine.get(k), v) for k, v in config.items() if k != "weight_norm" and mine.get(k) != v}
        if diff:
            raise ValueError(f"{field}={path}: the vocoder differs from {FIELD}.vocoder in {diff} (yaml, file)")
        if loaded is not None:
            return loaded
        if bool(config.get("weight_norm")) != vocoder.weight_norm:
            vocoder = HifiGanVocoder(**config)
        _load_prefixed(vocoder, checkpoint, "vocoder.", path, field)
        return vocoder

    def _check_geometry(self, flow_source: str, vocoder_source: str) -> None:
        vae, flow, tok = self.melvae, self.flow, self.tokenizer
        checks = [
            ("flow.latent_channels", flow.latent_channels, "the Mel-VAE's latent channels", vae.stacked_channels),
            ("flow.latent_bins", flow.latent_bins, "the Mel-VAE's latent bins", vae.latent_bins),
            ("flow.codebook_sizes", list(flow.codebook_sizes), "tokenizer codebook_sizes", list(tok.codebook_sizes)),
            (
                "flow.codes_per_frame x Mel-VAE latent rate (Hz)",
                flow.codes_per_frame * vae.latent_rate,
                "tokenizer frame_rate",
                float(tok.frame_rate),
            ),
        ]
        for field, mine, what, theirs in checks:
            if mine != theirs:
                raise ValueError(f"{flow_source}: {FIELD}.{field} = {mine} but {what} = {theirs}")
        self.vocoder.check_mel_matches(vae, vocoder_source)

    # -- the interface ---------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return float(self.tokenizer.frame_rate)

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.tokenizer.codebook_sizes)

    def train(self, mode: bool = True) -> MuCodec:
        return super().train(False)  # inference only: BatchNorm and dropout stay in eval mode

    @torch.no_grad()
    def encode(
        self, x: Tensor, bandwidth: float | None = None, n_q: int | None = None, sample_rate: int | None = None
    ) -> EncodedAudio:
        """(B, C, T) audio (C = 1 or 2) at ``sample_rate`` (default the codec's, 48 kHz) -> codes (B, K, T25)."""
        k = self.resolve_n_q(bandwidth, n_q)
        if k != self.n_q:
            raise ValueError(f"MuCodec codes all {self.n_q} codebooks (its flow was trained on their sum); got n_q={k}")
        if x.dim() != 3 or x.shape[1] not in (1, 2):
            raise ValueError(f"x must be (B, 1 or 2, T) audio, got {tuple(x.shape)}")
        rate = self.sample_rate if sample_rate is None else int(sample_rate)
        length = x.shape[-1] if rate == self.sample_rate else math.ceil(x.shape[-1] * self.sample_rate / rate)
        audio = resample(x.float().contiguous(), rate, self.tokenizer.sample_rate)
        # zero-pad to whole latent frames (codes_per_frame code hops) so the codes cover every sample
        hop = round(self.tokenizer.sample_rate / self.frame_rate)
        block = hop * self.flow.codes_per_frame
        audio = nn.functional.pad(audio, (0, (-audio.shape[-1]) % block))
        window = self.encode_window_codes * hop
        pieces = []
        for start in range(0, audio.shape[-1], window):  # independent windows (official sound2code)
            piece = audio[..., start : start + window]
            pieces.append(self.tokenizer.encode(piece, k).codes.long()[..., : piece.shape[-1] // hop])
        codes = torch.cat(pieces, dim=-1)
        need = math.ceil(length / self.samples_per_frame)  # the .cpc header's frame count
        if codes.shape[-1] < need:
            raise RuntimeError(
                f"the tokenizer gave {codes.shape[-1]} code frames for {length} samples; expected {need}"
            )
        codes = codes[..., :need]
        return EncodedAudio(codes=codes, scale=None, length=length)

    def check_codes(self, codes: Tensor) -> None:
        if codes.dim() != 3 or codes.shape[1] != self.n_q:
            raise ValueError(f"codes must be (B, {self.n_q}, T) (all codebooks), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        for k, size in enumerate(self.codebook_sizes):
            lo, hi = int(codes[:, k].min()), int(codes[:, k].max())
            if lo < 0 or hi >= size:
                raise ValueError(f"codes of codebook {k} must be in [0, {size - 1}], got values in [{lo}, {hi}]")

    @torch.no_grad()
    def decode(
        self,
        encoded: EncodedAudio | Tensor,
        codebooks: Sequence[int] | None = None,
        channels: int | None = None,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Codes -> audio (B, C, length) at 48 kHz (see the module docstring); ``channels=1`` mixes the
        stereo output down, ``channels=2`` repeats a mono one. Deterministic (``seed``)."""
        codes = encoded.codes if isinstance(encoded, EncodedAudio) else encoded
        if codebooks is not None and sorted(codebooks) != list(range(self.n_q)):
            raise ValueError(
                f"MuCodec decodes all {self.n_q} codebooks together; "
                f"codebook ablation {list(codebooks)} is not supported"
            )
        self.check_codes(codes)
        tc = codes.shape[-1]
        length = encoded.length if isinstance(encoded, EncodedAudio) else tc * self.samples_per_frame
        mel = self.codes_to_mel(codes.long(), num_steps, guidance_scale)  # (B, C, N, n_mels)
        audio = self.vocoder.synthesize(mel, self.vocoder_chunk_frames, self.vocoder_hop_frames)  # (B, C, N * hop)
        if audio.shape[-1] < length:  # codes given without their audio (a bare tensor) or cut short
            audio = nn.functional.pad(audio, (0, length - audio.shape[-1]))
        audio = audio[..., :length]
        if channels is not None and channels != audio.shape[1]:
            if channels == 1:
                audio = audio.mean(dim=1, keepdim=True)
            elif audio.shape[1] == 1:
                audio = audio.expand(-1, channels, -1).contiguous()
            else:
                raise ValueError(f"channels must be 1 or {audio.shape[1]}, got {channels}")
        return audio

    @torch.no_grad()
    def codes_to_mel(
        self,
        codes: Tensor,
        num_steps: int | None = None,
        guidance_scale: float | None = None,
        condition_scale: float = 1.0,
    ) -> Tensor:
        """(B, K, Tc) codes -> log-mel (B, C, ceil(Tc / r) * d, n_mels), in windows, crossfaded.
        ``condition_scale`` 0 samples the DiT with the condition dropped (zeros: the unconditional
        model, a baseline)."""
        generator = torch.Generator().manual_seed(self.seed)
        steps = self.num_steps if num_steps is None else num_steps
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        if condition_scale != 1.0:
            long = _unconditional_sample_long(self.flow, codes, self.window_codes, self.hop_codes, steps, generator)
        else:
            long = self.flow.sample_long(codes, self.window_codes, self.hop_codes, steps, guidance, generator)
        d = self.melvae.downsample
        mels = [self.melvae.decode(self.melvae.denormalize(z)) for z in long.windows]
        return crossfade(mels, long.overlap * d, dim=2)[:, :, : long.frames * d]

    # -- description -----------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        return {
            **super().describe(),
            "codebooks": "x".join(str(s) for s in self.codebook_sizes),
            "num_steps": str(self.num_steps),
            "guidance_scale": f"{self.guidance_scale:g}",
        }

    def num_parameters(self) -> dict[str, int]:
        parts = {
            "muencoder": self.tokenizer.encoder,
            "quantizer": self.tokenizer.quantizer,
            "flow": self.flow,
            "melvae": self.melvae,
            "vocoder": self.vocoder,
        }
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def _unconditional_sample_long(
    flow: FlowMatchingDiT, codes: Tensor, window: int, hop: int, steps: int, generator: torch.Generator
) -> Any:
    """``flow.sample_long`` with a zero condition in every window (guidance 1 on zeros): the DiT
    without its codes. Done by sampling with guidance 0 (``v_u + 0 (v_c - v_u)`` = the zero-condition
    velocity)."""
    return flow.sample_long(codes, window, hop, steps, 0.0, generator)


__all__ = ["MuCodec"]
