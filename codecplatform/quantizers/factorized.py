"""DAC's quantizer: factorized (low-dimensional), L2-normalized codebooks in a residual stack.

Kumar et al. 2023 (DAC), section 3.2 and appendix A. ``FactorizedCodebook`` is one layer: a
weight-normed 1x1 conv projects the latent D -> M (``codebook_dim``, 8 in DAC), the nearest entry
is found by cosine similarity, a second weight-normed 1x1 conv maps it back M -> D. The codebook
is a plain ``nn.Embedding`` trained by the VQ-VAE codebook loss (no EMA, no k-means).
``FactorizedResidualVectorQuantizer`` stacks them as DAC's ``ResidualVectorQuantize`` on
:func:`~codecplatform.quantizers.residual.residual_stack`.

Follows the official code (descriptinc/descript-audio-codec ``dac/nn/quantize.py``) where the
paper differs:

* the losses compare the *raw* projected latent and codebook row (L2 normalization is for the
  lookup only), MSE averaged per example over (M, T'), and are *summed* over codebooks (the
  paper's appendix normalizes them);
* straight-through in the projected space, then ``out_proj``: the codebook learns from the
  codebook loss only;
* projection biases start at zero: the official ``init_weights`` writes a weight that weight norm
  recomputes from (g, v), so only the zero biases last.

Stale-code replacement (``stale_tolerance``, off by default): as MuCodec's official quantizer
(xuyaoxun/MuCodec ``libs/rvq/descript_quantize3.py``, ``stale_tolerance=200``), an entry unused
for that many consecutive training steps is replaced by a random L2-normalized projected latent
of the batch, after the lookup (the step's codes and losses use the old entry). Under DDP the
usage is summed over ranks and rank 0's replacement vectors are broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from codecplatform.quantizers.distributed import all_reduce_sum_, broadcast_
from codecplatform.quantizers.dropout import QuantizerDropout
from codecplatform.quantizers.ema_codebook import sample_rows
from codecplatform.quantizers.residual import ResidualQuantizer, StageHook, residual_stack
from codecplatform.types import QuantizerOutput

_LOSSES = ("commit", "codebook")


def masked_mean(per_example: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``per_example`` (B,) over the examples where ``mask`` (B,) is True (0 if none).

    Always a function of every element, so parameters stay in the autograd graph even when no
    example is active (DDP needs every parameter to receive a gradient, zero or not).
    """
    weights = mask.to(per_example.dtype)
    return (per_example * weights).sum() / weights.sum().clamp(min=1.0)


class FactorizedCodebook(nn.Module):
    """One DAC codebook: (B, D, T') -> QuantizerOutput with codes (B, 1, T').

    Args:
        dimension: latent size D (DAC: 1024).
        codebook_size: number of entries K (DAC: 1024).
        codebook_dim: size M of the projected lookup space (DAC: 8).
        stale_tolerance: replace an entry unused for this many consecutive training steps (see
            the module docstring; MuCodec: 200); None (DAC): never.

    Parameters: ``in_proj`` (weight-normed 1x1 conv D -> M), ``out_proj`` (weight-normed 1x1
    conv M -> D), ``codebook`` (``nn.Embedding(K, M)``, default N(0, 1) init as in DAC). With
    ``stale_tolerance``, the buffer ``stale_steps`` (K,) long counts each entry's unused steps
    and ``replaced_codes`` (a plain int, not saved) the entries replaced so far.
    """

    def __init__(
        self, dimension: int, codebook_size: int = 1024, codebook_dim: int = 8, stale_tolerance: int | None = None
    ):
        super().__init__()
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {codebook_size}")
        if codebook_dim < 1:
            raise ValueError(f"codebook_dim must be >= 1, got {codebook_dim}")
        if stale_tolerance is not None and stale_tolerance < 1:
            raise ValueError(f"stale_tolerance must be >= 1 or None, got {stale_tolerance}")
        self.dimension = dimension
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.in_proj = weight_norm(nn.Conv1d(dimension, codebook_dim, kernel_size=1))
        self.out_proj = weight_norm(nn.Conv1d(codebook_dim, dimension, kernel_size=1))
        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        with torch.no_grad():  # the effective init of the official model (see module docstring)
            self.in_proj.bias.zero_()
            self.out_proj.bias.zero_()
        self.stale_tolerance = stale_tolerance
        self.replaced_codes = 0
        if stale_tolerance is not None:
            self.register_buffer("stale_steps", torch.zeros(codebook_size, dtype=torch.long))

    # -- pieces ----------------------------------------------------------------------------
    def lookup(self, z_e: Tensor) -> Tensor:
        """Projected latents (B, M, T') -> codes (B, T'): nearest entry by cosine similarity."""
        b, m, t = z_e.shape
        flat = F.normalize(z_e.transpose(1, 2).reshape(-1, m), dim=1)  # (B,M,T)->(B*T,M)
        entries = F.normalize(self.codebook.weight, dim=1)  # (K, M)
        return (flat @ entries.t()).argmax(dim=1).view(b, t)

    def embed(self, codes: Tensor) -> Tensor:
        """codes (B, T') -> raw (unnormalized) codebook rows (B, M, T')."""
        return self.codebook(codes).transpose(1, 2)

    # -- inference -------------------------------------------------------------------------
    def encode(self, z: Tensor) -> Tensor:
        """(B, D, T') -> codes (B, T')."""
        return self.lookup(self.in_proj(z))

    def decode(self, codes: Tensor) -> Tensor:
        """codes (B, T') -> (B, D, T') through ``out_proj``."""
        return self.out_proj(self.embed(codes))

    # -- training --------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize z (B, D, T'); ``mask`` (B,) bool marks the examples this codebook serves.

        Returns z_q (B, D, T') = out_proj(z_e + sg(e_k - z_e)) (straight-through in the
        projected space, so d z_q / d z = W_out W_in), codes (B, 1, T') and the losses
        ``commit`` = mse(z_e, sg(e_k)) (gradient to in_proj and the input only) and
        ``codebook`` = mse(e_k, sg(z_e)) (gradient to the codebook only), each averaged over
        the masked-in examples.
        """
        b, d, _ = z.shape
        if d != self.dimension:
            raise ValueError(f"latent has {d} channels, codebook dimension is {self.dimension}")
        if mask is None:
            mask = torch.ones(b, dtype=torch.bool, device=z.device)
        z_e = self.in_proj(z)  # (B, M, T')
        codes = self.lookup(z_e)  # (B, T')
        e_k = self.embed(codes)  # (B, M, T')
        commit = F.mse_loss(z_e, e_k.detach(), reduction="none").mean(dim=(1, 2))  # (B,)
        codebook = F.mse_loss(e_k, z_e.detach(), reduction="none").mean(dim=(1, 2))  # (B,)
        z_q = self.out_proj(z_e + (e_k - z_e).detach())
        if self.training and self.stale_tolerance is not None:
            self._replace_stale(z_e.detach(), codes, mask)
        return QuantizerOutput(
            z_q=z_q,
            codes=codes[:, None, :],
            losses={"commit": masked_mean(commit, mask), "codebook": masked_mean(codebook, mask)},
        )

    @torch.no_grad()
    def _replace_stale(self, z_e: Tensor, codes: Tensor, mask: Tensor) -> None:
        """Count the steps each entry went unused (this step's codes of the masked-in examples, all
        ranks) and replace the entries that reached ``stale_tolerance`` (module docstring)."""
        used = torch.bincount(codes[mask].reshape(-1), minlength=self.codebook_size)  # (K,)
        all_reduce_sum_(used)
        self.stale_steps.copy_(torch.where(used > 0, torch.zeros_like(self.stale_steps), self.stale_steps + 1))
        stale = self.stale_steps >= self.stale_tolerance  # identical on every rank
        if not bool(stale.any()):
            return
        pool = z_e.transpose(1, 2)[mask].reshape(-1, self.codebook_dim)  # (B,M,T)->(N*T,M)
        if pool.shape[0] == 0:
            pool = self.codebook.weight
        candidates = broadcast_(F.normalize(sample_rows(pool.float(), self.codebook_size), dim=1).contiguous())
        weight = self.codebook.weight
        weight.copy_(torch.where(stale[:, None], candidates.to(weight.dtype), weight))
        self.stale_steps.masked_fill_(stale, 0)
        self.replaced_codes += int(stale.sum())


class FactorizedResidualVectorQuantizer(ResidualQuantizer):
    """DAC's residual vector quantizer: (B, D, T') -> QuantizerOutput, codes (B, K, T').

    Args:
        dimension: latent size D (DAC: 1024).
        n_q: number of codebooks (DAC 44 kHz: 9).
        codebook_size: entries per codebook (DAC: 1024).
        codebook_dim: lookup space size M, one for all codebooks or one per codebook (DAC: 8).
        dropout: how many codebooks each training example uses (``None``: all of them; DAC's
            recipe: ``PerExampleDropout(p=0.5)``).
        stage_hook: transforms the residual before each stage, in training and ``encode``
            alike (``None``: identity; MUFFIN: ``quantizers.band_limit.BandLimit``).
        stale_tolerance: each codebook replaces entries unused for this many consecutive
            training steps (``FactorizedCodebook``; MuCodec: 200); None (DAC): never.

    Counts per example: ``n_q`` is None (all), an int or a (B,) tensor with values in
    0..n_q. Example b adds (and trains) codebooks 0..n_q[b]-1; n_q[b] = 0 means the example
    bypasses quantization (z_q = z, no codes used, no loss). In training every codebook runs
    on the whole batch, masked (as the official code does), so every parameter receives a
    gradient on every step (DDP without ``find_unused_parameters``); in eval only max(n_q)
    run. The returned codes have K = max(n_q) rows.

    Gradients (as the official code) flow through every layer and residual: with P_i = W_out_i W_in_i,
    d z_q / d z = I - (I - P_{n-1}) ... (I - P_0) for n codebooks, not the identity (unlike
    ``ResidualVectorQuantizer``). The codebooks learn from the codebook loss only.

    Losses (official reduction): for each loss, sum over codebooks of the batch mean of the
    per-example loss with unused codebooks counted as 0, i.e.
    ``loss = (1/B) sum_b sum_{i < n_q[b]} mse_{b,i}``. They are summed, not averaged, over
    codebooks, so DAC's weights (codebook 1.0, commit 0.25) apply unchanged.

    Runs in float32 with autocast disabled; z_q is float32.
    """

    def __init__(
        self,
        dimension: int = 1024,
        n_q: int = 9,
        codebook_size: int = 1024,
        codebook_dim: int | list[int] = 8,
        dropout: QuantizerDropout | None = None,
        stage_hook: StageHook | None = None,
        stale_tolerance: int | None = None,
    ):
        super().__init__()
        if n_q < 1:
            raise ValueError(f"n_q must be >= 1, got {n_q}")
        dims = [codebook_dim] * n_q if isinstance(codebook_dim, int) else list(codebook_dim)
        if len(dims) != n_q:
            raise ValueError(f"codebook_dim has {len(dims)} entries, expected one per codebook ({n_q})")
        self.dimension = dimension
        self.n_q = n_q
        self.loss_names = _LOSSES
        self.codebook_sizes = [codebook_size] * n_q
        self.codebook_dims = dims
        self.dropout = dropout if dropout is not None else QuantizerDropout()
        self.stage_hook = stage_hook
        self.layers = nn.ModuleList(FactorizedCodebook(dimension, codebook_size, m, stale_tolerance) for m in dims)

    def forward(self, z: Tensor, n_q: int | Tensor | None = None) -> QuantizerOutput:
        self._check_latent(z)
        n_q = self._resolve_n_q(z, n_q)  # (B,)
        batch = z.shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            n_layers = self.n_q if self.training else int(n_q.max())
            run = residual_stack(self.layers, z, n_q, detach_outputs=False, n_layers=n_layers, hook=self.stage_hook)
            losses = {}
            for name in _LOSSES:
                total = z.new_zeros(())
                for layer_losses, active in zip(run.losses, run.active):
                    # mean over active examples * active/B == official (loss_b * mask_b).mean()
                    total = total + layer_losses[name] * (active.sum() / batch)
                losses[name] = total
        return QuantizerOutput(z_q=run.z_q, codes=run.codes, losses=losses, n_q=n_q)
