"""MuCodec's flow-matching DiT: codes -> normalized Mel-VAE latents (rectified flow, Euler sampler).

Follows the official code (Xu et al. 2024; xuyaoxun/MuCodec).

Shapes (real config: 32 latent channels = stereo x 16, 32 bins, 12.5 Hz latents, 25 Hz codes):

    codes       (B, K, Tc)                 K codebooks at the code rate (25 Hz)
    condition   (B, Cl, Tl, Fl)            the quantizer's own ``from_codes`` vectors (B, D, Tc) (D = 1024,
                                           the sum over codebooks), Linear(D, Cl / r * Fl); each group of
                                           r = ``codes_per_frame`` (2) code frames stacked into Cl channels
                                           x Fl bins = one latent frame (official ``inference_codes``)
    latent x    (B, Cl, Tl, Fl)            normalized Mel-VAE latents (the target x1), the noisy x_t
    DiT input   (B, 3 * Cl, Tl, Fl)        concat on channels: [x_t, in-context prompt, condition] (96)
    velocity    (B, Cl, Tl, Fl)

The DiT is diffusers ``Transformer2DModel`` (``norm_type="ada_norm_single"``, patch 2, no cross
attention; the real sizes are the official ``configs/models/transformer2D.json``: 742M parameters).
Time runs along the image height, mel bins along its width. The timestep given to the DiT is
``t * timestep_scale`` (1000, the official ``t*1000``), embedded as the official
``PixArtAlphaCombinedFlowEmbeddings``: a ``timestep_channels`` (512) wide [cos, sin] sinusoid, not
stock diffusers' 256, so the DiT has the official layout.

Rectified flow with sigma_min (official ``BASECFM``): ``x_t = (1 - (1 - sigma_min) t) x0 + t x1`` with x0
~ N(0, I) and t ~ U(0, 1); the target velocity is ``x1 - (1 - sigma_min) x0``; MSE. The Euler sampler
integrates t = 0 -> 1 on a linear grid; the in-context region (the first ``prompt_length`` latent
frames, whose clean latents are the prompt channels) is re-noised to ``x_t`` of its prompt at every
step and replaced by the prompt at the end. Classifier-free guidance: the unconditional branch sees
zeros as the condition (prompt unchanged); ``v = v_u + s (v_c - v_u)``, s = 1 is the conditional
prediction. Latent frames past the valid code length take a learned "empty" embedding.

Long audio (official ``code2sound``): windows of 1024 codes (40.96 s) with hop 768; every window after
the first takes the previous window's last (1024 - 768) / 2 = 128 latent frames as its prompt; the
windows are decoded on their own and crossfaded linearly over the overlap (:func:`crossfade`).

The quantizer lives inside the flow model (official ``PromptCondAudioDiffusion.rvq_muencoder_emb``):
the flow stage starts it from the tokenizer stage's quantizer and trains its codebooks and output
projections jointly with the DiT through ``from_codes`` (``train_quantizer``; false keeps it frozen).
Its input projections are not used by ``from_codes`` and stay frozen.

Codes come from a :class:`CodeSource`: the MuEncoder + tokenizer, or for tests
:class:`RandomProjectionCodeSource` (a frozen random-projection quantizer of a log-mel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import Transformer2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

from codecplatform.checkpoints.io import read_checkpoint
from codecplatform.dsp.spectral import log_mel_spectrogram, mel_filterbank
from codecplatform.quantizers.factorized import FactorizedResidualVectorQuantizer

VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, C, T, F), t (B,)) -> velocity (B, C, T, F)


# -- rectified flow: pure functions -----------------------------------------------------------------
def _per_example(t: Tensor, like: Tensor) -> Tensor:
    return t.to(like).reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, sigma_min: float = 1e-4) -> Tensor:
    """``x_t = (1 - (1 - sigma_min) t) x0 + t x1`` with t (B,) or a scalar."""
    t = _per_example(t.expand(x0.shape[0]) if t.dim() == 0 else t, x0)
    return (1 - (1 - sigma_min) * t) * x0 + t * x1


def target_velocity(x0: Tensor, x1: Tensor, sigma_min: float = 1e-4) -> Tensor:
    """d x_t / dt = ``x1 - (1 - sigma_min) x0``."""
    return x1 - (1 - sigma_min) * x0


def flow_matching_loss(velocity: Tensor, target: Tensor, frame_mask: Tensor | None = None) -> Tensor:
    """Mean squared error of (B, C, T, F) velocities, over the frames where ``frame_mask`` (B, T) is
    true (all when None)."""
    if velocity.shape != target.shape:
        raise ValueError(f"velocity {tuple(velocity.shape)} and target {tuple(target.shape)} differ in shape")
    err = (velocity.float() - target.float()).pow(2)
    if frame_mask is None:
        return err.mean()
    mask = frame_mask[:, None, :, None].to(err)  # (B, 1, T, 1)
    count = mask.sum() * err.shape[1] * err.shape[3]
    return (err * mask).sum() / count.clamp(min=1)


def prompt_mask(lengths: Tensor, frames: int) -> Tensor:
    """(B,) prompt lengths -> (B, 1, frames, 1) bool, true on the in-context frames."""
    return (torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None])[:, None, :, None]


def euler_solve(
    velocity_fn: VelocityFn,
    noise: Tensor,
    num_steps: int,
    sigma_min: float = 1e-4,
    prompt: Tensor | None = None,
    prompt_lengths: Tensor | None = None,
) -> Tensor:
    """Integrate dx/dt = velocity_fn(x, t) from t = 0 (x = ``noise``) to 1 with ``num_steps`` Euler
    steps on a linear grid. With a ``prompt`` (B, C, T, F) and ``prompt_lengths`` (B,), the first
    frames of each example are set to the prompt's ``x_t`` (the same noise) before every step and to
    the prompt itself at the end (official ``BASECFM.solve_euler``)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t_span = torch.linspace(0, 1, num_steps + 1, device=noise.device, dtype=torch.float64)
    x = noise.clone()
    mask = None
    if prompt is not None and prompt_lengths is not None and bool((prompt_lengths > 0).any()):
        mask = prompt_mask(prompt_lengths.to(noise.device), noise.shape[2])
    batch = noise.shape[0]
    for i in range(num_steps):
        t, dt = t_span[i], t_span[i + 1] - t_span[i]
        if mask is not None:
            x = torch.where(mask, interpolate(noise, prompt, t.float(), sigma_min), x)
        v = velocity_fn(x, t.float().expand(batch))
        x = x + float(dt) * v
    if mask is not None:
        x = torch.where(mask, prompt, x)
    return x


def crossfade(segments: Sequence[Tensor], overlap: int, dim: int = -1) -> Tensor:
    """Join ``segments`` that overlap by ``overlap`` samples along ``dim`` with a linear crossfade
    (official ``code2sound``: the earlier segment fades out while the next fades in)."""
    if not segments:
        raise ValueError("crossfade: no segments")
    out = segments[0]
    for seg in segments[1:]:
        if overlap <= 0:
            out = torch.cat([out, seg], dim)
            continue
        if out.shape[dim] < overlap or seg.shape[dim] < overlap:
            raise ValueError(f"crossfade: segments shorter than the overlap {overlap}")
        ramp = torch.linspace(0, 1, overlap, device=seg.device, dtype=seg.dtype)
        shape = [1] * seg.dim()
        shape[dim] = overlap
        ramp = ramp.reshape(shape)
        head, tail = out.narrow(dim, 0, out.shape[dim] - overlap), out.narrow(dim, out.shape[dim] - overlap, overlap)
        mixed = tail * (1 - ramp) + seg.narrow(dim, 0, overlap) * ramp
        out = torch.cat([head, mixed, seg.narrow(dim, overlap, seg.shape[dim] - overlap)], dim)
    return out


# -- code sources ------------------------------------------------------------------------------------
class CodeSource(nn.Module):
    """Frozen audio -> discrete codes, the flow stage's conditioning input.

    ``codes(x)``: (B, C, T) audio at ``sample_rate`` -> (B, K, T') long codes at ``frame_rate`` Hz,
    K = len(codebook_sizes), codes[:, k] < codebook_sizes[k]. Always in eval mode, never trained
    (its parameters are frozen by :meth:`freeze`). To plug in the MuEncoder + tokenizer, subclass this
    and load the tokenizer checkpoint in ``__init__``.
    """

    sample_rate: int
    frame_rate: float
    codebook_sizes: list[int]

    def codes(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def freeze(self) -> CodeSource:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> CodeSource:
        return super().train(False)  # frozen: BatchNorm/dropout stay in eval mode


class RandomProjectionCodeSource(CodeSource):
    """A deterministic stand-in tokenizer: per codebook k, a frozen Xavier random projection of the
    per-frame standardized log-mel (n_mels -> dim) and a random codebook of unit vectors; the code
    is the entry of highest cosine similarity (BEST-RQ's quantizer, applied to the mel directly).

    The audio is mixed to mono (mean of the channels) and analysed at ``sample_rate`` with hop
    ``sample_rate / frame_rate`` (960 at 24 kHz, 25 Hz) and n_fft ``2 * hop``: T' = 1 + T // hop.
    Everything is drawn from ``seed``: same seed, same codes; buffers are not saved.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        frame_rate: float = 25.0,
        codebook_sizes: Sequence[int] = (16384,),
        n_mels: int = 128,
        dim: int = 16,
        seed: int = 0,
    ):
        super().__init__()
        hop = sample_rate / frame_rate
        if hop != int(hop):
            raise ValueError(f"sample_rate / frame_rate must be an integer hop, got {hop}")
        self.sample_rate, self.frame_rate, self.hop = sample_rate, float(frame_rate), int(hop)
        self.codebook_sizes = [int(n) for n in codebook_sizes]
        self.n_fft = 2 * self.hop
        with torch.device("cpu"):
            g = torch.Generator().manual_seed(seed)
            fb = mel_filterbank(sample_rate, self.n_fft, n_mels)
            bound = math.sqrt(6.0 / (n_mels + dim))  # Xavier uniform
            projections = (torch.rand(len(self.codebook_sizes), n_mels, dim, generator=g) * 2 - 1) * bound
            books = [F.normalize(torch.randn(n, dim, generator=g), dim=-1) for n in self.codebook_sizes]
        self.register_buffer("filterbank", fb, persistent=False)
        self.register_buffer("projections", projections, persistent=False)
        for k, book in enumerate(books):
            self.register_buffer(f"codebook_{k}", book, persistent=False)
        self.freeze()

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must be (B, C, T) audio, got {tuple(x.shape)}")
        mono = x.float().mean(dim=1, keepdim=True)  # (B, 1, T)
        mel = log_mel_spectrogram(mono, self.filterbank, self.n_fft, self.hop)[:, 0]  # (B, T', n_mels)
        mel = (mel - mel.mean(-1, keepdim=True)) / mel.std(-1, keepdim=True).clamp(min=1e-5)
        out = []
        for k in range(len(self.codebook_sizes)):
            h = F.normalize(mel @ self.projections[k], dim=-1)  # (B, T', dim)
            out.append((h @ getattr(self, f"codebook_{k}").T).argmax(-1))  # (B, T')
        return torch.stack(out, dim=1)  # (B, K, T')


class TokenizerCodeSource(CodeSource):
    """A trained tokenizer as the code source: any module with ``sample_rate``, ``frame_rate``,
    ``codebook_sizes`` and ``encode(x) -> EncodedAudio`` (``.codes`` (B, K, T')), e.g.
    ``codecplatform.mucodec.tokenizer.MuCodecTokenizer`` built from its YAML geometry.

    ``checkpoint``: a tokenizer stage ``.ckpt`` (state under ``tokenizer.``) or a plain state dict of
    the tokenizer, loaded strictly (read by :func:`~codecplatform.checkpoints.io.read_checkpoint`:
    tensors and plain data only); None keeps the given (random) weights (tests only).
    """

    def __init__(self, tokenizer: nn.Module, checkpoint: str | None = None):
        super().__init__()
        for attr in ("sample_rate", "frame_rate", "codebook_sizes", "encode"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer {type(tokenizer).__name__} has no {attr!r}: not a tokenizer")
        if checkpoint is not None:
            state = read_checkpoint(
                checkpoint,
                "tokenizer checkpoint (code_source.init_args.checkpoint)",
                missing=f"code_source.init_args.checkpoint={checkpoint}: no such file (train the tokenizer first)",
            )
            state = state.get("state_dict", state)
            sub = {k[len("tokenizer.") :]: v for k, v in state.items() if k.startswith("tokenizer.")} or state
            tokenizer.load_state_dict(sub, strict=True)
        self.tokenizer = tokenizer
        self.sample_rate = int(tokenizer.sample_rate)
        self.frame_rate = float(tokenizer.frame_rate)
        self.codebook_sizes = [int(n) for n in tokenizer.codebook_sizes]
        self.freeze()

    @torch.no_grad()
    def codes(self, x: Tensor) -> Tensor:
        return self.tokenizer.encode(x).codes


# -- the model -------------------------------------------------------------------------------------
@dataclass
class LongSample:
    """Windows of a long generation. windows: each (B, Cl, window / r, Fl) normalized latents;
    overlap: latent frames each window shares with the previous one; frames: valid latent frames in
    total (the joined windows are cropped to them)."""

    windows: list[Tensor]
    overlap: int
    frames: int


class FlowMatchingDiT(nn.Module):
    """The conditioning (codes -> quantizer vectors -> latent-shaped condition) and the velocity DiT.

    Args:
        transformer: ``Transformer2DModel`` init arguments (the official transformer2D.json);
            ``in_channels`` must be 3 * latent_channels and ``out_channels`` latent_channels.
        quantizer: the tokenizer's residual quantizer (same geometry as the tokenizer stage's); its
            ``decode`` (official ``from_codes``) gives the (B, D, Tc) vectors of the codes.
        train_quantizer: train the quantizer's codebooks and output projections with the flow
            (official: the quantizer is part of the flow model) or keep it frozen.
        latent_channels, latent_bins: the normalized Mel-VAE latent (32, 32).
        codes_per_frame: code frames per latent frame (2: 25 Hz codes, 12.5 Hz latents).
        sigma_min: of the rectified flow.
        timestep_scale: t in [0, 1] is given to the DiT as ``t * timestep_scale``.
        timestep_channels: width of the timestep sinusoid (official 512; stock diffusers 256).
        condition_dropout: probability (per example, training) of a zero condition, for CFG.
    """

    def __init__(
        self,
        transformer: dict[str, Any],
        quantizer: FactorizedResidualVectorQuantizer,
        train_quantizer: bool = True,
        latent_channels: int = 32,
        latent_bins: int = 32,
        codes_per_frame: int = 2,
        sigma_min: float = 1e-4,
        timestep_scale: float = 1000.0,
        condition_dropout: float = 0.1,
        timestep_channels: int = 512,
    ):
        super().__init__()
        config = dict(transformer)
        expected = {"in_channels": 3 * latent_channels, "out_channels": latent_channels, "norm_type": "ada_norm_single"}
        for key, value in expected.items():
            if config.get(key) != value:
                raise ValueError(
                    f"transformer.{key} must be {value} (latent_channels={latent_channels}), got {config.get(key)}"
                )
        if config.get("cross_attention_dim") is not None:
            raise ValueError("transformer.cross_attention_dim must be null: the condition is concatenated on channels")
        if latent_channels % codes_per_frame:
            raise ValueError(
                f"latent_channels={latent_channels} must be a multiple of codes_per_frame={codes_per_frame}"
            )
        if not 0 <= condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        self.transformer = Transformer2DModel(**config)
        emb = self.transformer.adaln_single.emb  # the official timestep embedding (see the module docstring)
        emb.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        emb.timestep_embedder = TimestepEmbedding(timestep_channels, emb.timestep_embedder.linear_1.out_features)
        self.patch_size = int(config.get("patch_size") or 1)
        self.quantizer = quantizer
        self.train_quantizer = train_quantizer
        self.codebook_sizes = [int(n) for n in quantizer.codebook_sizes]
        self.code_dim, self.latent_channels, self.latent_bins = int(quantizer.dimension), latent_channels, latent_bins
        self.codes_per_frame = codes_per_frame
        self.sigma_min, self.timestep_scale, self.condition_dropout = sigma_min, timestep_scale, condition_dropout
        self.quantizer.requires_grad_(train_quantizer)
        for layer in self.quantizer.layers:  # from_codes does not use the input projections
            layer.in_proj.requires_grad_(False)
        self.condition_projection = nn.Linear(self.code_dim, latent_channels // codes_per_frame * latent_bins)
        self.empty_embedding = nn.Parameter(torch.randn(latent_channels * latent_bins))  # official zero_cond_embedding1

    # -- conditioning --------------------------------------------------------------------------
    def condition(self, codes: Tensor, frames: int | None = None, valid_codes: Tensor | None = None) -> Tensor:
        """(B, K, Tc) codes -> (B, Cl, frames, Fl) condition: ``Linear(quantizer.decode(codes))``, r code
        frames stacked per latent frame. ``frames`` defaults to ceil(Tc / r); latent frames not fully
        covered by valid codes (``valid_codes`` (B,) counts, default Tc) take the empty embedding."""
        if codes.dim() != 3 or codes.shape[1] != len(self.codebook_sizes):
            raise ValueError(f"codes must be (B, {len(self.codebook_sizes)}, T), got {tuple(codes.shape)}")
        b, _, tc = codes.shape
        r = self.codes_per_frame
        frames = math.ceil(tc / r) if frames is None else frames
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_quantizer):
            emb = self.quantizer.decode(codes).transpose(1, 2)  # (B, D, Tc) -> (B, Tc, D)
        need = frames * r
        emb = F.pad(emb, (0, 0, 0, max(0, need - tc)))[:, :need]  # (B, frames * r, D)
        h = self.condition_projection(emb)  # (B, frames * r, Cl / r * Fl)
        h = h.reshape(b, frames, self.latent_channels, self.latent_bins).permute(0, 2, 1, 3)  # (B, Cl, frames, Fl)
        valid_codes = torch.full((b,), tc, device=codes.device) if valid_codes is None else valid_codes.clamp(max=tc)
        valid_frames = torch.div(valid_codes, r, rounding_mode="floor")  # frames whose r codes all exist
        valid = (torch.arange(frames, device=codes.device)[None, :] < valid_frames[:, None])[:, None, :, None]
        empty = self.empty_embedding.reshape(1, self.latent_channels, 1, self.latent_bins).to(h)
        return torch.where(valid, h, empty)

    # -- velocity ------------------------------------------------------------------------------
    def velocity(self, x_t: Tensor, t: Tensor, prompt: Tensor, condition: Tensor) -> Tensor:
        """DiT velocity of x_t (B, Cl, T, Fl) at t (B,), given the prompt channels and the condition."""
        if x_t.shape[1] != self.latent_channels or x_t.shape[3] != self.latent_bins:
            raise ValueError(f"x_t must be (B, {self.latent_channels}, T, {self.latent_bins}), got {tuple(x_t.shape)}")
        if prompt.shape != x_t.shape or condition.shape != x_t.shape:
            raise ValueError(
                f"x_t {tuple(x_t.shape)}, prompt {tuple(prompt.shape)} and condition {tuple(condition.shape)} "
                "must have one shape"
            )
        frames, p = x_t.shape[2], self.patch_size
        h = torch.cat([x_t, prompt, condition], dim=1)  # (B, 3 Cl, T, Fl)
        pad_t, pad_f = (-frames) % p, (-self.latent_bins) % p
        if pad_t or pad_f:
            h = F.pad(h, (0, pad_f, 0, pad_t))
        timestep = (t.reshape(-1).expand(x_t.shape[0]) * self.timestep_scale).to(h.dtype)
        out = self.transformer(h, timestep=timestep, return_dict=False)[0]  # (B, Cl, T', F')
        return out[:, :, :frames, : self.latent_bins]

    def guided_velocity(
        self, x_t: Tensor, t: Tensor, prompt: Tensor, condition: Tensor, guidance_scale: float = 1.0
    ) -> Tensor:
        """``v_u + s (v_c - v_u)`` with v_u the velocity under a zero condition; s = 1: ``v_c`` alone."""
        if guidance_scale == 1.0:
            return self.velocity(x_t, t, prompt, condition)
        both = self.velocity(
            torch.cat([x_t, x_t]),
            torch.cat([t, t]),
            torch.cat([prompt, prompt]),
            torch.cat([torch.zeros_like(condition), condition]),
        )
        v_uncond, v_cond = both.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    # -- training ------------------------------------------------------------------------------
    def loss(
        self,
        x1: Tensor,
        condition: Tensor,
        prompt_lengths: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching loss of normalized latents x1 (B, Cl, T, Fl) given the condition: random t,
        noise and condition dropout (from ``generator``); the first ``prompt_lengths`` frames are the
        in-context prompt (clean in the prompt channels) and are left out of the loss."""
        b, _, frames, _ = x1.shape
        device = x1.device

        def rand(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device="cpu").to(device)

        t = rand(b)
        x0 = torch.randn(x1.shape, generator=generator, device="cpu").to(x1)
        x_t = interpolate(x0, x1, t, self.sigma_min)
        target = target_velocity(x0, x1, self.sigma_min)
        lengths = (
            torch.zeros(b, dtype=torch.long, device=device) if prompt_lengths is None else prompt_lengths.to(device)
        )
        in_context = prompt_mask(lengths, frames)  # (B, 1, T, 1)
        prompt = torch.where(in_context, x1, torch.zeros_like(x1))
        dropped = rand(b) < self.condition_dropout if self.training else torch.zeros(b, dtype=torch.bool, device=device)
        condition = torch.where(dropped[:, None, None, None], torch.zeros_like(condition), condition)
        velocity = self.velocity(x_t, t, prompt, condition)
        loss = flow_matching_loss(velocity, target, ~in_context[:, 0, :, 0])
        return loss, {"condition_dropped": dropped.float().mean(), "prompt_frames": lengths.float().mean()}

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        codes: Tensor,
        frames: int | None = None,
        prompt: Tensor | None = None,
        prompt_lengths: Tensor | None = None,
        valid_codes: Tensor | None = None,
        num_steps: int = 50,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Normalized latents (B, Cl, frames, Fl) for ``codes`` (B, K, Tc); optional in-context
        ``prompt`` (normalized latents, its first ``prompt_lengths`` frames used)."""
        condition = self.condition(codes, frames, valid_codes)
        b, _, frames, _ = condition.shape
        noise = torch.randn(condition.shape, generator=generator, device="cpu").to(condition)
        if prompt is None:
            prompt_in, lengths = torch.zeros_like(noise), torch.zeros(b, dtype=torch.long, device=noise.device)
        else:
            if prompt.shape[2] < frames:
                prompt = F.pad(prompt, (0, 0, 0, frames - prompt.shape[2]))
            prompt = prompt[:, :, :frames].to(noise)
            lengths = torch.as_tensor(prompt_lengths if prompt_lengths is not None else 0, device=noise.device)
            lengths = lengths.expand(b).clamp(max=frames).long()
            prompt_in = torch.where(prompt_mask(lengths, frames), prompt, torch.zeros_like(prompt))

        def velocity_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.guided_velocity(x, t, prompt_in, condition, guidance_scale)

        return euler_solve(velocity_fn, noise, num_steps, self.sigma_min, prompt_in, lengths)

    @torch.no_grad()
    def sample_long(
        self,
        codes: Tensor,
        window: int = 1024,
        hop: int = 768,
        num_steps: int = 50,
        guidance_scale: float = 1.5,
        generator: torch.Generator | None = None,
    ) -> LongSample:
        """Codes of any length in windows of ``window`` codes with hop ``hop``; window i > 0 takes the
        last (window - hop) / r latent frames of window i - 1 as its prompt. The last window's
        missing codes are padding (empty embedding)."""
        r = self.codes_per_frame
        if window % r or hop % r or not 0 < hop <= window:
            raise ValueError(f"need 0 < hop <= window, both multiples of {r}; got window={window}, hop={hop}")
        b, k, tc = codes.shape
        overlap = (window - hop) // r
        n_windows = max(1, math.ceil((tc - (window - hop)) / hop))
        padded = F.pad(codes, (0, (n_windows - 1) * hop + window - tc))
        windows: list[Tensor] = []
        for i in range(n_windows):
            start = i * hop
            valid = torch.full((b,), max(0, min(window, tc - start)), device=codes.device)
            prompt, lengths = None, None
            if windows and overlap:
                prompt = windows[-1][:, :, -overlap:]
                lengths = torch.full((b,), overlap, device=codes.device)
            windows.append(
                self.sample(
                    padded[:, :, start : start + window],
                    window // r,
                    prompt,
                    lengths,
                    valid,
                    num_steps,
                    guidance_scale,
                    generator,
                )
            )
        return LongSample(windows=windows, overlap=overlap, frames=math.ceil(tc / r))
