"""Adversarial and feature-matching losses over the outputs of K sub-discriminators.

Inputs are the fields of ``DiscriminatorOutput``: ``logits`` is a list of K tensors (any shape,
batch first) and ``features`` a list of K lists of layer activations. These are plain classes
without parameters, so YAML can give them as ``class_path``; they compute in float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


def _check_logits(real_logits: list[Tensor], fake_logits: list[Tensor]) -> None:
    if not real_logits:
        raise ValueError("real_logits: give the logits of at least one sub-discriminator")
    if len(real_logits) != len(fake_logits):
        raise ValueError(
            f"real_logits has {len(real_logits)} sub-discriminators but fake_logits has {len(fake_logits)}"
        )


class GANLoss(ABC):
    """An adversarial objective defined per sub-discriminator and averaged over the K of them.

    Subclasses define the per-tensor terms: ``real_term`` / ``fake_term`` (the discriminator's
    loss on real / generated logits) and ``generator_term`` (the generator's loss on generated
    logits); each maps logits of any shape to a scalar.
    """

    @abstractmethod
    def real_term(self, logits: Tensor) -> Tensor:
        """Discriminator loss on logits of real audio -> scalar."""

    @abstractmethod
    def fake_term(self, logits: Tensor) -> Tensor:
        """Discriminator loss on logits of generated audio -> scalar."""

    @abstractmethod
    def generator_term(self, logits: Tensor) -> Tensor:
        """Generator loss on logits of generated audio -> scalar."""

    def discriminator_loss(self, real_logits: list[Tensor], fake_logits: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Returns (mean over the K sub-discriminators, the K per-sub-discriminator losses).

        ``fake_logits`` should come from ``x_hat.detach()`` so the generator gets no gradient.
        """
        _check_logits(real_logits, fake_logits)
        per_sub = [self.real_term(r.float()) + self.fake_term(f.float()) for r, f in zip(real_logits, fake_logits)]
        return torch.stack(per_sub).mean(), per_sub

    def generator_loss(self, fake_logits: list[Tensor]) -> Tensor:
        """Mean over the K sub-discriminators of ``generator_term``."""
        if not fake_logits:
            raise ValueError("fake_logits: give the logits of at least one sub-discriminator")
        return torch.stack([self.generator_term(f.float()) for f in fake_logits]).mean()


class HingeGANLoss(GANLoss):
    """EnCodec's hinge loss (paper section 3.4).

    D: mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))); G: mean(relu(1 - D(x_hat))).
    The generator term follows the paper; audiocraft's code uses -mean(D(x_hat)) instead.
    """

    def real_term(self, logits: Tensor) -> Tensor:
        return torch.relu(1 - logits).mean()

    def fake_term(self, logits: Tensor) -> Tensor:
        return torch.relu(1 + logits).mean()

    def generator_term(self, logits: Tensor) -> Tensor:
        return torch.relu(1 - logits).mean()


class LeastSquaresGANLoss(GANLoss):
    """LSGAN loss as in DAC / HiFi-GAN.

    D: mean((1 - D(x))^2) + mean(D(x_hat)^2); G: mean((1 - D(x_hat))^2).
    """

    def real_term(self, logits: Tensor) -> Tensor:
        return (1 - logits).pow(2).mean()

    def fake_term(self, logits: Tensor) -> Tensor:
        return logits.pow(2).mean()

    def generator_term(self, logits: Tensor) -> Tensor:
        return (1 - logits).pow(2).mean()


class FeatureMatchingLoss(ABC):
    """Distance between discriminator activations on real and generated audio.

    ``loss(real_features, fake_features)`` takes K lists of L_k activations each (matching
    shapes) and returns the mean of ``layer_distance`` over all (k, l) pairs, i.e.
    1/(K L) sum_k sum_l when every sub-discriminator has L layers. Real activations are targets:
    they are detached here, so gradients reach only the generated side.
    """

    @abstractmethod
    def layer_distance(self, real: Tensor, fake: Tensor) -> Tensor:
        """Distance between one real (detached) and one fake activation -> scalar."""

    def __call__(self, real_features: list[list[Tensor]], fake_features: list[list[Tensor]]) -> Tensor:
        if not real_features:
            raise ValueError("real_features: give the features of at least one sub-discriminator")
        if len(real_features) != len(fake_features):
            raise ValueError(
                f"real_features has {len(real_features)} sub-discriminators but fake_features has {len(fake_features)}"
            )
        distances = []
        for k, (real_layers, fake_layers) in enumerate(zip(real_features, fake_features)):
            if len(real_layers) != len(fake_layers) or not real_layers:
                raise ValueError(
                    f"sub-discriminator {k}: real has {len(real_layers)} feature maps, fake has "
                    f"{len(fake_layers)}; they must match and be at least one"
                )
            for layer, (real, fake) in enumerate(zip(real_layers, fake_layers)):
                if real.shape != fake.shape:
                    raise ValueError(
                        f"sub-discriminator {k}, layer {layer}: real features {tuple(real.shape)} and fake "
                        f"features {tuple(fake.shape)} differ in shape"
                    )
                distances.append(self.layer_distance(real.detach().float(), fake.float()))
        return torch.stack(distances).mean()


class L1FeatureMatchingLoss(FeatureMatchingLoss):
    """DAC / HiFi-GAN feature matching: mean |D_k^l(x) - D_k^l(x_hat)| per layer."""

    def layer_distance(self, real: Tensor, fake: Tensor) -> Tensor:
        return (real - fake).abs().mean()


class RelativeFeatureMatchingLoss(FeatureMatchingLoss):
    """EnCodec's relative feature matching (eq. 2).

    Per layer: mean|D_k^l(x) - D_k^l(x_hat)| / (mean|D_k^l(x)| + eps), means over all
    dimensions. (audiocraft's code computes the normalizer but does not apply it; this follows
    the paper.)
    """

    def __init__(self, eps: float = 1e-8):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def layer_distance(self, real: Tensor, fake: Tensor) -> Tensor:
        return (real - fake).abs().mean() / (real.abs().mean() + self.eps)
