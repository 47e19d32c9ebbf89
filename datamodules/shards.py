"""Segment shards: written once by ``codecplatform prepare --shar_dir``, read sequentially in training.

Writing (:func:`export_shar`): the cuts of a split are shuffled (``seed``) and packed, whole
recordings at a time, into shards of about ``shard_size`` segments. Every shard is one job of a
process pool: it decodes each of its recordings once, resamples and maps channels to the target
(``sample_rate``, ``channels``), cuts fixed-length segments of ``segment_seconds`` (the last one
ends at the recording's end and overlaps the one before, so every segment has the full length;
a recording shorter than a segment is one shorter segment), shuffles the segments of the shard,
and writes a lhotse Shar shard ``cuts.{i:06d}.jsonl.gz`` + ``recording.{i:06d}.tar`` (FLAC, 16
bit: read without a seek penalty). A shard is written under a temporary name and renamed when
complete, and ``{folder}.plan.json`` beside the folder records the plan, so a second run skips
finished shards. A recording
that fails to decode is named and left out. Without ``segment_seconds`` a segment is a whole
recording (the cut id stays the recording id).

Reading (:class:`ShardWindowStream`): each rank and each DataLoader worker reads its own shards
(:func:`shard_assignment`) one after the other, in an order shuffled per pass, segment after
segment, through a shuffle buffer of whole decoded segments whose size is set in MB
(``buffer_mb``): memory per worker is bounded by that setting, not by the corpus. Every segment
is drawn once per window length of its audio per pass (``draws_per_cut``), each draw a window at
a random offset inside the segment. Everything a worker yields is a function of (seed, rank,
world size, worker, number of workers) and of how many batches it yielded before; the positions
are simulated without audio, so a resumed run skips exactly the consumed batches and yields the
batches an uninterrupted run would have (:meth:`ShardWindowStream.start_at`).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lhotse import CutSet, Recording
from lhotse.audio import AudioSource
from lhotse.cut import Cut, MonoCut, MultiCut
from lhotse.shar.writers import AudioTarWriter, JsonlShardWriter

from codecplatform.dsp.channels import map_channels
from datamodules.sampling import Shard, draws_per_cut, shar_shards

PLAN_SUFFIX = ".plan.json"  # beside the shard folder: lhotse reads every file inside it as a field
#: MB of a reading worker's memory outside the shuffle buffer that ``buffer_mb`` must also cover: the shard
#: reader (lhotse's Shar iterator, the FLAC decoder), measured at 9 MB on 10 s segments (RESULTS.md), with margin.
READER_RESERVE_MB = 16.0


# ---------------------------------------------------------------------------------------- writing
@dataclass
class ShardReport:
    """What :func:`export_shar` did: shards written and skipped (already complete), segments and
    seconds of audio written, and the recordings that failed to decode (``[(source, error)]``)."""

    written: int
    skipped: int
    segments: int
    seconds: float
    failed: list[tuple[str, str]]


def segment_starts(num_samples: int, segment_samples: int) -> list[int]:
    """Start samples of the fixed-length segments of a recording of ``num_samples``: every
    ``segment_samples``, the last one ending at the recording's end ([0] when it is shorter)."""
    if num_samples <= segment_samples:
        return [0]
    starts = list(range(0, num_samples - segment_samples + 1, segment_samples))
    if starts[-1] + segment_samples < num_samples:
        starts.append(num_samples - segment_samples)
    return starts


def _segment_cut(seg_id: str, audio: np.ndarray, sample_rate: int, custom: dict[str, Any]) -> Cut:
    """A cut of an in-Shar segment (C, N) with its placeholder recording."""
    channels = list(range(audio.shape[0]))
    recording = Recording(
        id=seg_id,
        sources=[AudioSource(type="shar", channels=channels, source="")],
        sampling_rate=sample_rate,
        num_samples=audio.shape[1],
        duration=audio.shape[1] / sample_rate,
        channel_ids=channels,
    )
    kind = MonoCut if len(channels) == 1 else MultiCut
    channel: int | list[int] = 0 if len(channels) == 1 else channels
    return kind(
        id=seg_id,
        start=0.0,
        duration=recording.duration,
        channel=channel,
        recording=recording,
        custom=dict(custom),
    )


def _decode(cut: Cut, rate: int | None, channels: int | None, source: str) -> tuple[np.ndarray, int]:
    """The whole audio of ``cut`` at ``rate`` with ``channels``: (C, N) float32 and its rate.

    A cut of a whole file that soundfile reads is decoded block by block, each block mapped to
    ``channels`` and resampled by a streaming soxr resampler (whole-file resampling through lhotse
    needed about 12x the decoded size: 4 GB for a 14-minute 48 kHz stereo track); other cuts go
    through lhotse."""
    rec = cut.recording if cut.has_recording else None
    whole = rec is not None and len(rec.sources) == 1 and rec.sources[0].type == "file" and not rec.transforms
    if whole and cut.start == 0 and abs(cut.duration - rec.duration) < 1e-3:
        import soundfile as sf
        import soxr

        parts = []
        with sf.SoundFile(rec.sources[0].source) as f:
            out_rate = rate or f.samplerate
            width = channels or f.channels
            stream = None if out_rate == f.samplerate else soxr.ResampleStream(f.samplerate, out_rate, width, "float32")
            while len(block := f.read(1 << 18, dtype="float32", always_2d=True)):  # read() never pads
                if channels is not None:
                    block = map_channels(block.T, channels, f"recording {source}").T
                block = np.ascontiguousarray(block)  # (frames, C)
                parts.append(block if stream is None else stream.resample_chunk(block))
            if stream is not None:
                parts.append(stream.resample_chunk(np.zeros((0, width), dtype=np.float32), last=True))
        audio = np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)  # (N, C)
        return np.ascontiguousarray(audio.T, dtype=np.float32), out_rate
    target = cut if rate is None else cut.resample(rate)
    audio = np.asarray(target.load_audio(), dtype=np.float32)  # (C_in, N)
    audio = audio[None] if audio.ndim == 1 else audio
    if channels is not None:
        audio = map_channels(audio, channels, f"recording {source}")
    return audio, target.sampling_rate


def _write_shard(job: dict[str, Any]) -> tuple[int, float, list[tuple[str, str]]]:
    """Decode the recordings of one shard, cut, shuffle and write it (a worker process job).

    Returns (segments, seconds, failed recordings)."""
    out_dir, index = Path(job["out_dir"]), job["index"]
    rate, channels, seconds = job["sample_rate"], job["channels"], job["segment_seconds"]
    segments: list[tuple[str, np.ndarray, int, dict[str, Any]]] = []
    failed: list[tuple[str, str]] = []
    for cut in job["cuts"]:
        source = str(cut.recording.sources[0].source) if cut.has_recording else cut.id
        try:
            audio, sr = _decode(cut, rate, channels, source)  # (C, N)
            if not np.isfinite(audio).all():
                raise ValueError("NaN/inf samples")
        except Exception as err:  # named and left out: the other recordings of the shard go on
            failed.append((source, " ".join(str(err).split())[:300]))
            continue
        custom = {**(cut.custom or {}), "source": cut.id}
        if seconds is None:
            segments.append((cut.id, audio, sr, custom))
            continue
        length = max(1, round(seconds * sr))
        for k, start in enumerate(segment_starts(audio.shape[1], length)):
            piece = np.ascontiguousarray(audio[:, start : start + length])
            segments.append((f"{cut.id}-{k:05d}", piece, sr, {**custom, "source_start": round(start / sr, 6)}))
    random.Random(f"{job['seed']}/{index}").shuffle(segments)
    tmp = out_dir.parent / f".{out_dir.name}.tmp.{index:06d}"
    tmp.mkdir(parents=True, exist_ok=True)
    tar, manifest = tmp / "recording.tar", tmp / "cuts.jsonl.gz"
    if not segments:  # every recording failed: an empty shard, so that a second run skips it too
        tarfile.open(tar, "w").close()
        gzip.open(manifest, "wb").close()
    with (
        AudioTarWriter(str(tar), shard_size=None, format=job["format"]) as audio_writer,
        JsonlShardWriter(str(manifest), shard_size=None) as cut_writer,
    ):
        for seg_id, piece, sr, custom in segments:
            cut = _segment_cut(seg_id, piece, sr, custom)
            audio_writer.write(seg_id, piece, sr, manifest=cut.recording)
            cut_writer.write(cut)
    os.replace(tar, out_dir / f"recording.{index:06d}.tar")
    os.replace(manifest, out_dir / f"cuts.{index:06d}.jsonl.gz")  # last: its presence marks the shard done
    tmp.rmdir()
    return len(segments), sum(p.shape[1] / sr for _, p, sr, _ in segments), failed


def _plan(cuts: Sequence[Cut], shard_size: int, segment_seconds: float | None, rate: int | None) -> list[list[int]]:
    """Indices of ``cuts`` per shard: whole recordings, about ``shard_size`` segments a shard."""
    shards: list[list[int]] = [[]]
    filled = 0
    for i, cut in enumerate(cuts):
        if segment_seconds is None:
            n = 1
        else:
            sr = rate or cut.sampling_rate
            n = len(segment_starts(round(cut.duration * sr), max(1, round(segment_seconds * sr))))
        if filled >= shard_size:
            shards.append([])
            filled = 0
        shards[-1].append(i)
        filled += n
    return [s for s in shards if s]


def export_shar(
    cuts: CutSet,
    out_dir: str | Path,
    shard_size: int = 1000,
    seed: int = 0,
    segment_seconds: float | None = None,
    sample_rate: int | None = None,
    channels: int | None = None,
    num_workers: int = 1,
    audio_format: str = "flac",
) -> ShardReport:
    """Write ``cuts`` as Shar shards of fixed-length segments into ``out_dir`` (see the module
    docstring); resumable: shards already complete under the same plan are skipped.

    Args:
        cuts: the cuts of one split (one per recording).
        out_dir: the shard folder (created): ``cuts.{i:06d}.jsonl.gz`` + ``recording.{i:06d}.tar``.
        shard_size: segments per shard (whole recordings: a shard can hold a few more).
        seed: shuffles the recordings before packing and the segments inside every shard.
        segment_seconds: segment length; None: a segment is a whole recording.
        sample_rate: rate of the written audio; None: each recording's own.
        channels: channels of the written audio (``map_channels``); None: each recording's own.
        num_workers: processes writing shards in parallel (one shard each at a time).
        audio_format: ``flac`` (16 bit) or ``wav``.

    Raises:
        ValueError: a bad argument, or ``out_dir`` holds shards written under another plan.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if segment_seconds is not None and segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format must be flac or wav, got {audio_format!r}")
    ordered = sorted(cuts, key=lambda c: c.id)
    random.Random(seed).shuffle(ordered)
    groups = _plan(ordered, shard_size, segment_seconds, sample_rate)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "segment_seconds": segment_seconds,
        "sample_rate": sample_rate,
        "channels": channels,
        "format": audio_format,
        "seed": seed,
        "shards": [[ordered[i].id for i in group] for group in groups],
    }
    plan_path = out_dir.parent / f"{out_dir.name}{PLAN_SUFFIX}"
    if plan_path.is_file():
        if json.loads(plan_path.read_text()) != plan:
            raise ValueError(
                f"{out_dir} holds shards of another corpus or other settings ({plan_path}): "
                "remove the folder or choose another --shar_dir"
            )
    elif any(out_dir.glob("cuts.*.jsonl.gz")):
        raise ValueError(f"{out_dir} holds shards without a plan ({plan_path}): remove the folder or choose another")
    plan_path.write_text(json.dumps(plan, indent=1))
    jobs, skipped = [], 0
    for index, group in enumerate(groups):
        if (out_dir / f"cuts.{index:06d}.jsonl.gz").is_file():
            skipped += 1
            continue
        jobs.append(
            {
                "out_dir": str(out_dir),
                "index": index,
                "cuts": [ordered[i] for i in group],
                "sample_rate": sample_rate,
                "channels": channels,
                "segment_seconds": segment_seconds,
                "seed": seed,
                "format": audio_format,
            }
        )
    if num_workers == 1 or len(jobs) <= 1:
        results = [_write_shard(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_write_shard, jobs))
    return ShardReport(
        written=len(jobs),
        skipped=skipped,
        segments=sum(r[0] for r in results),
        seconds=sum(r[1] for r in results),
        failed=[f for r in results for f in r[2]],
    )


# ---------------------------------------------------------------------------------------- reading
def shard_assignment(num_shards: int, world_size: int, rank: int, num_workers: int, worker: int) -> list[int]:
    """The shards one DataLoader worker of one rank reads: every ``world_size``-th shard goes to a
    rank, and every ``num_workers``-th of those to a worker. Disjoint across all (rank, worker)
    pairs and covering all shards.

    Raises:
        ValueError: fewer shards than ``world_size x num_workers`` (some worker would have none).
    """
    readers = world_size * num_workers
    if num_shards < readers:
        raise ValueError(
            f"{num_shards} shard(s) for {world_size} rank(s) x {num_workers} loader worker(s): every worker "
            "needs at least one; write more shards (a smaller --shard_size) or use fewer workers"
        )
    return list(range(num_shards))[rank::world_size][worker::num_workers]


@dataclass(frozen=True)
class _SegmentInfo:
    samples: int  # at the stream's rate
    draws: int  # per pass
    domain: str


class _Plan:
    """The index-level stream of one worker: which segment enters the buffer when, which segment
    each draw takes and at which offset. Reads no audio, so a resumed run can replay it."""

    def __init__(self, segments: list[list[_SegmentInfo]], capacity: int, window: int, key: list[int]) -> None:
        self.segments = segments  # per assigned shard, per segment in file order
        self.capacity = capacity
        self.window = window
        self.key = key
        self.rng = np.random.default_rng(key)
        self.epoch, self.slot, self.seg = 0, 0, 0  # read pointer: pass, shard slot in the pass's order
        self.order = self._order(0)
        self.buffer: list[list[Any]] = []  # [ref, draws left]; ref = (epoch, shard, segment)
        self.draws = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([*self.key, epoch]).permutation(len(self.segments))

    def _read(self) -> tuple[int, int, int]:
        while self.seg >= len(self.segments[self.order[self.slot]]):
            self.slot, self.seg = self.slot + 1, 0
            if self.slot == len(self.order):
                self.epoch, self.slot = self.epoch + 1, 0
                self.order = self._order(self.epoch)
        ref = (self.epoch, int(self.order[self.slot]), self.seg)
        self.seg += 1
        return ref

    def draw(self) -> tuple[list[tuple[int, int, int]], tuple[int, int, int], int, bool]:
        """(refs read into the buffer first, the drawn ref, its window offset, whether it left)."""
        read = []
        while len(self.buffer) < self.capacity:
            ref = self._read()
            read.append(ref)
            self.buffer.append([ref, self.segments[ref[1]][ref[2]].draws])
        i = int(self.rng.integers(len(self.buffer)))
        ref = self.buffer[i][0]
        samples = self.segments[ref[1]][ref[2]].samples
        offset = int(self.rng.integers(max(1, samples - self.window + 1)))
        self.buffer[i][1] -= 1
        done = self.buffer[i][1] == 0
        if done:
            self.buffer[i] = self.buffer[-1]
            self.buffer.pop()
        self.draws += 1
        return read, ref, offset, done


class _ShardReader:
    """Segments of the assigned shards by (shard, index), read sequentially; reopens a shard only
    to go back (after a resume) or to another shard."""

    def __init__(self, shards: list[Shard], sample_rate: int, channels: int) -> None:
        self.shards, self.sample_rate, self.channels = shards, sample_rate, channels
        self._shard: int | None = None
        self._iter: Iterator[Cut] | None = None
        self._next = 0

    def get(self, shard: int, index: int) -> np.ndarray | None:
        """(C, N) float32 of a segment at the stream's rate and channels; None (with a warning) if bad."""
        if self._shard != shard or self._next > index:
            fields = {"cuts": [self.shards[shard].shar_cuts], "recording": [self.shards[shard].shar_recording]}
            self._iter, self._shard, self._next = iter(CutSet.from_shar(fields=fields)), shard, 0
        assert self._iter is not None
        while self._next < index:
            next(self._iter)
            self._next += 1
        cut = next(self._iter)
        self._next += 1
        try:
            if cut.sampling_rate != self.sample_rate:
                cut = cut.resample(self.sample_rate)
            audio = np.asarray(cut.load_audio(), dtype=np.float32)
        except Exception as err:
            warnings.warn(
                f"skipping segment {cut.id} of {self.shards[shard].name}: {err}", RuntimeWarning, stacklevel=2
            )
            return None
        audio = audio[None] if audio.ndim == 1 else audio
        return map_channels(audio, self.channels, f"segment {cut.id}")


class ShardWindowStream(torch.utils.data.IterableDataset):
    """Endless batches (B, C, T) float32 of windows read sequentially from segment shards.

    Used with ``DataLoader(stream, batch_size=None, num_workers=W)``: every worker yields whole
    batches, and the DataLoader takes batch k from worker k mod W, so the k-th batch is fixed by
    (seed, rank, world size, W). See the module docstring for the order and the buffer.

    Args:
        shar_dir: folder of shards (``codecplatform prepare --shar_dir``: ``DIR/train``).
        sample_rate: rate of the batches (segments at another rate are resampled).
        channels: channels C of the batches (``map_channels``).
        segment_seconds: window length; T = round(segment_seconds x sample_rate).
        batch_size: windows per batch B.
        buffer_mb: MB a worker's data may take: the shuffle buffer of decoded segments (float32),
            the reader and the batch being built (:meth:`capacity`; the buffer holds at least one
            segment, so a setting below ``READER_RESERVE_MB`` plus two segments is exceeded).
        seed: seed of every order and offset.
        world_size: ranks.
        rank: this rank.
        finish: window post-processing (normalization, padding) ``(C, <=T) -> (C, T)``; None: pad.
        augmentation: applied to each batch as in ``AudioWindowDataset``; None: none.

    Raises:
        FileNotFoundError: no shards in ``shar_dir``.
    """

    def __init__(
        self,
        shar_dir: str | Path,
        sample_rate: int,
        channels: int,
        segment_seconds: float,
        batch_size: int,
        buffer_mb: float = 256.0,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        finish: Any = None,
        augmentation: Any = None,
    ) -> None:
        super().__init__()
        if buffer_mb <= 0:
            raise ValueError(f"buffer_mb must be > 0, got {buffer_mb}")
        self.shards = shar_shards(shar_dir)
        self.shar_dir = str(shar_dir)
        self.sample_rate, self.channels = sample_rate, channels
        self.window = round(segment_seconds * sample_rate)
        self.segment_seconds = segment_seconds
        self.batch_size, self.buffer_mb, self.seed = batch_size, buffer_mb, seed
        self.world_size, self.rank = world_size, rank
        self.finish, self.augmentation = finish, augmentation
        self.start_batch = 0  # batches of the whole loader already consumed (resume)
        self._metadata: list[list[_SegmentInfo]] | None = None

    def start_at(self, batches: int) -> None:
        """Make the next iteration continue after the first ``batches`` batches of the loader."""
        self.start_batch = batches

    def capacity(self, segments: Sequence[Sequence[_SegmentInfo]]) -> int:
        """Segments the buffer holds, so that the worker's data stays under ``buffer_mb``: what is
        left after :data:`READER_RESERVE_MB`, two copies of the segment being read (decoded and
        converted) and two of the batch being built (windows and their stack), over the longest
        segment's float32 size; at least one, at most the worker's segments (then all of them)."""
        longest = max(s.samples for shard in segments for s in shard)
        segment = longest * self.channels * 4
        batch = self.batch_size * self.window * self.channels * 4
        spare = self.buffer_mb * 2**20 - READER_RESERVE_MB * 2**20 - 2 * segment - 2 * batch
        return min(max(1, int(spare // segment)), sum(len(shard) for shard in segments))

    def _segments(self, shard: Shard) -> list[_SegmentInfo]:
        out = []
        for cut in shard.metadata():
            samples = round(cut.duration * self.sample_rate)
            domain = str((cut.custom or {}).get("domain") or "general")
            out.append(_SegmentInfo(samples, draws_per_cut(cut.duration, self.segment_seconds), domain))
        return out

    def worker_plan(self, num_workers: int, worker: int) -> tuple[list[int], _Plan]:
        """(shard indices, index-level plan) of one worker of this rank."""
        assigned = shard_assignment(len(self.shards), self.world_size, self.rank, num_workers, worker)
        listed = {i: self._segments(self.shards[i]) for i in assigned}
        assigned = [i for i in assigned if listed[i]]  # shards whose every recording failed hold none
        if not assigned:
            raise ValueError(
                f"{self.shar_dir}: the shards of rank {self.rank} worker {worker} hold no segment; "
                "write more shards (a smaller --shard_size)"
            )
        segments = [listed[i] for i in assigned]
        key = [self.seed, self.world_size, self.rank, num_workers, worker]
        return assigned, _Plan(segments, self.capacity(segments), self.window, key)

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = torch.utils.data.get_worker_info()
        num_workers, loader_worker = (1, 0) if info is None else (info.num_workers, info.id)
        # The loader takes its j-th batch from worker j % W; after start_batch batches the next one is
        # batch start_batch of the uninterrupted run, so this worker continues stream (id + start) % W.
        worker = (loader_worker + self.start_batch) % num_workers
        assigned, plan = self.worker_plan(num_workers, worker)
        reader = _ShardReader([self.shards[i] for i in assigned], self.sample_rate, self.channels)
        done = max(0, (self.start_batch - worker + num_workers - 1) // num_workers)  # its batches so far
        for _ in range(done * self.batch_size):
            plan.draw()
        buffer: dict[tuple[int, int, int], np.ndarray | None] = {}
        for ref, _ in sorted(plan.buffer, key=lambda item: item[0]):  # what the buffer holds now
            buffer[ref] = reader.get(ref[1], ref[2])
        batch_index = done
        while True:
            windows, domains = [], []
            for _ in range(self.batch_size):
                read, ref, offset, left = plan.draw()
                for new in read:
                    buffer[new] = reader.get(new[1], new[2])
                audio = buffer[ref]
                if left:
                    del buffer[ref]
                if audio is None:
                    continue
                windows.append(audio[:, offset : offset + self.window])  # (C, <= T)
                domains.append(plan.segments[ref[1]][ref[2]].domain)
            yield self._batch(windows, domains, batch_index, worker)
            batch_index += 1

    def _batch(self, windows: list[np.ndarray], domains: list[str], batch_index: int, worker: int) -> torch.Tensor:
        if not windows:
            return torch.zeros(0, self.channels, self.window)
        finished = []
        for w in windows:
            if self.finish is not None:
                w = self.finish(w)
            elif w.shape[1] < self.window:
                w = np.pad(w, ((0, 0), (0, self.window - w.shape[1])))
            finished.append(w)
        if self.augmentation is not None:
            rng = random.Random(f"{self.seed}/shards/{self.rank}/{worker}/{batch_index}")
            return torch.from_numpy(self.augmentation(finished, domains, self.sample_rate, rng))
        return torch.from_numpy(np.stack(finished).astype(np.float32, copy=False))


__all__ = [
    "PLAN_SUFFIX",
    "READER_RESERVE_MB",
    "ShardReport",
    "ShardWindowStream",
    "export_shar",
    "segment_starts",
    "shard_assignment",
]
