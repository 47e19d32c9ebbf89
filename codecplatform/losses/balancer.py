"""EnCodec's loss balancer (Defossez et al. 2022, section 3.4, eq. 5).

For losses l_i that depend on the model output x_hat, with g_i = d l_i / d x_hat and an EMA
<|g_i|> of its norm, the gradient sent back into the generator is

    sum_i  R * w_i / sum_j w_j * g_i / <|g_i|>

so w_i / sum_j w_j is the fraction of the output gradient that loss i contributes, whatever
its natural scale. Losses that do not depend on x_hat alone (commitment, codebook) are not
balanced; the training module adds them with their plain weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class Balancer(nn.Module):
    """Args:
    total_norm: reference norm R of the combined gradient (EnCodec: 1).
    ema_decay: decay beta of the gradient-norm averages (EnCodec: 0.999).
    per_batch_item: norm of each example's gradient, averaged over the batch (as the official
        implementation), instead of the norm of the whole batch gradient.
    epsilon: guards the division by a zero norm.

    The averages are part of the module's state dict (checkpointed) and the norms are averaged
    over DDP ranks, so every rank applies the same weights.
    """

    def __init__(
        self, total_norm: float = 1.0, ema_decay: float = 0.999, per_batch_item: bool = True, epsilon: float = 1e-12
    ):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if total_norm <= 0:
            raise ValueError(f"total_norm must be > 0, got {total_norm}")
        self.total_norm = total_norm
        self.ema_decay = ema_decay
        self.per_batch_item = per_batch_item
        self.epsilon = epsilon
        # name -> [decayed sum of norms, decayed count]: the bias-corrected EMA is sum / count.
        self._ema: dict[str, list[float]] = {}

    def get_extra_state(self) -> dict[str, list[float]]:
        return {name: list(v) for name, v in self._ema.items()}

    def set_extra_state(self, state: dict[str, list[float]]) -> None:
        self._ema = {name: list(v) for name, v in state.items()}

    def _norm(self, grad: Tensor) -> Tensor:
        if self.per_batch_item:
            return grad.flatten(1).norm(dim=1).mean()
        return grad.norm()

    def balanced_gradient(
        self, losses: dict[str, Tensor], weights: dict[str, float], x_hat: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Gradient to send into ``x_hat`` for the weighted, balanced ``losses``.

        Returns (gradient shaped like x_hat, {name: fraction of the gradient norm}) where the
        fractions are the configured ones up to the EMA lag.
        """
        if not losses:
            raise ValueError("the balancer got no losses")
        missing = [name for name in losses if name not in weights]
        if missing:
            raise KeyError(f"loss_weights has no weight for balanced loss(es) {missing}")
        total_weight = sum(weights[name] for name in losses)
        if total_weight <= 0:
            raise ValueError(f"the weights of the balanced losses {list(losses)} must sum to > 0")

        grads: dict[str, Tensor] = {}
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, [x_hat], retain_graph=True, allow_unused=True)
            grads[name] = torch.zeros_like(x_hat) if grad is None else grad
        norms = torch.stack([self._norm(grads[name]) for name in losses]).detach().float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(norms, op=dist.ReduceOp.SUM)
            norms /= dist.get_world_size()

        combined = torch.zeros_like(x_hat)
        for name, norm in zip(losses, norms.tolist()):
            ema = self._ema.setdefault(name, [0.0, 0.0])
            ema[0] = self.ema_decay * ema[0] + norm
            ema[1] = self.ema_decay * ema[1] + 1.0
            average = ema[0] / ema[1]
            scale = self.total_norm * weights[name] / total_weight / (average + self.epsilon)
            combined = combined + scale * grads[name]
        shares = {
            name: (weights[name] / total_weight) * norm / (self._ema[name][0] / self._ema[name][1] + self.epsilon)
            for name, norm in zip(losses, norms.tolist())
        }
        return combined, {name: torch.tensor(share) for name, share in shares.items()}

    def surrogate_loss(
        self, losses: dict[str, Tensor], weights: dict[str, float], x_hat: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A scalar whose gradient w.r.t. ``x_hat`` is the balanced gradient.

        Backpropagate it with ``LightningModule.manual_backward`` (so AMP loss scaling applies).
        """
        gradient, shares = self.balanced_gradient(losses, weights, x_hat)
        return (x_hat * gradient.detach()).sum(), shares
