"""Adversarial and feature-matching losses over the outputs of K sub-discriminators.

Inputs are the fields of ``DiscriminatorOutput``: ``logits`` is a list of K tensors (any shape,
batch first) and ``features`` a list of K lists of layer activations. These are plain classes
without parameters, so YAML can give them as ``class_path`` (with ``init_args`` for their
options); they compute in float32.

How the K sub-discriminators (and their layers) are combined is the ``reduction`` option, because
the official codes differ and the difference is a factor of K (about 8 for DAC's MPD + MRD):

* ``"mean"`` (default): audiocraft / EnCodec (``AdversarialLoss(normalize=True)`` divides by the
  number of sub-discriminators; its ``FeatureMatchingLoss(normalize=True)`` averages the layers of
  each sub-discriminator first).
* ``"sum"``: DAC / HiFi-GAN (``dac.nn.loss.GANLoss`` adds the K terms, and adds the per-layer L1
  of every layer of every sub-discriminator).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum"]
HingeGenerator = Literal["negative_mean", "hinge"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _reduce(values: list[Tensor], reduction: Reduction) -> Tensor:
    stacked = torch.stack(values)
    return stacked.mean() if reduction == "mean" else stacked.sum()


def _check_logits(real_logits: list[Tensor], fake_logits: list[Tensor]) -> None:
    if not real_logits:
        raise ValueError("real_logits: give the logits of at least one sub-discriminator")
    if len(real_logits) != len(fake_logits):
        raise ValueError(
            f"real_logits has {len(real_logits)} sub-discriminators but fake_logits has {len(fake_logits)}"
        )


class GANLoss(ABC):
    """An adversarial objective defined per sub-discriminator and reduced over the K of them.

    Subclasses define the per-tensor terms: ``real_term`` / ``fake_term`` (the discriminator's
    loss on real / generated logits) and ``generator_term`` (the generator's loss on generated
    logits); each maps logits of any shape to a scalar.

    Args:
        reduction: ``"mean"`` (audiocraft/EnCodec) or ``"sum"`` (DAC) over the K sub-discriminators,
            for the discriminator and the generator loss alike.
    """

    def __init__(self, reduction: Reduction = "mean"):
        _check_reduction(reduction)
        self.reduction = reduction

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
        """Returns (the K per-sub-discriminator losses reduced by ``reduction``, those K losses).

        ``fake_logits`` should come from ``x_hat.detach()`` so the generator gets no gradient.
        """
        _check_logits(real_logits, fake_logits)
        per_sub = [self.real_term(r.float()) + self.fake_term(f.float()) for r, f in zip(real_logits, fake_logits)]
        return _reduce(per_sub, self.reduction), per_sub

    def generator_loss(self, fake_logits: list[Tensor]) -> Tensor:
        """``generator_term`` of each of the K sub-discriminators, reduced by ``reduction``."""
        if not fake_logits:
            raise ValueError("fake_logits: give the logits of at least one sub-discriminator")
        return _reduce([self.generator_term(f.float()) for f in fake_logits], self.reduction)


class HingeGANLoss(GANLoss):
    """EnCodec's hinge loss.

    D: mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))). G, by ``generator``:

    * ``"negative_mean"`` (default, the official code: audiocraft's ``adv_loss: hinge``):
      -mean(D(x_hat)).
    * ``"hinge"`` (the paper, section 3.4; audiocraft's ``hinge2``): mean(relu(1 - D(x_hat))).
    """

    def __init__(self, generator: HingeGenerator = "negative_mean", reduction: Reduction = "mean"):
        super().__init__(reduction)
        if generator not in ("negative_mean", "hinge"):
            raise ValueError(f"generator must be 'negative_mean' or 'hinge', got {generator!r}")
        self.generator = generator

    def real_term(self, logits: Tensor) -> Tensor:
        return torch.relu(1 - logits).mean()

    def fake_term(self, logits: Tensor) -> Tensor:
        return torch.relu(1 + logits).mean()

    def generator_term(self, logits: Tensor) -> Tensor:
        if self.generator == "negative_mean":
            return -logits.mean()
        return torch.relu(1 - logits).mean()


class LeastSquaresGANLoss(GANLoss):
    """LSGAN loss as in DAC / HiFi-GAN.

    D: mean((1 - D(x))^2) + mean(D(x_hat)^2); G: mean((1 - D(x_hat))^2). DAC's code sums over the
    sub-discriminators: give ``reduction="sum"`` to equal ``dac.nn.loss.GANLoss``.
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
    shapes) and combines ``layer_distance`` d_kl over all (k, l) pairs by ``reduction``:

    * ``"mean"`` (default, audiocraft/EnCodec): 1/K sum_k (1/L_k sum_l d_kl), i.e. 1/(K L) sum_k sum_l
      d_kl when every sub-discriminator has L layers (EnCodec eq. 2).
    * ``"sum"`` (DAC): sum_k sum_l d_kl.

    Real activations are targets: they are detached here, so gradients reach only the generated side.
    """

    def __init__(self, reduction: Reduction = "mean"):
        _check_reduction(reduction)
        self.reduction = reduction

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
        per_sub = []
        for k, (real_layers, fake_layers) in enumerate(zip(real_features, fake_features)):
            if len(real_layers) != len(fake_layers) or not real_layers:
                raise ValueError(
                    f"sub-discriminator {k}: real has {len(real_layers)} feature maps, fake has "
                    f"{len(fake_layers)}; they must match and be at least one"
                )
            distances = []
            for layer, (real, fake) in enumerate(zip(real_layers, fake_layers)):
                if real.shape != fake.shape:
                    raise ValueError(
                        f"sub-discriminator {k}, layer {layer}: real features {tuple(real.shape)} and fake "
                        f"features {tuple(fake.shape)} differ in shape"
                    )
                distances.append(self.layer_distance(real.detach().float(), fake.float()))
            per_sub.append(_reduce(distances, self.reduction))
        return _reduce(per_sub, self.reduction)


class L1FeatureMatchingLoss(FeatureMatchingLoss):
    """Per layer mean |D_k^l(x) - D_k^l(x_hat)|: the official feature matching of EnCodec (audiocraft
    ``feat_loss: l1``, ``reduction="mean"``) and of DAC / HiFi-GAN (``reduction="sum"``)."""

    def layer_distance(self, real: Tensor, fake: Tensor) -> Tensor:
        return (real - fake).abs().mean()


class RelativeFeatureMatchingLoss(FeatureMatchingLoss):
    """EnCodec's relative feature matching as the paper writes it (eq. 2).

    Per layer: mean|D_k^l(x) - D_k^l(x_hat)| / (mean|D_k^l(x)| + eps), means over all
    dimensions. audiocraft's code computes this normalizer but does not apply it; the official
    behaviour is ``L1FeatureMatchingLoss`` (the EnCodec configs' default), this class is the
    paper-literal option.
    """

    def __init__(self, eps: float = 1e-8, reduction: Reduction = "mean"):
        super().__init__(reduction)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def layer_distance(self, real: Tensor, fake: Tensor) -> Tensor:
        return (real - fake).abs().mean() / (real.abs().mean() + self.eps)
