"""The residual loop shared by residual quantizers (EMA and factorized codebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from codecplatform.quantizers.base import Quantizer
from codecplatform.types import QuantizerOutput


@dataclass
class ResidualPass:
    """What ``residual_stack`` returns.

    z_q:    (B, D, T') sum of the layer outputs each example uses; z itself where n_q = 0.
    codes:  (B, max(n_q), T') codes of the layers up to the largest count (entries of layers an
            example does not use are computed: on the masked residual with ``mask_residual``, else on
            the full residual, as ``encode`` gives them).
    losses: per layer run, that layer's losses (averaged over its active examples).
    active: per layer run, (B,) bool: the examples its losses average over (those that use it;
            with ``mask_residual=False`` those not bypassed).
    """

    z_q: Tensor
    codes: Tensor
    losses: list[dict[str, Tensor]]
    active: list[Tensor]


class StageHook(nn.Module):
    """Transforms the residual before a residual stage quantizes it: (B, D, T'), stage k -> (B, D, T').

    The base hook is the identity. A quantizer variant that filters the residual per stage
    (MUFFIN's multi-band spectral RVQ, :mod:`codecplatform.quantizers.band_limit`) subclasses it; the
    residual loop (:func:`residual_stack`) applies it in training and in ``encode`` alike, so
    codes from ``encode`` are exactly the codes training produced. Stage k's output is
    subtracted from the *unfiltered* residual.
    """

    def forward(self, residual: Tensor, stage: int) -> Tensor:
        return residual


def residual_stack(
    layers: Sequence[nn.Module],
    z: Tensor,
    n_q: Tensor,
    *,
    detach_outputs: bool,
    n_layers: int | None = None,
    hook: StageHook | None = None,
    inference: bool = False,
    mask_residual: bool = True,
    straight_through: bool = False,
) -> ResidualPass:
    """THE residual loop: run residual quantization layers on z (B, D, T') with per-example
    counts n_q (B,). Training, evaluation and ``encode`` all go through it.

    Before layer k, ``hook(residual, k)`` (default: identity) gives the layer's input. With
    ``inference=True`` (``ResidualQuantizer.encode``) layer k is looked up with
    ``layers[k].encode(input) -> (B, T')`` and ``layers[k].decode(codes) -> (B, D, T')``, no
    losses and no codebook updates. In training/evaluation layer k returns a QuantizerOutput with
    codes (B, 1, T'); it is called, by ``mask_residual``:

    - True (ours before; DAC, whose inactive stages add no loss): ``layers[k](input, mask)`` with
      ``mask = n_q > k``; the output, masked, is subtracted from the residual and added to the sum,
      so a stage sees (and learns from) only the examples that use it.
    - False (SpectroStream's official RVQ, magenta-realtime ``magenta_rt/jax/spectrostream.py``:
      every stage computes "the unmasked quantized value"): ``layers[k](input, n_q > 0, all)``
      (loss mask: the examples not bypassed; update mask: every frame); the unmasked output is
      subtracted from the residual and only the sum is masked, so every stage run learns from every
      frame, as it is used at inference with all its codebooks.

    ``detach_outputs`` detaches each output first (EMA stacks: the straight-through estimator is
    applied once for the sum by the caller, as ``ema_residual.py``, or per stage); without it
    gradients flow through every layer and every residual (DAC). ``straight_through`` (with
    ``detach_outputs``): stage k adds ``input + (output - input).detach()`` to the sum (value: the
    output; gradient: that of the stage's input), as MUFFIN's official ``specEMAQuantizeModules.py``;
    with a band-limiting hook d z_q / d z is then the sum of the used stages' band filters.

    ``n_layers`` (default ``max(n_q)``) layers are run; running more (DAC in training: all of
    them) keeps every parameter in the graph with a zero gradient. Examples with n_q = 0
    bypass the quantizer: their z_q is z (gradient: identity).
    """
    if straight_through and not detach_outputs:
        raise ValueError("straight_through applies to detached outputs (EMA codebooks): set detach_outputs")
    if n_layers is None:
        n_layers = int(n_q.max()) if n_q.numel() else 0
    residual = z
    z_q = torch.zeros_like(z)
    codes, losses, active = [], [], []
    everything = torch.ones_like(n_q, dtype=torch.bool)  # (B,)
    for k in range(n_layers):
        mask = n_q > k  # (B,): the examples whose sum uses stage k
        stage_input = residual if hook is None else hook(residual, k)  # (B, D, T')
        if inference:
            c = layers[k].encode(stage_input)  # (B, T')
            out = QuantizerOutput(z_q=layers[k].decode(c), codes=c[:, None, :])
            loss_mask = mask
        elif mask_residual:
            out = layers[k](stage_input, mask)
            loss_mask = mask
        else:
            loss_mask = n_q > 0
            out = layers[k](stage_input, loss_mask, everything)
        q = out.z_q.detach() if detach_outputs else out.z_q
        kept = stage_input + (q - stage_input).detach() if straight_through and not inference else q
        kept = kept * mask[:, None, None]  # what the examples using stage k add to their sum
        if mask_residual:
            q = q * mask[:, None, None]
        residual = residual - q
        z_q = z_q + kept
        codes.append(out.codes)
        losses.append(out.losses)
        active.append(loss_mask)
    bypass = n_q == 0
    if bool(bypass.any()):
        z_q = torch.where(bypass[:, None, None], z, z_q)
    used = int(n_q.max()) if n_q.numel() else 0
    if codes:
        all_codes = torch.cat(codes, dim=1)[:, :used]
    else:
        all_codes = torch.zeros(z.shape[0], 0, z.shape[-1], dtype=torch.long, device=z.device)
    return ResidualPass(z_q=z_q, codes=all_codes, losses=losses, active=active)


class ResidualQuantizer(Quantizer):
    """A quantizer made of ``self.layers``, one codebook each (``layer.encode(z) -> (B, T')``,
    ``layer.decode(codes) -> (B, D, T')``), applied to what the previous layers left. Provides the
    inference path; subclasses provide ``forward``; both run :func:`residual_stack` with
    ``self.stage_hook`` (None: the residual itself is quantized at every stage).
    """

    layers: nn.ModuleList
    # Annotation only, set by every subclass's __init__: a class-level default (None) would shadow the
    # submodule that nn.Module registers in _modules, and the hook would silently never run.
    stage_hook: StageHook | None

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 3 or z.shape[1] != self.dimension:
            raise ValueError(f"z must be (B, {self.dimension}, T'), got shape {tuple(z.shape)}")

    @torch.no_grad()
    def encode(self, z: Tensor, n_q: int | None = None) -> Tensor:
        """(B, D, T') -> codes (B, n_q, T') int64 (n_q in 1..self.n_q, default all)."""
        self._check_latent(z)
        n = self.n_q if n_q is None else n_q
        if not 1 <= n <= self.n_q:
            raise ValueError(f"n_q={n} is out of range: this quantizer has 1..{self.n_q} codebooks")
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            n_q = torch.full((z.shape[0],), n, dtype=torch.long, device=z.device)
            run = residual_stack(self.layers, z, n_q, detach_outputs=True, hook=self.stage_hook, inference=True)
        return run.codes

    def decode(self, codes: Tensor, keep: Sequence[bool] | None = None) -> Tensor:
        """codes (B, K, T') -> z_q (B, D, T'), 1 <= K <= n_q: the sum of the codebooks' entries.

        ``keep`` (K bools, at least one True): sum only the codebooks marked True (codebook
        ablation); default all."""
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.n_q:
            raise ValueError(f"codes must be (B, K, T') with 1 <= K <= {self.n_q}, got shape {tuple(codes.shape)}")
        if keep is None:
            keep = [True] * codes.shape[1]
        if len(keep) != codes.shape[1] or not any(keep):
            raise ValueError(f"keep must hold {codes.shape[1]} flags, at least one True, got {list(keep)}")
        with torch.autocast(device_type=codes.device.type, enabled=False):
            parts = [self.layers[k].decode(codes[:, k]) for k in range(codes.shape[1]) if keep[k]]
            z_q = parts[0]
            for part in parts[1:]:
                z_q = z_q + part
        return z_q
