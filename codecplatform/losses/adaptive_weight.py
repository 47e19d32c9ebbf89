"""The adaptive adversarial weight of VQGAN and the latent-diffusion autoencoders (Esser et al. 2021,
eq. 7; AudioLDM's ``LPIPSWithDiscriminator``, the loss of the Mel-VAE MuCodec builds on).

With L the generator's last layer (its weight tensor), the adversarial loss is scaled by

    lambda = clamp(|d rec / d L| / (|d adv / d L| + 1e-4), 0, 1e4)      (no gradient through lambda)

times its weight (official ``disc_weight`` 0.5), where rec is the weighted sum of the other losses that
:class:`~codecplatform.lightning.gan_step.GANStep` hands its balancer (reconstruction and feature
matching). So at the last layer the adversarial gradient is ``weight`` x the reconstruction gradient,
whatever the two losses' scales. Why: a fixed adversarial weight on a log-mel L1 has no natural scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codecplatform.losses.balancer import Balancer

ADVERSARIAL = "adv"


class AdaptiveAdversarialWeight(Balancer):
    """A ``GANStep`` balancer that scales only the adversarial loss (see the module docstring).

    Args:
        max_weight: upper clamp of lambda (official 1e4).
        epsilon: added to the adversarial gradient norm (official 1e-4).

    The module sets the last layer with :meth:`use_last_layer` (kept out of this module's parameters
    and state); without one the gradients are taken w.r.t. the generator output ``x_hat``.
    """

    def __init__(self, max_weight: float = 1e4, epsilon: float = 1e-4):
        super().__init__()
        if max_weight <= 0 or epsilon <= 0:
            raise ValueError(f"max_weight and epsilon must be > 0, got {max_weight} and {epsilon}")
        self.max_weight, self.adaptive_epsilon = max_weight, epsilon
        self._last_layer: list[nn.Parameter] = []  # a list: not registered as this module's parameter

    def use_last_layer(self, weight: nn.Parameter) -> None:
        """Take the gradient norms w.r.t. ``weight`` (the generator's output layer)."""
        self._last_layer = [weight]

    def surrogate_loss(
        self, losses: dict[str, Tensor], weights: dict[str, float], x_hat: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(rec + lambda x weights["adv"] x adv, {"adv": the adversarial loss's effective weight})."""
        missing = [name for name in losses if name not in weights]
        if missing:
            raise KeyError(f"loss_weights has no weight for {missing}")
        rec = sum(weights[name] * value for name, value in losses.items() if name != ADVERSARIAL)
        if ADVERSARIAL not in losses:
            return rec, {}
        if not isinstance(rec, Tensor):
            raise ValueError("the adaptive adversarial weight needs a reconstruction loss beside 'adv'")
        target = self._last_layer[0] if self._last_layer else x_hat
        (g_rec,) = torch.autograd.grad(rec, [target], retain_graph=True, allow_unused=True)
        (g_adv,) = torch.autograd.grad(losses[ADVERSARIAL], [target], retain_graph=True, allow_unused=True)
        if g_rec is None or g_adv is None:
            raise ValueError("the reconstruction or adversarial loss does not depend on the last layer")
        ratio = g_rec.detach().float().norm() / (g_adv.detach().float().norm() + self.adaptive_epsilon)
        weight = ratio.clamp(0.0, self.max_weight) * weights[ADVERSARIAL]
        return rec + weight.to(losses[ADVERSARIAL].dtype) * losses[ADVERSARIAL], {ADVERSARIAL: weight}
