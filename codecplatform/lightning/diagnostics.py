"""Per-step training health statistics, computed from tensors the training step already has.

Everything here stays on the device (no ``.item()``): the values are logged as tensors, and
``callbacks.health.TrainingHealthMonitor`` reads them back once per validation interval.

- :func:`decision_threshold` / :func:`equilibrium_loss`: the logit that separates "real" from
  "fake" for a ``GANLoss`` (hinge: 0, least squares: 0.5) and the discriminator loss of a
  discriminator that outputs that logit for everything (hinge: 2, least squares: 0.5, per
  sub-discriminator: ``reduction="sum"`` multiplies it by their number);
- :func:`discriminator_scores`: mean real and fake logits and the discriminator's accuracy;
- :func:`codebook_perplexities`: perplexity of each codebook's codes in a training batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from codecplatform.losses.adversarial import GANLoss
from codecplatform.metrics.codebook import code_counts, codebook_statistics


def decision_threshold(gan_loss: GANLoss, low: float = -10.0, high: float = 10.0, iters: int = 50) -> float:
    """The logit t where ``real_term(t) == fake_term(t)`` (hinge: 0, least squares: 0.5): above it
    a logit reads as "real". Bisection on constant logits: ``real_term - fake_term`` falls as t
    grows for any loss that pushes real logits up and fake ones down."""
    for _ in range(iters):
        mid = (low + high) / 2
        logit = torch.tensor([mid])
        if float(gan_loss.real_term(logit) - gan_loss.fake_term(logit)) > 0:
            low = mid
        else:
            high = mid
    return round((low + high) / 2, 6) + 0.0  # + 0.0: no -0.0


def equilibrium_loss(gan_loss: GANLoss, num_logits: int = 1, threshold: float | None = None) -> float:
    """``gan_loss.discriminator_loss`` when each of ``num_logits`` sub-discriminator outputs is the
    :func:`decision_threshold` (``threshold``, computed when None) for real and generated audio
    alike: where a discriminator that cannot tell them apart sits. Hinge 2, least squares 0.5 per
    sub-discriminator; times ``num_logits`` with ``reduction="sum"``."""
    t = decision_threshold(gan_loss) if threshold is None else threshold
    logits = [torch.full((1,), t) for _ in range(num_logits)]
    return round(float(gan_loss.discriminator_loss(logits, logits)[0]), 6)


@torch.no_grad()
def discriminator_scores(real_logits: list[Tensor], fake_logits: list[Tensor], threshold: float) -> dict[str, Tensor]:
    """Mean over sub-discriminators of the mean real and fake logits (``real_score``, ``fake_score``)
    and ``accuracy``: the fraction of real logits above ``threshold`` and fake ones below it, half
    each (0.5: the discriminator cannot tell them apart, 1: it always can). Scalars on the device."""
    real = torch.stack([r.detach().float().mean() for r in real_logits]).mean()
    fake = torch.stack([f.detach().float().mean() for f in fake_logits]).mean()
    hits = [
        0.5 * ((r.detach() > threshold).float().mean() + (f.detach() < threshold).float().mean())
        for r, f in zip(real_logits, fake_logits)
    ]
    return {"real_score": real, "fake_score": fake, "accuracy": torch.stack(hits).mean()}


@torch.no_grad()
def codebook_perplexities(
    codes: Tensor, n_q: Tensor | None, codebook_size: int, num_codebooks: int | None = None
) -> Tensor:
    """Perplexity (``2 ** entropy``, :func:`codebook_statistics`) of each codebook's codes in a batch.

    Args:
        codes: (B, K', T') codes the quantizer returned, K' <= ``num_codebooks``.
        n_q: (B,) codebooks each example used (None: all K'); codebook k counts only the examples
            with ``n_q > k``.
        codebook_size: N, the largest codebook's size.
        num_codebooks: K >= K', the length of the result (default K').

    Returns:
        (K,) float; NaN for a codebook no example of the batch used.
    """
    counts = code_counts(codes, codebook_size, n_q, num_codebooks)  # (K, N)
    perplexity = codebook_statistics(counts)["perplexity"]
    return torch.where(counts.sum(dim=1) > 0, perplexity, torch.full_like(perplexity, float("nan")))
