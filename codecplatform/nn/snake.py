"""Snake activation (Liu et al. 2020; BigVGAN; DAC section 3.1): a periodic inductive bias
(MUFFIN's modified snake with amplitude and offset: :class:`ModifiedSnake1d`, at the end).

    snake(x) = x + 1 / (alpha + 1e-9) * sin(alpha * x) ** 2

with one learnable ``alpha`` per channel (initialised to 1). The 1e-9 keeps the reciprocal
finite at alpha = 0, as in descript-audio-codec ``dac/nn/layers.py``; the parameter is named
``alpha`` with shape (1, C, 1) there too, so official ``*.alpha`` state-dict entries load as they
are.

Precision: the formula is evaluated in at least float32 and the result is returned in the input's
dtype, so under bf16/fp16 autocast the activation neither loses the phase of ``sin(alpha x)``
for large ``|x|`` nor doubles the memory of the activations it passes on (a plain
``bf16 * fp32`` product would promote the whole output to float32).

Inference (no autograd, no tracing: :func:`codecplatform.nn.conv.fast_paths_allowed`) evaluates the
same operations in the same order in place on one output tensor: bit-identical, and one allocation
instead of five over the decoder's largest activations (DAC's ``snake`` is TorchScript-fused for the
same reason; TorchScript does not fuse on CPU, see ``benchmarks/RESULTS.md``). Eager float32
training runs the modified snake as one autograd node with a hand-written backward (half the time of
the autograd graph of its formula, same forward bits, gradients within float rounding); under tracing
and compilation the plain formula stays.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.nn.conv import fast_paths_allowed


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    """Snake of ``x`` (B, C, ...) with per-channel frequencies ``alpha`` broadcastable to it,
    e.g. (1, C, 1) for (B, C, T). Returns a tensor of ``x``'s shape and dtype.
    """
    if x.dtype == alpha.dtype == torch.float32 and fast_paths_allowed():
        y = torch.mul(x, alpha)  # (B, C, T): one buffer, then in place
        return y.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf, af = x.to(dtype), alpha.to(dtype)
    y = xf + (af + 1e-9).reciprocal() * torch.sin(af * xf).square()
    return y.to(x.dtype)


class Snake1d(nn.Module):
    """Snake with a learnable frequency per channel: (B, C, T) -> (B, C, T).

    ``alpha``: parameter of shape (1, C, 1), initialised to ones.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T), same dtype as ``x``."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"Snake1d expects (batch, {self.channels}, time), got shape {tuple(x.shape)}")
        return snake(x, self.alpha)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def modified_snake(x: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:
    """MUFFIN's modified snake of ``x`` (B, C, ...): ``x + beta * sin(alpha x)^2 / (alpha + 1e-8) - gamma``,
    with per-channel ``alpha``, ``beta``, ``gamma`` broadcastable to ``x`` (e.g. (1, C, 1)).

    Evaluated in at least float32 like :func:`snake`; returns ``x``'s shape and dtype.
    """
    if x.dtype == alpha.dtype == beta.dtype == gamma.dtype == torch.float32:
        if fast_paths_allowed():
            return _modified_snake_in_place(x, alpha, beta, gamma)
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            return _ModifiedSnake.apply(x, alpha, beta, gamma)
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf, af = x.to(dtype), alpha.to(dtype)
    y = xf + beta.to(dtype) * (af + 1e-8).reciprocal() * torch.sin(af * xf).square() - gamma.to(dtype)
    return y.to(x.dtype)


def _modified_snake_in_place(x: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:
    """The formula's operations in its order on one buffer (no autograd): bit-identical to it."""
    y = torch.mul(x, alpha)  # (B, C, T): one buffer, then in place (as :func:`snake`)
    return y.sin_().square_().mul_(beta * (alpha + 1e-8).reciprocal()).add_(x).sub_(gamma)


class _ModifiedSnake(torch.autograd.Function):
    """Modified snake (float32) as one autograd node: saves only x and the parameters, recomputes
    sin in backward. With c = beta / (alpha + 1e-8) and s = sin(alpha x):
    dy/dx = 1 + c alpha sin(2 alpha x); dy/dalpha = c x sin(2 alpha x) - c s^2 / (alpha + 1e-8);
    dy/dbeta = s^2 / (alpha + 1e-8); dy/dgamma = -1 (parameter gradients summed to their shapes)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, beta: Tensor, gamma: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha, beta)
        ctx.gamma_shape = gamma.shape
        return _modified_snake_in_place(x, alpha, beta, gamma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, alpha, beta = ctx.saved_tensors
        need_x, need_alpha, need_beta, need_gamma = ctx.needs_input_grad
        inv = (alpha + 1e-8).reciprocal()
        c = beta * inv
        phase = torch.mul(x, alpha)  # (B, C, T)
        sin_sq = torch.sin(phase).square_() if need_alpha or need_beta else None
        grad_sin2 = grad * phase.mul_(2).sin_()  # grad * sin(2 alpha x)
        grad_x = torch.addcmul(grad, grad_sin2, c * alpha) if need_x else None
        grad_sin_sq = (grad * sin_sq) if sin_sq is not None else None
        grad_alpha = grad_beta = grad_gamma = None
        if need_alpha:
            grad_alpha = c * (grad_sin2 * x).sum_to_size(alpha.shape) - c * inv * grad_sin_sq.sum_to_size(alpha.shape)
        if need_beta:
            grad_beta = inv * grad_sin_sq.sum_to_size(beta.shape)
        if need_gamma:
            grad_gamma = -grad.sum_to_size(ctx.gamma_shape)
        return grad_x, grad_alpha, grad_beta, grad_gamma


class ModifiedSnake1d(nn.Module):
    """MUFFIN's snake (official ``muffin/modules/utils.py``): a learnable per-channel amplitude
    ``beta`` and offset ``gamma`` on top of :class:`Snake1d`: (B, C, T) -> (B, C, T).

        y = x + beta * sin^2(alpha * x) / (alpha + 1e-8) - gamma

    Parameters of shape (1, C, 1), initialised alpha = 1, beta = 1, gamma = 0 (so it starts as
    :class:`Snake1d` up to the epsilon).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.ones(1, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T) -> (B, C, T), same dtype as ``x``."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"ModifiedSnake1d expects (batch, {self.channels}, time), got shape {tuple(x.shape)}")
        return modified_snake(x, self.alpha, self.beta, self.gamma)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
