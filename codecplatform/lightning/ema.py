"""Exponential moving average (EMA) of the generator's weights (audiocraft's ``optim.ema``).

audiocraft's compression solver (config/solver/compression/default.yaml: ``optim.ema``: use true,
decay 0.99, updates 1, device = the training device) keeps ``ModuleDictEMA`` over the model: every
parameter and every persistent floating-point buffer (the RVQ codebooks included), debiased
(``unbias``: the first update copies the weights, later ones average them with weights
``decay^(n-k)``), updated after every training step. Validation runs with the EMA weights swapped
in; the best state, evaluation, generation and ``export_encodec`` all take the weights captured
while swapped, i.e. the EMA weights.

Here the same policy: floating-point tensors of ``state_dict`` (parameters and persistent buffers:
SEANet weights, weight-norm factors, EMA codebooks ``embed``/``embed_avg``/``cluster_size``) are
averaged; other tensors (e.g. the codebooks' boolean ``initialized`` flag) are copied. Averaging the
codebooks keeps them matched to the averaged encoder and decoder, as audiocraft does.

After ``n`` updates with decay ``d`` and unbias, the EMA is ``sum_k d^(n-k) w_k / sum_k d^(n-k)``
over the weights ``w_1..w_n`` seen at the updates; each update mixes in the current weights with
the factor :func:`ema_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class GeneratorEMA:
    """EMA of the codec's weights, used for validation, test, predict and ``Codec.from_checkpoint``.

    Args:
        decay: the EMA decay (audiocraft's EnCodec recipe: 0.99).
        every_n_batches: update after every n-th training batch (audiocraft: 1).
        unbias: debias the average (audiocraft: true): the first update copies the weights and the
            n-th mixes them in with ``(1 - decay) / (1 - decay^n)``; false: always ``1 - decay``,
            starting from the weights at the start of training.
    """

    decay: float = 0.99
    every_n_batches: int = 1
    unbias: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"generator_ema.decay must be in [0, 1), got {self.decay}")
        if self.every_n_batches < 1:
            raise ValueError(f"generator_ema.every_n_batches must be >= 1, got {self.every_n_batches}")


def ema_weight(update: int, decay: float, unbias: bool = True) -> float:
    """The factor the ``update``-th update (1-based) mixes the current weights in with:
    ``ema <- (1 - w) ema + w weights``. Unbiased: ``(1 - decay) / (1 - decay^update)``, which is
    audiocraft's ``1 / count`` with ``count <- count * decay + 1`` (1 at the first update)."""
    if update < 1:
        raise ValueError(f"update counts from 1, got {update}")
    if not unbias:
        return 1.0 - decay
    return (1.0 - decay) / (1.0 - decay**update)


def _tensors(module: nn.Module) -> dict[str, Tensor]:
    """Parameters and persistent buffers by state-dict name, each tensor once (tied ones too)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if isinstance(value, Tensor) and id(value) not in seen:
            seen.add(id(value))
            out[name] = value
    return out


def _pairs(ema: nn.Module, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    ours, theirs = _tensors(ema), _tensors(model)
    if ours.keys() != theirs.keys():
        raise ValueError(f"the EMA copy and the model differ: {sorted(ours.keys() ^ theirs.keys())[:8]}")
    return [(ours[k], theirs[k]) for k in ours]


@torch.no_grad()
def update_ema_(ema: nn.Module, model: nn.Module, weight: float) -> None:
    """In place: every floating-point tensor of ``ema`` becomes ``(1 - weight) ema + weight model``;
    the others are copied from ``model``."""
    for mine, current in _pairs(ema, model):
        if mine.is_floating_point():
            mine.mul_(1.0 - weight).add_(current.detach().to(mine.dtype), alpha=weight)
        else:
            mine.copy_(current)


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """In place: every tensor of ``target``'s state dict takes ``source``'s value."""
    for mine, theirs in _pairs(target, source):
        mine.copy_(theirs)


@torch.no_grad()
def swap_weights_(a: nn.Module, b: nn.Module) -> None:
    """In place: exchange the values of every state-dict tensor of ``a`` and ``b`` (same
    architecture). The tensors keep their identity, so optimizers still hold the same parameters."""
    for x, y in _pairs(a, b):
        kept = x.clone()
        x.copy_(y)
        y.copy_(kept)
