"""Deterministic schedules decided from the batch index, identical on every DDP rank."""

from __future__ import annotations

import hashlib


def uniform_from(seed: int, step: int, salt: str) -> float:
    """A number in [0, 1) that depends only on (seed, step, salt): the same on every rank and
    on a resumed run, whatever else consumed random numbers.
    """
    digest = hashlib.blake2b(f"{salt}:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class DiscriminatorSchedule:
    """When the discriminator is updated.

    Args:
        start_step: batches before the first discriminator update (generator-only warm-up).
        period: update on every ``period``-th batch after the start (48 kHz EnCodec: 2).
        probability: on those batches, update with this probability (EnCodec: 2/3 at 24 kHz),
            drawn from a hash of (seed, batch index), so all ranks agree and resumes repeat it.
        seed: seed of the draws.
    """

    def __init__(self, start_step: int = 0, period: int = 1, probability: float = 1.0, seed: int = 0):
        if start_step < 0:
            raise ValueError(f"discriminator_schedule.start_step must be >= 0, got {start_step}")
        if period < 1:
            raise ValueError(f"discriminator_schedule.period must be >= 1, got {period}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"discriminator_schedule.probability must be in [0, 1], got {probability}")
        self.start_step = start_step
        self.period = period
        self.probability = probability
        self.seed = seed

    def should_update(self, batch_index: int) -> bool:
        if batch_index < self.start_step or (batch_index - self.start_step) % self.period:
            return False
        return self.probability >= 1.0 or uniform_from(self.seed, batch_index, "disc") < self.probability

    def is_active(self, batch_index: int) -> bool:
        """Whether adversarial losses count for the generator yet (after the warm-up)."""
        return batch_index >= self.start_step
