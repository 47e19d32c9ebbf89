"""Infinite, deterministic, resumable training streams: rank partitions, domain weights, full-band quota.

A training stream never ends (the run length is ``max_batches``/``max_steps``, not epochs). Every
rank reads its own partition of the data (its share of each manifest's cuts, or its share of the
Shar shards), so ranks see disjoint data, and every rank yields a batch whenever asked, so batch
counts are equal. Everything a rank yields is a pure function of ``(seed, rank, world size,
batches yielded so far)``: the sampler's position is one integer, the number of batches the
training loop consumed, and :meth:`BalancedStreamSampler.seek` recomputes from it where every
stream of this rank stands, without reading any audio (see :func:`batch_counts`). A resumed run
therefore continues with exactly the batches an uninterrupted run would have trained on, on
every rank, from the single integer stored in rank zero's checkpoint.

Composition of a batch of B cuts (DAC section 4.2, balanced data sampling):

- ``min_full_band`` cuts come from a stream of the full-band cuts (``cut.custom["full_band"]``,
  written by ``codecplatform prepare``): every batch holds at least that many full-band items,
  exactly, not in expectation;
- the other S = B - ``min_full_band`` slots are shared among domain streams by weight: each
  domain gets ``floor(S w)`` slots plus one extra slot in a share of the batches equal to the
  fractional part of ``S w``, chosen by systematic sampling with a golden-ratio sequence. Per
  batch a domain's count is within one of ``S w``; over n batches within one of ``n S w``.

Each stream repeats its cuts forever: in each pass ("epoch" of the stream) the order of its shards
and the order of the draws inside each shard are shuffled with a seed derived from ``(seed, stream
name, epoch, shard)``. A cut is drawn once per ``segment_seconds`` of its audio (at least once) in
each pass; with ``stable_windows`` each draw carries a key that seeds its window offset and augmentation.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut

_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # golden-ratio step of the low-discrepancy slot sequence


def with_draw_key(cut: Cut, key: str) -> Cut:
    """``cut`` carrying ``custom["draw_key"] = key``: the dataset seeds everything random about
    this draw from the key (window offset, re-drawn offsets of clipped windows, augmentation), so
    a draw gives the same audio in any run, rank or worker, and a resumed run loads the same audio."""
    return cut.with_custom("draw_key", key)


def draws_per_cut(duration: float, segment_seconds: float) -> int:
    """How often a cut is drawn per pass: once per ``segment_seconds`` of audio, at least once."""
    return max(1, round(duration / segment_seconds))


@dataclass(frozen=True)
class Shard:
    """A unit of a stream: cuts held in memory, or a Shar shard (cut manifest + FLAC tar)."""

    name: str
    cuts: tuple[Cut, ...] | None = None
    shar_cuts: str | None = None
    shar_recording: str | None = None

    def metadata(self) -> Iterator[Cut]:
        """The cuts without audio (reads only the Shar cut manifest)."""
        if self.cuts is not None:
            return iter(self.cuts)
        return iter(CutSet.from_jsonl_lazy(self.shar_cuts))

    def load(self) -> list[Cut]:
        """The cuts with their audio (a Shar shard's tar is read into memory)."""
        if self.cuts is not None:
            return list(self.cuts)
        fields = {"cuts": [self.shar_cuts], "recording": [self.shar_recording]}
        return list(CutSet.from_shar(fields=fields))


def shar_shards(shar_dir: str | Path) -> list[Shard]:
    """The shards of a Shar folder written by ``codecplatform prepare --shar_dir`` (sorted).

    Raises:
        FileNotFoundError: no ``cuts.*.jsonl.gz`` in the folder, or a shard without its
            ``recording.*.tar``.
    """
    shar_dir = Path(shar_dir)
    manifests = sorted(shar_dir.glob("cuts.*.jsonl.gz"))
    if not manifests:
        raise FileNotFoundError(f"no Shar shards (cuts.*.jsonl.gz) in {shar_dir}")
    shards = []
    for manifest in manifests:
        index = manifest.name[len("cuts.") : -len(".jsonl.gz")]
        tar = shar_dir / f"recording.{index}.tar"
        if not tar.is_file():
            raise FileNotFoundError(f"Shar shard {manifest} has no audio: {tar} is missing")
        shards.append(Shard(str(manifest), shar_cuts=str(manifest), shar_recording=str(tar)))
    return shards


def rank_shards(name: str, cuts: CutSet | None, shar_dir: str | None, world_size: int, rank: int) -> list[Shard]:
    """This rank's share of a source: every ``world_size``-th cut of a manifest (one in-memory
    shard), or every ``world_size``-th Shar shard. Shares of different ranks are disjoint."""
    if shar_dir is not None:
        shards = shar_shards(shar_dir)
        if len(shards) < world_size:
            raise ValueError(
                f"{name}: {shar_dir} holds {len(shards)} Shar shard(s), fewer than the {world_size} "
                "ranks: export it again with a smaller --shard_size"
            )
        return shards[rank::world_size]
    assert cuts is not None
    return [Shard(f"{name}[rank {rank}/{world_size}]", cuts=tuple(list(cuts)[rank::world_size]))]


class CutStream:
    """An endless, shuffled stream of window draws from ``shards`` (see the module docstring).

    Args:
        name: names the stream in messages and seeds its shuffling.
        shards: this rank's shards.
        segment_seconds: one draw per this many seconds of a cut (and the window length).
        seed: shuffling seed.
        predicate: keeps only the cuts it accepts (e.g. one domain, or full-band cuts).
        stable_windows: give every draw a key that seeds its window offset and augmentation (see
            :func:`with_draw_key`); else the dataset's per-worker generator draws them.

    Raises:
        ValueError: no cut of the shards passes ``predicate``.
    """

    def __init__(
        self,
        name: str,
        shards: Sequence[Shard],
        segment_seconds: float,
        seed: int,
        predicate: Callable[[Cut], bool] | None = None,
        stable_windows: bool = True,
    ) -> None:
        self.name = name
        self.segment_seconds = segment_seconds
        self.seed = seed
        self.predicate = predicate or (lambda cut: True)
        self.stable_windows = stable_windows
        sizes = [
            sum(draws_per_cut(c.duration, segment_seconds) for c in shard.metadata() if self.predicate(c))
            for shard in shards
        ]
        self.shards = [s for s, n in zip(shards, sizes) if n > 0]
        self.sizes = np.array([n for n in sizes if n > 0], dtype=np.int64)
        if len(self.shards) == 0:
            raise ValueError(f"training stream {name!r}: no cut in its data ({len(shards)} shard(s))")
        self.epoch_length = int(self.sizes.sum())  # draws per pass
        self.position = 0  # draws taken so far
        self._key = zlib.crc32(name.encode())
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None  # epoch, order, ends
        self._shard_cache: tuple[tuple[int, int], list[Cut], np.ndarray, np.ndarray] | None = None

    def _epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, cumulative draw counts in that order) of pass ``epoch``."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, self._key, epoch]).permutation(len(self.shards))
            self._epoch_cache = (epoch, order, np.cumsum(self.sizes[order]))
        return self._epoch_cache[1], self._epoch_cache[2]

    def _shard_draws(self, epoch: int, shard: int) -> tuple[list[Cut], np.ndarray, np.ndarray]:
        """(cuts, cut index per draw, draw number per draw) of a shard in pass ``epoch``, shuffled."""
        if self._shard_cache is None or self._shard_cache[0] != (epoch, shard):
            cuts = [c for c in self.shards[shard].load() if self.predicate(c)]
            counts = np.array([draws_per_cut(c.duration, self.segment_seconds) for c in cuts], dtype=np.int64)
            if int(counts.sum()) != int(self.sizes[shard]):
                raise ValueError(
                    f"training stream {self.name!r}: shard {self.shards[shard].name} changed since it was "
                    f"listed ({int(counts.sum())} draws, expected {int(self.sizes[shard])})"
                )
            cut_index = np.repeat(np.arange(len(cuts)), counts)
            draw_number = np.arange(len(cut_index)) - np.repeat(np.cumsum(counts) - counts, counts)
            perm = np.random.default_rng([self.seed, self._key, epoch, shard]).permutation(len(cut_index))
            self._shard_cache = ((epoch, shard), cuts, cut_index[perm], draw_number[perm])
        return self._shard_cache[1], self._shard_cache[2], self._shard_cache[3]

    def take(self, n: int) -> list[Cut]:
        """The next ``n`` draws (ids ``<cut id>#<draw>@<stream>.<pass>``)."""
        out = []
        for _ in range(n):
            epoch, within = divmod(self.position, self.epoch_length)
            order, ends = self._epoch_order(epoch)
            slot = int(np.searchsorted(ends, within, side="right"))
            start = int(ends[slot - 1]) if slot else 0
            cuts, cut_index, draw_number = self._shard_draws(epoch, int(order[slot]))
            cut = cuts[cut_index[within - start]]
            draw_id = f"{cut.id}#{draw_number[within - start]}@{self.name}.{epoch}"
            cut = cut.with_id(draw_id)
            if self.stable_windows:
                cut = with_draw_key(cut, f"{self.seed}/{draw_id}")
            out.append(cut)
            self.position += 1
        return out


def batch_counts(weights: Mapping[str, float], slots: int, first_batch: int, num_batches: int) -> dict[str, np.ndarray]:
    """Slots of each domain in batches ``first_batch .. first_batch + num_batches - 1``.

    Domain d gets ``floor(slots w_d)`` slots plus one more in batch k when the systematic sample
    ``u_k + j`` (``u_k = frac(k phi)``, j = 0, 1, ...) falls into d's share of the fractional
    parts. Deterministic and computed without iterating, so a resumed sampler can tell how many
    draws each stream gave after any number of batches.

    Args:
        weights: domain -> weight (> 0; normalized here). Iteration order matters (kept).
        slots: slots per batch shared by weight.
        first_batch: index of the first batch.
        num_batches: number of batches.

    Returns:
        domain -> (num_batches,) int64 slot counts; the counts of a batch sum to ``slots``.
    """
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    w = w / w.sum()
    target = slots * w
    base = np.floor(target + 1e-9).astype(np.int64)
    extra_total = slots - int(base.sum())
    frac = np.clip(target - base, 0.0, None)
    bounds = np.concatenate([[0.0], np.cumsum(frac)])
    if extra_total > 0:
        bounds *= extra_total / bounds[-1]  # exactly extra_total points fall in [0, extra_total)
    k = np.arange(first_batch, first_batch + num_batches, dtype=np.float64)
    u = np.mod(k * _PHI, 1.0)[:, None]  # (N, 1)
    below = np.clip(np.ceil(bounds[None, :] - u), 0, extra_total)  # points u + j below each bound
    extras = np.diff(below, axis=1).astype(np.int64)  # (N, D), 0 or 1
    return {name: base[i] + extras[:, i] for i, name in enumerate(names)}


def total_counts(weights: Mapping[str, float], slots: int, num_batches: int, chunk: int = 1 << 20) -> dict[str, int]:
    """Slots each domain received in the first ``num_batches`` batches (see :func:`batch_counts`)."""
    totals = dict.fromkeys(weights, 0)
    for first in range(0, num_batches, chunk):
        counts = batch_counts(weights, slots, first, min(chunk, num_batches - first))
        for name, c in counts.items():
            totals[name] += int(c.sum())
    return totals


class BalancedStreamSampler(torch.utils.data.Sampler):
    """Endless batches (``CutSet`` of ``batch_size`` cuts) from domain streams and a full-band stream.

    Used with ``DataLoader(dataset, sampler=sampler, batch_size=None)``; it has no length (Lightning
    treats the epoch as endless: stop with ``max_batches``/``max_steps``, validate every
    ``val_check_interval`` batches given as an int).

    Args:
        streams: domain -> its stream (this rank's data of that domain).
        weights: domain -> weight; the keys must be those of ``streams``.
        batch_size: cuts per batch B.
        full_band: stream of full-band cuts; needed when ``min_full_band > 0``.
        min_full_band: full-band cuts in every batch (taken first), < B.
    """

    def __init__(
        self,
        streams: Mapping[str, CutStream],
        weights: Mapping[str, float],
        batch_size: int,
        full_band: CutStream | None = None,
        min_full_band: int = 0,
    ) -> None:
        super().__init__()
        if set(streams) != set(weights):
            raise ValueError(f"weights name {sorted(weights)}, the streams are {sorted(streams)}")
        if any(w <= 0 for w in weights.values()):
            raise ValueError(f"every domain weight must be > 0, got {dict(weights)}")
        if not 0 <= min_full_band < batch_size:
            raise ValueError(f"min_full_band must be in [0, batch_size={batch_size}), got {min_full_band}")
        if min_full_band and full_band is None:
            raise ValueError("min_full_band > 0 needs a full-band stream")
        self.streams = dict(streams)
        self.weights = {name: float(weights[name]) for name in streams}
        self.batch_size = batch_size
        self.full_band = full_band
        self.min_full_band = min_full_band
        self.batches = 0  # batches yielded so far

    @property
    def slots(self) -> int:
        """Slots per batch shared by domain weight."""
        return self.batch_size - self.min_full_band

    def seek(self, batches: int) -> None:
        """Place every stream where it stands after ``batches`` batches (no audio is read)."""
        if batches < 0:
            raise ValueError(f"batches must be >= 0, got {batches}")
        for name, total in total_counts(self.weights, self.slots, batches).items():
            self.streams[name].position = total
        if self.full_band is not None:
            self.full_band.position = batches * self.min_full_band
        self.batches = batches

    def next_batch(self) -> CutSet:
        """The next batch: ``min_full_band`` full-band draws, then the domains' draws."""
        counts = batch_counts(self.weights, self.slots, self.batches, 1)
        cuts = self.full_band.take(self.min_full_band) if self.full_band is not None else []
        for name, stream in self.streams.items():
            cuts += stream.take(int(counts[name][0]))
        self.batches += 1
        return CutSet.from_cuts(cuts)

    def __iter__(self) -> Iterator[CutSet]:
        while True:
            yield self.next_batch()


__all__ = [
    "BalancedStreamSampler",
    "CutStream",
    "Shard",
    "batch_counts",
    "draws_per_cut",
    "rank_shards",
    "shar_shards",
    "with_draw_key",
    "total_counts",
]
