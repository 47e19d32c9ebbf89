"""Audio folder -> lhotse manifests: scan and probe files, split train/val/test, write jsonl.gz.

The command line front end is ``codecplatform prepare`` (see :func:`prepare_main`)::

    codecplatform prepare --audio_dir data/corpus --out_dir data/manifests

writes ``recordings_{split}.jsonl.gz``, ``cuts_{split}.jsonl.gz`` (split in train/val/test) and
``problems.json`` (files that were skipped, with the reason) into ``out_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".oga", ".mp3")
SPLITS: tuple[str, ...] = ("train", "val", "test")

_SILENCE_PEAK = 1e-6  # a file whose absolute peak stays below this is "silent"
_BLOCK_FRAMES = 1 << 18  # frames read at once while probing (~6 s at 44.1 kHz)
_FALLBACK_CHUNK_SECONDS = 60.0  # chunk length when lhotse's reader probes a file


@dataclass
class FileProblem:
    """A file that was skipped while scanning an audio folder.

    path:    the file.
    problem: one of ``unreadable``, ``zero_length``, ``silent``, ``non_finite``.
    detail:  a human readable explanation (error message, peak level, count of bad samples).
    """

    path: str
    problem: str
    detail: str


class _ProbeFailed(Exception):
    """Raised inside the probe with the problem kind and its detail."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


class _SampleChecker:
    """Accumulates peak and non-finite counts over blocks of samples (any shape)."""

    def __init__(self) -> None:
        self.frames = 0
        self.peak = 0.0
        self.non_finite = 0

    def add(self, block: np.ndarray, frames: int) -> None:
        finite = np.isfinite(block)
        self.non_finite += int(block.size - np.count_nonzero(finite))
        if block.size:
            self.peak = max(self.peak, float(np.max(np.abs(np.where(finite, block, 0.0)))))
        self.frames += frames

    def verdict(self) -> None:
        """Raise :class:`_ProbeFailed` if the samples seen so far make the file unusable."""
        if self.frames == 0:
            raise _ProbeFailed("zero_length", "the file holds no samples")
        if self.non_finite:
            raise _ProbeFailed("non_finite", f"{self.non_finite} NaN/inf samples")
        if self.peak < _SILENCE_PEAK:
            raise _ProbeFailed("silent", f"peak {self.peak:.3g} < {_SILENCE_PEAK:g}")


def _check_with_soundfile(path: Path) -> None:
    """Read ``path`` block by block with soundfile; raise :class:`_ProbeFailed` on a bad file.

    Raises ``sf.LibsndfileError``/``RuntimeError`` when soundfile cannot read the format at all.
    """
    checker = _SampleChecker()
    with sf.SoundFile(str(path)) as f:
        if f.frames == 0:
            raise _ProbeFailed("zero_length", "the file holds no samples")
        for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            checker.add(block, block.shape[0])  # block: (frames, channels)
    checker.verdict()


def _check_with_lhotse(recording: Recording) -> None:
    """Probe a recording with lhotse's reader, ``_FALLBACK_CHUNK_SECONDS`` at a time."""
    if recording.num_samples == 0:
        raise _ProbeFailed("zero_length", "the file holds no samples")
    checker = _SampleChecker()
    offset = 0.0
    while offset < recording.duration:
        duration = min(_FALLBACK_CHUNK_SECONDS, recording.duration - offset)
        block = recording.load_audio(offset=offset, duration=duration)  # (channels, samples)
        checker.add(block, block.shape[-1])
        offset += _FALLBACK_CHUNK_SECONDS
    checker.verdict()


def _probe(path: Path, recording_id: str) -> Recording | FileProblem:
    """Build the recording of ``path`` and check its samples; a problem instead of raising."""
    try:
        size = path.stat().st_size
    except OSError as err:  # removed or unreadable since the folder was listed
        return FileProblem(str(path), "unreadable", _one_line(str(err)))
    if size == 0:
        return FileProblem(str(path), "zero_length", "empty file (0 bytes)")
    soundfile_error: Exception | None = None
    try:
        _check_with_soundfile(path)
    except _ProbeFailed as failed:
        return FileProblem(str(path), failed.problem, failed.detail)
    except Exception as err:  # a format soundfile cannot decode: lhotse's readers may
        soundfile_error = err
    try:
        recording = Recording.from_file(path, recording_id=recording_id)
        if soundfile_error is not None:
            _check_with_lhotse(recording)
    except _ProbeFailed as failed:
        return FileProblem(str(path), failed.problem, failed.detail)
    except Exception as err:
        reason = f"lhotse: {err}"
        if soundfile_error is not None:
            reason = f"soundfile: {soundfile_error}; {reason}"
        return FileProblem(str(path), "unreadable", _one_line(reason))
    return recording


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_id(relative: Path) -> str:
    """``speech/Some File.wav`` -> ``speech__Some_File``: no extension, only safe characters."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in relative.with_suffix("").parts]
    return "__".join(parts)


def _find_audio(audio_dir: Path, extensions: Sequence[str]) -> Iterator[Path]:
    wanted = {ext.lower() for ext in extensions}
    for path in sorted(audio_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in wanted:
            yield path


def scan_audio_dir(
    audio_dir: str | Path,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    num_workers: int = 1,
) -> tuple[RecordingSet, list[FileProblem]]:
    """Find audio files under ``audio_dir`` (recursively), probe each one and build recordings.

    Every file is read in full (in blocks, so memory stays small) to find files that are
    unreadable, hold no samples, are silent (peak < 1e-6) or hold NaN/inf samples. Such files are
    reported as :class:`FileProblem` and skipped; the scan never stops on a bad file.

    Args:
        audio_dir: folder to scan.
        extensions: file name endings to pick up (case-insensitive).
        num_workers: threads probing files in parallel.

    Returns:
        The recordings (id = relative path without extension, ``/`` -> ``__``, other unsafe
        characters -> ``_``; source = absolute path) and the problems, both in path order.

    Raises:
        FileNotFoundError: ``audio_dir`` is not a folder.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder {audio_dir} does not exist or is not a folder")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    paths = [p.resolve() for p in _find_audio(audio_dir, extensions)]
    ids: list[str] = []
    taken: set[str] = set()
    for path in paths:
        base = _safe_id(path.relative_to(audio_dir.resolve()))
        rec_id, n = base, 1
        while rec_id in taken:  # e.g. a.wav and a.flac side by side
            rec_id = f"{base}_{path.suffix.lstrip('.').lower()}" if n == 1 else f"{base}_{n}"
            n += 1
        taken.add(rec_id)
        ids.append(rec_id)
    if num_workers == 1:
        results = [_probe(path, rec_id) for path, rec_id in zip(paths, ids)]
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_probe, paths, ids))
    recordings = [r for r in results if isinstance(r, Recording)]
    problems = [r for r in results if isinstance(r, FileProblem)]
    return RecordingSet.from_recordings(recordings), problems


def _unit_hash(recording_id: str, seed: int) -> float:
    """A stable number in [0, 1) for ``recording_id`` (sha1, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha1(f"{seed}:{recording_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_recordings(
    recordings: RecordingSet, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, RecordingSet]:
    """Split recordings into train/val/test by a stable hash of each recording id.

    A recording's split depends only on its id and ``seed``, so adding files to a corpus does not
    move existing recordings between splits. With 3 or more recordings every split with a
    fraction > 0 (and train) is non-empty: an empty split receives the recording of the largest
    split whose hash lies nearest to the empty split's hash interval.

    Args:
        recordings: the recordings to split.
        val_fraction: expected share of validation recordings, in [0, 1).
        test_fraction: expected share of test recordings, in [0, 1); val + test < 1.
        seed: changes the hash, hence the split.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``, each in the order of ``recordings``.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    bounds = {
        "val": (0.0, val_fraction),
        "test": (val_fraction, val_fraction + test_fraction),
        "train": (val_fraction + test_fraction, 1.0),
    }
    recs = list(recordings)
    u = {r.id: _unit_hash(r.id, seed) for r in recs}
    members: dict[str, list[str]] = {name: [] for name in SPLITS}
    for r in recs:
        name = next(n for n, (lo, hi) in bounds.items() if lo <= u[r.id] < hi)
        members[name].append(r.id)

    required = ["train"]
    if len(recs) >= 3:
        required += [n for n, frac in (("val", val_fraction), ("test", test_fraction)) if frac > 0]
    for name in required:
        if members[name]:
            continue
        donors = [n for n in SPLITS if len(members[n]) >= 2]
        if not donors:
            continue
        donor = max(donors, key=lambda n: len(members[n]))
        lo, hi = bounds[name]
        moved = min(members[donor], key=lambda rid: (min(abs(u[rid] - lo), abs(u[rid] - hi)), rid))
        members[donor].remove(moved)
        members[name].append(moved)

    split_of = {rid: name for name, ids in members.items() for rid in ids}
    return {
        name: RecordingSet.from_recordings(r for r in recs if split_of[r.id] == name)
        for name in SPLITS
    }


def _format_problems(problems: Sequence[FileProblem]) -> str:
    if not problems:
        return "no problems found"
    width = max(len(p.problem) for p in problems)
    lines = [f"{len(problems)} file(s) skipped:"]
    lines += [f"  {p.problem:<{width}}  {p.path}  ({p.detail})" for p in problems]
    return "\n".join(lines)


def prepare_manifests(
    audio_dir: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 1,
) -> dict[str, Path]:
    """Scan ``audio_dir``, split the usable recordings and write lhotse manifests to ``out_dir``.

    Writes ``recordings_{split}.jsonl.gz`` and ``cuts_{split}.jsonl.gz`` for train/val/test (one
    cut per recording, cut id = recording id; a multi-channel file gives a ``MultiCut``) and
    ``problems.json`` (list of ``{"path", "problem", "detail"}``), and prints a short table of the
    skipped files.

    Args:
        audio_dir: folder of audio files (searched recursively).
        out_dir: folder for the manifests (created).
        val_fraction: expected share of validation recordings.
        test_fraction: expected share of test recordings.
        seed: seed of the split hash.
        num_workers: threads probing files.

    Returns:
        Paths of the cut manifests keyed by split.

    Raises:
        FileNotFoundError: ``audio_dir`` does not exist.
        ValueError: ``audio_dir`` holds no usable audio.
    """
    audio_dir, out_dir = Path(audio_dir), Path(out_dir)
    recordings, problems = scan_audio_dir(audio_dir, num_workers=num_workers)
    print(_format_problems(problems))
    if len(recordings) == 0:
        raise ValueError(
            f"no usable audio in {audio_dir} (looked for {', '.join(AUDIO_EXTENSIONS)}; "
            f"{len(problems)} file(s) skipped)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = split_recordings(recordings, val_fraction, test_fraction, seed)
    cut_paths: dict[str, Path] = {}
    for name, recs in splits.items():
        recs.to_file(out_dir / f"recordings_{name}.jsonl.gz")
        cuts = CutSet.from_manifests(recordings=recs)
        cuts = CutSet.from_cuts(cut.with_id(cut.recording_id) for cut in cuts)
        cut_paths[name] = out_dir / f"cuts_{name}.jsonl.gz"
        cuts.to_file(cut_paths[name])
    (out_dir / "problems.json").write_text(json.dumps([asdict(p) for p in problems], indent=2))
    hours = sum(r.duration for r in recordings) / 3600
    sizes = ", ".join(f"{name} {len(recs)}" for name, recs in splits.items())
    print(f"{len(recordings)} recordings ({hours:.2f} h): {sizes} -> {out_dir}")
    return cut_paths


def load_cuts(path: str | Path) -> CutSet:
    """Read a cut manifest eagerly; an empty manifest gives an empty ``CutSet``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cut manifest {path} does not exist")
    cuts = CutSet.from_file(path)
    return CutSet() if cuts is None else cuts  # lhotse returns None for an empty file


def prepare_main(argv: list[str] | None = None) -> int:
    """``codecplatform prepare``: build manifests from an audio folder.

    Returns:
        0 on success, 2 when the audio folder is missing or holds no usable audio.
    """
    parser = argparse.ArgumentParser(
        prog="codecplatform prepare",
        description="Scan an audio folder, skip bad files, write lhotse train/val/test manifests.",
    )
    parser.add_argument(
        "--audio_dir", type=Path, required=True, help="folder of audio files (recursive)"
    )
    parser.add_argument("--out_dir", type=Path, required=True, help="where manifests are written")
    parser.add_argument(
        "--val_fraction", type=float, default=0.1, help="share of validation recordings"
    )
    parser.add_argument("--test_fraction", type=float, default=0.1, help="share of test recordings")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split hash")
    parser.add_argument("--num_workers", type=int, default=1, help="threads probing files")
    args = parser.parse_args(argv)
    try:
        paths = prepare_manifests(
            args.audio_dir,
            args.out_dir,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            num_workers=args.num_workers,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"codecplatform prepare: error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:>5}: {path}")
    return 0


__all__ = [
    "AUDIO_EXTENSIONS",
    "FileProblem",
    "load_cuts",
    "prepare_main",
    "prepare_manifests",
    "scan_audio_dir",
    "split_recordings",
]
