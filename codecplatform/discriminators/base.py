"""Base class for discriminators and a container that runs several of them."""

from __future__ import annotations

from torch import Tensor, nn

from codecplatform.types import DiscriminatorOutput


class Discriminator(nn.Module):
    """(B, C, T) audio -> DiscriminatorOutput with one entry per sub-discriminator.

    ``name`` is the log key prefix of this discriminator's loss (``train/d/<name>``).
    """

    name: str = "disc"

    def forward(self, x: Tensor) -> DiscriminatorOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class MultiDiscriminator(nn.Module):
    """Runs a list of discriminators on the same input and concatenates their outputs."""

    def __init__(self, discriminators: list[Discriminator]):
        super().__init__()
        if not discriminators:
            raise ValueError("discriminators: give at least one discriminator")
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        return DiscriminatorOutput.concat([d(x) for d in self.discriminators])
