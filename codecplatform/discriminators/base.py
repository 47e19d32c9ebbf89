"""Base class for discriminators and a container that runs several of them."""

from __future__ import annotations

from torch import Tensor, nn

from codecplatform.dsp.level import remove_dc_and_normalize_peak
from codecplatform.types import DiscriminatorOutput, check_audio


class Discriminator(nn.Module):
    """(B, C, T) audio -> DiscriminatorOutput with one entry per sub-discriminator.

    ``name`` is the log key prefix of this discriminator's loss (``train/d/<name>``).
    """

    name: str = "disc"

    def forward(self, x: Tensor) -> DiscriminatorOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class ChannelFoldedDiscriminator(Discriminator):
    """Sub-discriminators (``self.discriminators``: (N, 1, T) -> (logits, feature maps)) that see
    every audio channel as its own mono example with shared weights, as EnCodec does for stereo:
    (B, C, T) -> DiscriminatorOutput of batch B*C (row b*C + c), one entry per sub-discriminator,
    named ``f"{name}_{scale}"`` for each of ``self.scales``.

    Subclasses set ``discriminators``, ``scales``, ``name`` and ``normalize_input`` (DAC's DC
    removal and peak normalization of the input), and give ``min_length()``.
    """

    discriminators: nn.ModuleList
    scales: list[int]
    normalize_input: bool = False

    def min_length(self) -> tuple[int, str]:  # pragma: no cover - abstract
        """(fewest samples the sub-discriminators accept, what needs them) for the error message."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        check_audio(x)
        needed, what = self.min_length()
        if x.shape[-1] < needed:
            raise ValueError(f"x has {x.shape[-1]} samples; {what} needs {needed}")
        batch, channels, length = x.shape
        mono = x.reshape(batch * channels, 1, length)  # (B, C, T) -> (B*C, 1, T)
        if self.normalize_input:
            mono = remove_dc_and_normalize_peak(mono)
        outputs = [disc(mono) for disc in self.discriminators]
        return DiscriminatorOutput(
            logits=[logits for logits, _ in outputs],
            features=[features for _, features in outputs],
            names=[f"{self.name}_{scale}" for scale in self.scales],
        )


class MultiDiscriminator(nn.Module):
    """Runs a list of discriminators on the same input and concatenates their outputs."""

    def __init__(self, discriminators: list[Discriminator]):
        super().__init__()
        if not discriminators:
            raise ValueError("discriminators: give at least one discriminator")
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, x: Tensor) -> DiscriminatorOutput:
        return DiscriminatorOutput.concat([d(x) for d in self.discriminators])
