"""Audio folder -> lhotse manifests: scan and probe files, split train/val/test, write jsonl.gz.

The command line front end is ``codecplatform prepare`` (see :func:`prepare_main`)::

    codecplatform prepare --audio_dir data/corpus --out_dir data/manifests \
        --num_workers 8 --sample_rate 44100 --channels 1 --domain auto [--shar_dir data/shar]

writes into ``out_dir``:

- ``recordings_{split}.jsonl.gz``, ``supervisions_{split}.jsonl.gz`` and ``cuts_{split}.jsonl.gz``
  for the splits train/val/test (one cut per recording, cut id = recording id);
- ``problems.json``: the files that were skipped, ``[{"path", "problem", "detail"}, ...]``
  (the same table is printed).

Files are probed in parallel worker processes (``--num_workers``); results come back in path
order, so the manifests do not depend on the number of workers. A bad file is reported and
skipped, never fatal. The problem kinds (:data:`PROBLEM_KINDS`):

- ``unreadable``: neither soundfile nor lhotse decodes it (garbage bytes, unknown format);
- ``truncated``: the header promises more audio than the file holds (WAV data chunk longer
  than the file, or a decoder error after some audio was read);
- ``zero_length``: 0 bytes or no samples;
- ``silent``: absolute peak below 1e-6 everywhere;
- ``non_finite``: NaN or inf samples;
- ``low_sample_rate``: sample rate below ``--sample_rate`` (the model's rate: upsampled audio
  holds nothing in the top band the model must learn);
- ``channel_mismatch``: fewer channels than ``--channels`` (a mono file in a stereo corpus: a
  repeated channel teaches nothing about the stereo image). More channels than wanted are fine:
  the dataset downmixes to mono or keeps the first channels.

Each cut carries custom fields for balanced sampling (see :mod:`datamodules.sampling`):

- ``domain``: ``speech``, ``music`` or ``general``; ``--domain auto`` (default) takes the domain
  word that the file's top folder under ``audio_dir`` contains (``corpus/music/x.wav``,
  ``corpus/speech16/x.wav``, ``corpus/LibriSpeech/...``), else the one ``audio_dir``'s own name
  contains, else ``general`` (also for a name with two words); ``--domain music`` tags every file.
- ``full_band`` (bool) and ``high_band_db``: the share of the power above
  ``full_band_cutoff`` x Nyquist of the reference rate (``--sample_rate``, or the file's own rate
  without it), in dB relative to the power below the reference Nyquist, from the mean power
  spectrum (mono mix, 2048-point Hann frames) of the first 30 s. ``full_band`` is
  ``high_band_db >= full_band_db`` (default -60 dB, between real top-band content and dither).
  A file whose rate is below the reference rate is never full-band (``high_band_db`` null).

Sidecar text files become lhotse supervisions (``supervisions_{split}.jsonl.gz`` and in the cuts):
for ``song.wav`` (any audio extension), ``song.lrc`` (timed lyrics, ``[mm:ss.xx] line``; one
supervision per line, ending where the next one starts; ``custom.kind = "lyrics"``) is used when
present, else ``song.txt`` (one supervision over the whole recording, ``custom.kind =
"transcript"``). Sidecars are read as UTF-8 (undecodable bytes replaced); an empty one is ignored.

``--shar_dir DIR`` also exports each split as lhotse Shar shards (``DIR/{split}/cuts.000000.jsonl.gz``
+ ``recording.000000.tar``, FLAC audio, about ``--shard_size`` segments per shard, recordings
shuffled by ``--seed``), decoded once per file in ``--num_workers`` processes at ``--sample_rate``
and ``--channels``, cut into segments of ``--segment_seconds`` (default: whole recordings),
resumable: see :mod:`datamodules.shards`. ``--group_regex`` keeps groups of files (versions of one
piece, a speaker, an album) in one split: see :func:`group_key`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

from datamodules.shards import export_shar

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DOMAINS: tuple[str, ...] = ("speech", "music", "general")
PROBLEM_KINDS: tuple[str, ...] = (
    "unreadable",
    "truncated",
    "zero_length",
    "silent",
    "non_finite",
    "low_sample_rate",
    "channel_mismatch",
)

_SILENCE_PEAK = 1e-6  # a file whose absolute peak stays below this is "silent"
_BLOCK_FRAMES = 1 << 18  # frames read at once while probing (~6 s at 44.1 kHz)
_HEADER_SLACK_FRAMES = 8192  # decoded this many fewer frames than the header says: the header's count is off
_FALLBACK_CHUNK_SECONDS = 60.0  # chunk length when lhotse's reader probes a file
_SPECTRUM_FFT = 2048  # frame length of the full-band measure
_SPECTRUM_SECONDS = 30.0  # audio (from the start) that the full-band measure looks at
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_LRC_TIME = re.compile(r"\[(\d+):(\d+(?:\.\d+)?)\]")


@dataclass
class FileProblem:
    """A file that was skipped while scanning an audio folder.

    path:    the file.
    problem: one of :data:`PROBLEM_KINDS`.
    detail:  a human readable explanation (error message, peak level, count of bad samples).
    """

    path: str
    problem: str
    detail: str


@dataclass(frozen=True)
class ProbeSettings:
    """What the probe checks besides readability (plain values: sent to worker processes).

    min_sample_rate: files below this rate are ``low_sample_rate`` problems; None: no check. Also
        the reference rate of the full-band measure (None: each file's own rate).
    channels: files with fewer channels are ``channel_mismatch`` problems; None: no check.
    full_band_cutoff: start of the top band as a fraction of the reference Nyquist, in (0, 1).
    full_band_db: a file is full-band when its top-band power share reaches this many dB.
    """

    min_sample_rate: int | None = None
    channels: int | None = None
    full_band_cutoff: float = 0.85
    full_band_db: float = -60.0

    def __post_init__(self) -> None:
        if self.min_sample_rate is not None and self.min_sample_rate <= 0:
            raise ValueError(f"min_sample_rate must be > 0 or None, got {self.min_sample_rate}")
        if self.channels is not None and self.channels <= 0:
            raise ValueError(f"channels must be > 0 or None, got {self.channels}")
        if not 0.0 < self.full_band_cutoff < 1.0:
            raise ValueError(f"full_band_cutoff must be in (0, 1), got {self.full_band_cutoff}")


@dataclass
class ProbedFile:
    """A usable file: its recording and its top-band power share (None: rate below reference)."""

    recording: Recording
    high_band_db: float | None


class _ProbeFailed(Exception):
    """Raised inside the probe with the problem kind and its detail."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


def high_band_db(power: np.ndarray, sample_rate: int, reference_rate: int, cutoff: float) -> float | None:
    """Top-band share of a mean power spectrum, in dB.

    Args:
        power: mean power spectrum (F,) of ``_SPECTRUM_FFT``-point frames at ``sample_rate``.
        sample_rate: rate of the analysed audio.
        reference_rate: rate whose Nyquist bounds the band (the model's rate).
        cutoff: the band is [cutoff, 1] x reference Nyquist.

    Returns:
        10 log10(power in the band / power below the reference Nyquist); None when
        ``sample_rate < reference_rate`` (the top band cannot be there); -inf for silence.
    """
    if sample_rate < reference_rate:
        return None
    freqs = np.fft.rfftfreq(_SPECTRUM_FFT, 1.0 / sample_rate)  # (F,)
    nyquist = reference_rate / 2
    below = power[freqs <= nyquist].sum()
    band = power[(freqs >= cutoff * nyquist) & (freqs <= nyquist)].sum()
    if below <= 0 or band <= 0:
        return -math.inf
    return float(10 * np.log10(band / below))


class _SampleChecker:
    """Accumulates frame count, peak, non-finite count and a mean power spectrum over blocks."""

    def __init__(self, sample_rate: int) -> None:
        self.frames = 0
        self.peak = 0.0
        self.non_finite = 0
        self.sample_rate = sample_rate
        self.power = np.zeros(_SPECTRUM_FFT // 2 + 1)
        self.spectrum_frames = 0
        self._carry = np.zeros(0, dtype=np.float64)  # mono samples not yet in a full frame
        self._window = np.hanning(_SPECTRUM_FFT)

    def add(self, block: np.ndarray) -> None:
        """Add ``block`` (frames, channels) of samples."""
        finite = np.isfinite(block)
        self.non_finite += int(block.size - np.count_nonzero(finite))
        clean = np.where(finite, block, 0.0)
        if block.size:
            self.peak = max(self.peak, float(np.max(np.abs(clean))))
        if self.frames < _SPECTRUM_SECONDS * self.sample_rate:
            mono = np.concatenate([self._carry, clean.mean(axis=1, dtype=np.float64)])
            n = mono.size // _SPECTRUM_FFT
            if n:
                frames = mono[: n * _SPECTRUM_FFT].reshape(n, _SPECTRUM_FFT) * self._window
                self.power += (np.abs(np.fft.rfft(frames, axis=1)) ** 2).sum(axis=0)
                self.spectrum_frames += n
            self._carry = mono[n * _SPECTRUM_FFT :]
        self.frames += block.shape[0]

    def verdict(self) -> None:
        """Raise :class:`_ProbeFailed` if the samples seen so far make the file unusable."""
        if self.frames == 0:
            raise _ProbeFailed("zero_length", "the file holds no samples")
        if self.non_finite:
            raise _ProbeFailed("non_finite", f"{self.non_finite} NaN/inf samples")
        if self.peak < _SILENCE_PEAK:
            raise _ProbeFailed("silent", f"peak {self.peak:.3g} < {_SILENCE_PEAK:g}")

    def high_band_db(self, settings: ProbeSettings) -> float | None:
        if self.spectrum_frames == 0 and self._carry.size:  # shorter than one frame: zero-pad it
            frame = np.pad(self._carry, (0, _SPECTRUM_FFT - self._carry.size)) * self._window
            self.power += np.abs(np.fft.rfft(frame)) ** 2
        reference = settings.min_sample_rate or self.sample_rate
        return high_band_db(self.power, self.sample_rate, reference, settings.full_band_cutoff)


def _check_header(sample_rate: int, channels: int, settings: ProbeSettings) -> None:
    if settings.min_sample_rate is not None and sample_rate < settings.min_sample_rate:
        raise _ProbeFailed("low_sample_rate", f"{sample_rate} Hz < the model's {settings.min_sample_rate} Hz")
    if settings.channels is not None and channels < settings.channels:
        raise _ProbeFailed("channel_mismatch", f"{channels} channel(s), the corpus wants {settings.channels}")


def _wav_truncation(f: sf.SoundFile) -> str | None:
    """libsndfile logs ``data : N (should be M)`` when a WAV data chunk runs past the file end."""
    match = _WAV_DATA_LOG.search(f.extra_info or "")
    if match is None:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    if present < declared < 0xFFFFFFF0:  # 0xFFFFFFFF and near: streamed WAVs of unknown length
        return f"the data chunk declares {declared} bytes, the file holds {present}"
    return None


def _check_with_soundfile(path: Path, settings: ProbeSettings) -> tuple[float | None, int]:
    """Read ``path`` block by block with soundfile; return the top-band share (dB) and the number
    of frames the decoder delivered.

    The delivered count is what a window reader can read, and it can fall short of the header's:
    an Ogg Vorbis stream whose first audio page has a granule position below its sample count
    (encoder start trimming) is counted by libsndfile as longer than it decodes (a track of the
    project's music set: 104 frames). A shortfall of at most ``_HEADER_SLACK_FRAMES`` (one Vorbis
    block) is such a miscount, and the recording gets the delivered length; more is truncation.

    Raises:
        _ProbeFailed: a bad file.
        sf.LibsndfileError, RuntimeError: soundfile cannot open the format at all.
    """
    with sf.SoundFile(str(path)) as f:
        if f.frames == 0:
            raise _ProbeFailed("zero_length", "the file holds no samples")
        _check_header(f.samplerate, f.channels, settings)
        truncated = _wav_truncation(f)
        if truncated is not None:
            raise _ProbeFailed("truncated", truncated)
        checker = _SampleChecker(f.samplerate)
        try:
            # read(), not blocks(): blocks() pads its last block to the header's count
            while len(block := f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)):
                checker.add(block)  # block: (frames, channels)
        except Exception as err:
            raise _ProbeFailed(
                "truncated", _one_line(f"decoding failed after {checker.frames} of {f.frames} frames: {err}")
            ) from err
        if 0 < checker.frames < f.frames - _HEADER_SLACK_FRAMES:
            raise _ProbeFailed("truncated", f"read {checker.frames} of {f.frames} frames")
    checker.verdict()
    return checker.high_band_db(settings), checker.frames


def _check_with_lhotse(recording: Recording, settings: ProbeSettings) -> float | None:
    """Probe a recording with lhotse's reader, ``_FALLBACK_CHUNK_SECONDS`` at a time."""
    if recording.num_samples == 0:
        raise _ProbeFailed("zero_length", "the file holds no samples")
    _check_header(recording.sampling_rate, recording.num_channels, settings)
    checker = _SampleChecker(recording.sampling_rate)
    offset = 0.0
    while offset < recording.duration:
        duration = min(_FALLBACK_CHUNK_SECONDS, recording.duration - offset)
        block = recording.load_audio(offset=offset, duration=duration)  # (channels, samples)
        checker.add(np.asarray(block).T)
        offset += _FALLBACK_CHUNK_SECONDS
    checker.verdict()
    return checker.high_band_db(settings)


def _probe(path: Path, recording_id: str, settings: ProbeSettings) -> ProbedFile | FileProblem:
    """Build the recording of ``path`` and check it; a problem instead of raising. Runs in a
    worker process."""
    try:
        size = path.stat().st_size
    except OSError as err:  # removed or unreadable since the folder was listed
        return FileProblem(str(path), "unreadable", _one_line(str(err)))
    if size == 0:
        return FileProblem(str(path), "zero_length", "empty file (0 bytes)")
    soundfile_error: Exception | None = None
    band_db: float | None = None
    decoded: int | None = None
    try:
        band_db, decoded = _check_with_soundfile(path, settings)
    except _ProbeFailed as failed:
        return FileProblem(str(path), failed.problem, failed.detail)
    except Exception as err:  # a format soundfile cannot decode: lhotse's readers may
        soundfile_error = err
    try:
        recording = Recording.from_file(path, recording_id=recording_id)
        if decoded is not None and decoded != recording.num_samples:  # the header miscounts
            recording = fastcopy(recording, num_samples=decoded, duration=decoded / recording.sampling_rate)
        if soundfile_error is not None:
            band_db = _check_with_lhotse(recording, settings)
    except _ProbeFailed as failed:
        return FileProblem(str(path), failed.problem, failed.detail)
    except Exception as err:
        reason = f"lhotse: {err}"
        if soundfile_error is not None:
            reason = f"soundfile: {soundfile_error}; {reason}"
        return FileProblem(str(path), "unreadable", _one_line(reason))
    return ProbedFile(recording, band_db)


def _probe_args(args: tuple[Path, str, ProbeSettings]) -> ProbedFile | FileProblem:
    return _probe(*args)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_id(relative: Path) -> str:
    """``speech/Some File.wav`` -> ``speech__Some_File``: no extension, only safe characters."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in relative.with_suffix("").parts]
    return "__".join(parts)


def _soundfile_reads(path: Path) -> bool:
    """Whether soundfile recognizes ``path``'s content as audio (reads its header only)."""
    try:
        sf.info(str(path))
    except Exception:
        return False
    return True


def find_audio(audio_dir: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> tuple[list[Path], int]:
    """The audio files under ``audio_dir`` (recursive, sorted) and the number of other files ignored.

    A file whose name ends in one of ``extensions`` is taken (a bad one becomes a problem when
    probed); any other file is taken when its content is audio that soundfile reads (an Opus file
    named ``.bin``, a WAV without extension), else ignored (sidecars, licences, notes).
    """
    wanted = {ext.lower() for ext in extensions}
    found, ignored = [], 0
    for path in sorted(audio_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() in wanted or _soundfile_reads(path):
            found.append(path)
        else:
            ignored += 1
    return found, ignored


def audio_files(audio_dir: Path, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[tuple[Path, str]]:
    """(absolute path, recording id) of every audio file under ``audio_dir`` (:func:`find_audio`);
    the id is the path under ``audio_dir`` without extension, ``/`` -> ``__``. Links are not
    followed: a link keeps its own name and folder."""
    paths = [p.absolute() for p in find_audio(audio_dir, extensions)[0]]
    return list(zip(paths, _recording_ids(paths, audio_dir.absolute())))


def _recording_ids(paths: Sequence[Path], root: Path) -> list[str]:
    ids: list[str] = []
    taken: set[str] = set()
    for path in paths:
        base = _safe_id(path.relative_to(root))
        rec_id, n = base, 1
        while rec_id in taken:  # e.g. a.wav and a.flac side by side
            rec_id = f"{base}_{path.suffix.lstrip('.').lower()}" if n == 1 else f"{base}_{n}"
            n += 1
        taken.add(rec_id)
        ids.append(rec_id)
    return ids


def probe_audio_dir(
    audio_dir: str | Path,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    num_workers: int = 1,
    settings: ProbeSettings | None = None,
) -> tuple[list[ProbedFile], list[FileProblem]]:
    """Find audio files under ``audio_dir`` (recursively) and probe each one.

    Files are found by :func:`find_audio` (extension, else content). Every file is read in full
    (in blocks, so memory stays small); see the module docstring for the problem kinds. Bad files
    are reported as :class:`FileProblem` and skipped; the scan never stops on a bad file.

    Args:
        audio_dir: folder to scan.
        extensions: file name endings to pick up (case-insensitive).
        num_workers: worker processes probing files in parallel (1: in this process).
        settings: sample rate / channel expectations and the full-band measure.

    Returns:
        The usable files (recording id = relative path without extension, ``/`` -> ``__``, other
        unsafe characters -> ``_``; source = absolute path) and the problems, both in path order
        whatever ``num_workers`` is.

    Raises:
        FileNotFoundError: ``audio_dir`` is not a folder.
    """
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder {audio_dir} does not exist or is not a folder")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    settings = settings or ProbeSettings()
    jobs = [(path, rec_id, settings) for path, rec_id in audio_files(audio_dir, extensions)]
    if num_workers == 1 or len(jobs) <= 1:
        results = [_probe_args(job) for job in jobs]
    else:
        chunk = max(1, len(jobs) // (8 * num_workers))
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_probe_args, jobs, chunksize=chunk))  # map keeps the order
    probed = [r for r in results if isinstance(r, ProbedFile)]
    problems = [r for r in results if isinstance(r, FileProblem)]
    return probed, problems


def scan_audio_dir(
    audio_dir: str | Path,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    num_workers: int = 1,
    settings: ProbeSettings | None = None,
) -> tuple[RecordingSet, list[FileProblem]]:
    """:func:`probe_audio_dir` without the full-band measures: (recordings, problems)."""
    probed, problems = probe_audio_dir(audio_dir, extensions, num_workers, settings)
    return RecordingSet.from_recordings(p.recording for p in probed), problems


def domain_of(path: Path, audio_dir: Path, domain: str) -> str:
    """The domain of ``path``: ``domain`` itself, or with ``"auto"`` the domain a folder name holds
    (:func:`folder_domain`): the file's top folder under ``audio_dir``, else ``audio_dir``'s own
    name (``--audio_dir data/speech16`` -> speech); ``"general"`` when neither names one."""
    if domain != "auto":
        return domain
    parts = path.relative_to(audio_dir).parts
    for name in (parts[0] if len(parts) > 1 else "", Path(audio_dir).resolve().name):
        found = folder_domain(name)
        if found is not None:
            return found
    return "general"


def folder_domain(name: str) -> str | None:
    """The domain of :data:`DOMAINS` whose word a folder name contains, case-insensitively
    (``speech16``, ``LibriSpeech``, ``music_48k``, ``general``); None for none, or for more than one
    (``speech_and_music``)."""
    found = [word for word in DOMAINS if word in name.lower()]
    return found[0] if len(found) == 1 else None


def _parse_lrc(text: str) -> list[tuple[float, str]]:
    """``[mm:ss.xx]line`` (several stamps per line allowed; tags like ``[ar:..]`` ignored) ->
    sorted (start seconds, text) pairs."""
    lines: list[tuple[float, str]] = []
    for raw in text.splitlines():
        stamps = _LRC_TIME.findall(raw)
        if not stamps:
            continue
        words = _LRC_TIME.sub("", raw).strip()
        lines += [(int(m) * 60 + float(s), words) for m, s in stamps]
    return sorted(lines, key=lambda item: item[0])


def sidecar_supervisions(recording: Recording, audio_path: Path) -> list[SupervisionSegment]:
    """Supervisions from ``<stem>.lrc`` (timed lyrics, preferred) or ``<stem>.txt`` (transcript)
    next to ``audio_path``; [] when there is none (see the module docstring)."""
    channel: int | list[int] = recording.channel_ids[0] if recording.num_channels == 1 else list(recording.channel_ids)
    lrc, txt = audio_path.with_suffix(".lrc"), audio_path.with_suffix(".txt")
    if lrc.is_file():
        timed = [(t, w) for t, w in _parse_lrc(lrc.read_text(encoding="utf-8", errors="replace"))]
        timed = [(t, w) for t, w in timed if t < recording.duration]
        segments = []
        for i, (start, words) in enumerate(timed):
            end = timed[i + 1][0] if i + 1 < len(timed) else recording.duration
            if words and end > start:
                segments.append(
                    SupervisionSegment(
                        id=f"{recording.id}-lyrics-{i:04d}",
                        recording_id=recording.id,
                        start=round(start, 3),
                        duration=round(end - start, 3),
                        channel=channel,
                        text=words,
                        custom={"kind": "lyrics"},
                    )
                )
        if segments:
            return segments
    source = txt if txt.is_file() else (lrc if lrc.is_file() else None)
    if source is None:
        return []
    text = _LRC_TIME.sub("", source.read_text(encoding="utf-8", errors="replace")).strip()
    if not text:
        return []
    return [
        SupervisionSegment(
            id=f"{recording.id}-transcript",
            recording_id=recording.id,
            start=0.0,
            duration=recording.duration,
            channel=channel,
            text=text,
            custom={"kind": "transcript" if source == txt else "lyrics"},
        )
    ]


def _unit_hash(recording_id: str, seed: int) -> float:
    """A stable number in [0, 1) for ``recording_id`` (sha1, independent of PYTHONHASHSEED)."""
    digest = hashlib.sha1(f"{seed}:{recording_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def group_key(relative_path: str, group_regex: str | re.Pattern[str] | None) -> str | None:
    """The group of a file from its path relative to the audio folder (``/``-separated).

    ``re.search(group_regex, relative_path)``: the first capture group when the expression has
    one, else the whole match; None (the file is a group of its own) without an expression or
    a match. E.g. ``^([^/]+)/`` groups by top folder (speaker), ``^(.+?)__`` by file-name prefix
    (album), and ``(?:.*__)?(.+?)(?:_enhanced)?\\.[^.]+$`` by piece (``album__track3.opus`` and
    ``other_album__track3_enhanced.opus`` are one group).
    """
    if group_regex is None:
        return None
    match = re.search(group_regex, relative_path)
    if match is None:
        return None
    key = match.group(1) if match.re.groups else match.group(0)
    return key if key else None


def split_recordings(
    recordings: RecordingSet,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    groups: dict[str, str] | None = None,
) -> dict[str, RecordingSet]:
    """Split recordings into train/val/test by a stable hash of each group (by default: each recording).

    A group's split depends only on its key and ``seed``, so adding files to a corpus does not
    move existing recordings between splits, and all recordings of a group (versions of one
    piece, one speaker, one album) land in the same split: nothing of a held-out group leaks into
    training. With 3 or more groups every split with a fraction > 0 (and train) is non-empty: an
    empty split receives the group of the largest split (in groups) whose hash lies nearest to
    the empty split's hash interval.

    Args:
        recordings: the recordings to split.
        val_fraction: expected share of validation groups, in [0, 1).
        test_fraction: expected share of test groups, in [0, 1); val + test < 1.
        seed: changes the hash, hence the split.
        groups: recording id -> group key; a recording not in it is a group of its own (its id).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``, each in the order of ``recordings``.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    bounds = {
        "val": (0.0, val_fraction),
        "test": (val_fraction, val_fraction + test_fraction),
        "train": (val_fraction + test_fraction, 1.0),
    }
    recs = list(recordings)
    group_of = {r.id: (groups or {}).get(r.id, r.id) for r in recs}
    keys = list(dict.fromkeys(group_of.values()))  # groups in order of first appearance
    u = {key: _unit_hash(key, seed) for key in keys}
    members: dict[str, list[str]] = {name: [] for name in SPLITS}
    for key in keys:
        name = next(n for n, (lo, hi) in bounds.items() if lo <= u[key] < hi)
        members[name].append(key)

    required = ["train"]
    if len(keys) >= 3:
        required += [n for n, frac in (("val", val_fraction), ("test", test_fraction)) if frac > 0]
    for name in required:
        if members[name]:
            continue
        donors = [n for n in SPLITS if len(members[n]) >= 2]
        if not donors:
            continue
        donor = max(donors, key=lambda n: len(members[n]))
        lo, hi = bounds[name]
        moved = min(members[donor], key=lambda k: (min(abs(u[k] - lo), abs(u[k] - hi)), k))
        members[donor].remove(moved)
        members[name].append(moved)

    split_of = {key: name for name, ids in members.items() for key in ids}
    return {name: RecordingSet.from_recordings(r for r in recs if split_of[group_of[r.id]] == name) for name in SPLITS}


def _format_problems(problems: Sequence[FileProblem]) -> str:
    if not problems:
        return "no problems found"
    width = max(len(p.problem) for p in problems)
    counts = ", ".join(f"{kind} {n}" for kind in PROBLEM_KINDS if (n := sum(p.problem == kind for p in problems)))
    lines = [f"{len(problems)} file(s) skipped ({counts}):"]
    lines += [f"  {p.problem:<{width}}  {p.path}  ({p.detail})" for p in problems]
    return "\n".join(lines)


def build_cuts(
    probed: Sequence[ProbedFile],
    audio_dir: Path,
    domain: str,
    settings: ProbeSettings,
    groups: dict[str, str] | None = None,
) -> tuple[CutSet, SupervisionSet]:
    """One cut per usable file (cut id = recording id) with sidecar supervisions and the custom
    fields ``domain``, ``full_band``, ``high_band_db`` and ``group`` (``groups[recording id]``, else
    the recording id; see the module docstring)."""
    root = audio_dir.absolute()
    cuts = []
    all_supervisions: list[SupervisionSegment] = []
    for item in probed:
        recording = item.recording
        path = Path(recording.sources[0].source)
        supervisions = sidecar_supervisions(recording, path)
        all_supervisions += supervisions
        cut = next(
            iter(
                CutSet.from_manifests(
                    recordings=RecordingSet.from_recordings([recording]),
                    supervisions=SupervisionSet.from_segments(supervisions) if supervisions else None,
                )
            )
        ).with_id(recording.id)
        band = item.high_band_db
        cut.custom = {
            "domain": domain_of(path, root, domain),
            "full_band": band is not None and band >= settings.full_band_db,
            "high_band_db": None if band is None or not math.isfinite(band) else round(band, 2),
            "group": (groups or {}).get(recording.id, recording.id),
        }
        cuts.append(cut)
    return CutSet.from_cuts(cuts), SupervisionSet.from_segments(all_supervisions)


def prepare_manifests(
    audio_dir: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 1,
    min_sample_rate: int | None = None,
    channels: int | None = None,
    domain: str = "auto",
    full_band_cutoff: float = 0.85,
    full_band_db: float = -60.0,
    shar_dir: str | Path | None = None,
    shard_size: int = 1000,
    group_regex: str | None = None,
    segment_seconds: float | None = None,
) -> dict[str, Path]:
    """Scan ``audio_dir``, split the usable recordings and write lhotse manifests to ``out_dir``.

    Writes ``recordings_{split}.jsonl.gz``, ``supervisions_{split}.jsonl.gz`` and
    ``cuts_{split}.jsonl.gz`` for train/val/test (one cut per recording, cut id = recording id; a
    multi-channel file gives a ``MultiCut``) and ``problems.json`` (list of ``{"path", "problem",
    "detail"}``), and prints a table of the skipped files. See the module docstring for the
    checks, the custom fields and the sidecar files.

    Args:
        audio_dir: folder of audio files (searched recursively).
        out_dir: folder for the manifests (created).
        val_fraction: expected share of validation recordings.
        test_fraction: expected share of test recordings.
        seed: seed of the split hash (and of the Shar cut order).
        num_workers: worker processes probing files.
        min_sample_rate: the model's sample rate: lower-rate files are skipped; reference of the
            full-band measure. None: no rate check, each file is measured against its own rate.
        channels: the model's channel count: files with fewer are skipped. None: no check.
        domain: ``speech``, ``music``, ``general`` for every file, or ``auto`` (top folder name).
        full_band_cutoff: the top band starts at this fraction of the reference Nyquist.
        full_band_db: full-band threshold of the top band's power share, dB.
        shar_dir: also export every split as Shar shards to ``shar_dir/{split}``
            (:func:`datamodules.shards.export_shar`: decoded once, in ``num_workers`` processes,
            at ``min_sample_rate`` and ``channels`` when given; resumable).
        shard_size: segments (cuts) per Shar shard.
        segment_seconds: cut the shards' audio into segments of this length; None: whole
            recordings.
        group_regex: regular expression over each file's path relative to ``audio_dir``; files
            with the same key (:func:`group_key`) land in the same split. None: every file its own
            group.

    Returns:
        Paths of the cut manifests keyed by split.

    Raises:
        FileNotFoundError: ``audio_dir`` does not exist.
        ValueError: ``audio_dir`` holds no usable audio, or a bad argument.
    """
    if domain != "auto" and domain not in DOMAINS:
        raise ValueError(f"domain must be 'auto' or one of {DOMAINS}, got {domain!r}")
    if segment_seconds is not None and segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
    if segment_seconds is not None and shar_dir is None:
        raise ValueError("segment_seconds cuts the Shar shards: give shar_dir too")
    settings = ProbeSettings(min_sample_rate, channels, full_band_cutoff, full_band_db)
    try:
        pattern = None if group_regex is None else re.compile(group_regex)
    except re.error as err:
        raise ValueError(f"group_regex {group_regex!r} is not a regular expression: {err}") from err
    audio_dir, out_dir = Path(audio_dir), Path(out_dir)
    probed, problems = probe_audio_dir(audio_dir, num_workers=num_workers, settings=settings)
    print(_format_problems(problems))
    root = audio_dir.absolute()
    groups: dict[str, str] = {}
    for item in probed:
        relative = Path(item.recording.sources[0].source).relative_to(root).as_posix()
        key = group_key(relative, pattern)
        groups[item.recording.id] = item.recording.id if key is None else key
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "problems.json").write_text(json.dumps([asdict(p) for p in problems], indent=2))
    if not probed:
        raise ValueError(
            f"no usable audio in {audio_dir} (looked for {', '.join(AUDIO_EXTENSIONS)} and any file "
            f"soundfile reads; "
            f"{len(problems)} file(s) skipped, see {out_dir / 'problems.json'})"
        )
    cuts, supervisions = build_cuts(probed, audio_dir, domain, settings, groups)
    recordings = RecordingSet.from_recordings(p.recording for p in probed)
    splits = split_recordings(recordings, val_fraction, test_fraction, seed, groups)
    cut_paths: dict[str, Path] = {}
    for name, recs in splits.items():
        ids = {r.id for r in recs}
        recs.to_file(out_dir / f"recordings_{name}.jsonl.gz")
        SupervisionSet.from_segments(s for s in supervisions if s.recording_id in ids).to_file(
            out_dir / f"supervisions_{name}.jsonl.gz"
        )
        split_cuts = cuts.filter(lambda cut, ids=ids: cut.id in ids).to_eager()
        cut_paths[name] = out_dir / f"cuts_{name}.jsonl.gz"
        split_cuts.to_file(cut_paths[name])
        if shar_dir is not None and len(split_cuts):
            report = export_shar(
                split_cuts,
                Path(shar_dir) / name,
                shard_size=shard_size,
                seed=seed,
                segment_seconds=segment_seconds,
                sample_rate=min_sample_rate,
                channels=channels,
                num_workers=num_workers,
            )
            for source, error in report.failed:
                print(f"  unreadable  {source}  ({error}): left out of the shards")
            print(
                f"{name}: {report.written} Shar shard(s) written ({report.segments} segments, "
                f"{report.seconds / 3600:.2f} h), {report.skipped} already complete -> {Path(shar_dir) / name}"
            )
    hours = sum(r.duration for r in recordings) / 3600
    sizes = ", ".join(
        f"{name} {len(recs)} ({len({groups[r.id] for r in recs})} group(s))" for name, recs in splits.items()
    )
    tags = [(c.custom["domain"], c.custom["full_band"]) for c in cuts]
    by_domain = ", ".join(
        f"{d} {sum(t == d for t, _ in tags)} ({sum(t == d and f for t, f in tags)} full-band)"
        for d in DOMAINS
        if any(t == d for t, _ in tags)
    )
    print(
        f"{len(recordings)} recordings ({hours:.2f} h): {sizes}; {by_domain}; "
        f"{len(supervisions)} supervision(s) -> {out_dir}"
    )
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
    """``codecplatform prepare``: build manifests (and optionally Shar shards) from an audio folder.

    Returns:
        0 on success, 2 when the audio folder is missing, holds no usable audio, or an argument
        is bad.
    """
    parser = argparse.ArgumentParser(
        prog="codecplatform prepare",
        description="Scan an audio folder, skip bad files, write lhotse train/val/test manifests.",
    )
    parser.add_argument("--audio_dir", type=Path, required=True, help="folder of audio files (recursive)")
    parser.add_argument("--out_dir", type=Path, required=True, help="where manifests are written")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of validation recordings")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="share of test recordings")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split hash and the Shar order")
    parser.add_argument("--num_workers", type=int, default=1, help="worker processes probing files")
    parser.add_argument(
        "--sample_rate", type=int, default=None, help="model rate: skip lower-rate files; full-band reference"
    )
    parser.add_argument("--channels", type=int, default=None, help="model channels: skip files with fewer")
    parser.add_argument(
        "--domain",
        default="auto",
        choices=["auto", *DOMAINS],
        help="domain tag (auto: the domain word in the top folder's name, else in --audio_dir's)",
    )
    parser.add_argument("--full_band_cutoff", type=float, default=0.85, help="top band start / Nyquist")
    parser.add_argument("--full_band_db", type=float, default=-60.0, help="full-band threshold, dB")
    parser.add_argument("--shar_dir", type=Path, default=None, help="also write Shar shards per split here")
    parser.add_argument("--shard_size", type=int, default=1000, help="segments (cuts) per Shar shard")
    parser.add_argument(
        "--segment_seconds",
        type=float,
        default=None,
        help="cut the shards' audio into segments of this length (default: whole recordings)",
    )
    parser.add_argument(
        "--group_regex",
        default=None,
        help="regular expression over the relative path; its first group (or match) is the group key: "
        "files of one group land in the same split",
    )
    args = parser.parse_args(argv)
    try:
        paths = prepare_manifests(
            args.audio_dir,
            args.out_dir,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            num_workers=args.num_workers,
            min_sample_rate=args.sample_rate,
            channels=args.channels,
            domain=args.domain,
            full_band_cutoff=args.full_band_cutoff,
            full_band_db=args.full_band_db,
            shar_dir=args.shar_dir,
            shard_size=args.shard_size,
            group_regex=args.group_regex,
            segment_seconds=args.segment_seconds,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"codecplatform prepare: error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:>5}: {path}")
    return 0


__all__ = [
    "AUDIO_EXTENSIONS",
    "DOMAINS",
    "PROBLEM_KINDS",
    "FileProblem",
    "ProbeSettings",
    "ProbedFile",
    "build_cuts",
    "domain_of",
    "find_audio",
    "folder_domain",
    "group_key",
    "export_shar",
    "high_band_db",
    "load_cuts",
    "prepare_main",
    "prepare_manifests",
    "probe_audio_dir",
    "scan_audio_dir",
    "sidecar_supervisions",
    "split_recordings",
]
