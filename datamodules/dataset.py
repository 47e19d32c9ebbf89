"""Map-style lhotse dataset: a ``CutSet`` (one sampler batch) -> audio windows (B, C, T), or with
``return_text`` a mapping ``{"audio": (B, C, T), "text": B strings or None}``."""

from __future__ import annotations

import random
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut

from codecplatform.dsp.channels import map_channels
from codecplatform.dsp.loudness import normalize_loudness
from datamodules.augment import Augmentation, limit_peak

_SILENT_RMS = 1e-6  # a window whose RMS is below this is left as it is by normalize_db


def cut_source(cut: Cut) -> str:
    """The file (or other source) a cut reads from, for messages: ``"<unknown source>"`` if none."""
    recording = getattr(cut, "recording", None)
    if recording is None or not recording.sources:
        return "<unknown source>"
    return str(recording.sources[0].source)


class DecodedAudioCache:
    """Whole recordings decoded and resampled once, kept in memory (least recently used out first),
    so that a random window of a compressed file costs a slice instead of a decode.

    Why: soundfile cannot seek in Ogg/Vorbis or MP3 without decoding from the previous page, and lhotse
    resamples each window on its own (a random 0.64 s window of a 62 s Ogg: 0.23 s, of a WAV: 0.4 ms).
    lhotse's own caching (``set_caching_enabled``) keys on (offset, duration), so it never hits for
    random windows.

    One cache per process (each DataLoader worker fills its own). A recording larger than the whole
    budget is not cached (loaded window by window as without a cache).

    Args:
        max_bytes: memory budget of the decoded float32 samples.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def cacheable(cut: Cut) -> bool:
        """A cut that reads one recording (no mix, no per-cut transform other than resampling)."""
        return getattr(cut, "recording", None) is not None and hasattr(cut, "channel")

    def recording(self, cut: Cut, sample_rate: int) -> np.ndarray | None:
        """(C_rec, N) float32 of the cut's whole recording at ``sample_rate``; None when it does not fit.
        Raises what lhotse raises for an unreadable file."""
        rec = cut.recording
        key = (rec.id, int(sample_rate))
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        size = rec.num_channels * rec.resample(sample_rate).num_samples * 4
        if size > self.max_bytes:
            return None
        audio = np.asarray(rec.resample(sample_rate).load_audio(), dtype=np.float32)
        audio = audio[None] if audio.ndim == 1 else audio
        while self._items and self._bytes + audio.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
        self._items[key] = audio
        self._bytes += audio.nbytes
        return audio

    def window(self, window: Cut, sample_rate: int) -> np.ndarray | None:
        """The samples of ``window`` (a cut at ``sample_rate``) and its channels: (C, N) float32, as
        ``window.load_audio()`` gives them; None when the recording is not cached (too large)."""
        full = self.recording(window, sample_rate)
        if full is None:
            return None
        start = round(window.start * sample_rate)
        audio = full[:, start : start + window.num_samples]
        channel = window.channel
        if isinstance(channel, int):
            audio = audio[channel : channel + 1]
        elif channel is not None:
            audio = audio[list(channel)]
        return audio


def cut_domain(cut: Cut) -> str:
    """``cut.custom["domain"]`` ("speech", "music", "general", ...); ``"general"`` when absent."""
    custom = getattr(cut, "custom", None) or {}
    domain = custom.get("domain")
    return "general" if domain is None else str(domain)


def window_text(cut: Cut, window: Cut) -> str | None:
    """The supervision text of ``window`` (a part of ``cut``): the texts of the supervisions that
    overlap it, in time order, joined by spaces ("" when none overlaps, e.g. an instrumental part
    of timed lyrics); None when ``cut`` has no supervision at all (no sidecar: no text known).
    A supervision that only partly overlaps the window counts whole, and a whole-recording
    transcript (``.txt``) is the text of every window of its recording."""
    if not cut.supervisions:
        return None
    parts = sorted(window.supervisions, key=lambda s: s.start)
    return " ".join(s.text.strip() for s in parts if s.text and s.text.strip())


def normalize_rms(audio: np.ndarray, target_db: float) -> np.ndarray:
    """Scale ``audio`` (any shape) to an RMS of ``target_db`` dBFS, then limit the peak to 1.0.

    Silent audio (RMS < 1e-6) is returned unchanged. When the gain would clip, the result is
    scaled down so that its peak is exactly 1.0 (the RMS is then below the target).
    """
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms < _SILENT_RMS:
        return audio
    out = audio * (10.0 ** (target_db / 20.0) / rms)
    peak = float(np.max(np.abs(out)))
    if peak > 1.0:
        out = out / peak
    return out.astype(np.float32, copy=False)


class AudioWindowDataset(torch.utils.data.Dataset):
    """Lhotse-style dataset: ``dataset[cuts]`` loads one fixed-length window per cut.

    Used with a lhotse sampler and ``DataLoader(dataset, sampler=sampler, batch_size=None)``:
    the sampler yields ``CutSet`` batches and each one becomes a (B, C, T) float32 tensor with
    C = ``channels`` and T = ``round(segment_seconds * sample_rate)``.

    Per cut: resample to ``sample_rate``; with ``random_offset`` take the window at a random
    offset (training), else from the cut's start (val/test, whose cuts are already windows);
    map channels (see :func:`map_channels`); optionally normalize loudness; zero-pad at the end
    when the cut is shorter than the window.

    A cut whose audio fails to load or holds NaN/inf is dropped with a warning naming its file,
    so B may be smaller than the sampler's batch, and 0 when every cut failed: the result is then
    an empty (0, C, T) tensor that the training module must skip.

    With an ``augmentation`` (training), each cut's window is re-drawn at another random offset
    while it is clipped (at most ``augmentation.tries_per_cut`` windows; then the cut is dropped
    with a warning), and the loaded windows go through the augmentation together with their
    domains (:func:`cut_domain`); it fills the slots of dropped cuts from the rest of the batch,
    so B is the sampler's batch size unless every cut failed (then B = 0 as above).

    Args:
        sample_rate: output sample rate in Hz.
        channels: output channel count C.
        segment_seconds: window length in seconds.
        random_offset: random window offsets (training) instead of offset 0.
        normalize_db: target RMS level of each window in dBFS (e.g. -24.0); None keeps levels.
        normalize_lufs: target integrated loudness of each window in LUFS (ITU-R BS.1770-4,
            e.g. DAC's -24.0), peak limited to 1.0; None keeps levels. At most one of the two.
        seed: seed of the offset generator.
        rank: distributed rank; each rank and each DataLoader worker draws its own offsets.
        augmentation: on-the-fly augmentation of each batch (training only); None: none.
        return_text: return ``{"audio": (B', C, T), "text": [B' x str | None]}`` with each window's
            supervision text (:func:`window_text`; MuCodec's lyrics CTC) instead of the tensor.
            Not with an augmentation (it mixes and refills windows).
        decode_cache_mb: keep up to this many MB of whole decoded recordings in memory per process
            (:class:`DecodedAudioCache`: compressed files are decoded once instead of per window);
            0: no cache, every window is loaded from its file.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        segment_seconds: float,
        random_offset: bool,
        normalize_db: float | None = None,
        seed: int = 0,
        rank: int = 0,
        augmentation: Augmentation | None = None,
        normalize_lufs: float | None = None,
        return_text: bool = False,
        decode_cache_mb: float = 0.0,
    ) -> None:
        super().__init__()
        if return_text and augmentation is not None:
            raise ValueError("return_text cannot be combined with an augmentation (it mixes and refills windows)")
        if decode_cache_mb < 0:
            raise ValueError(f"decode_cache_mb must be >= 0, got {decode_cache_mb}")
        self.cache = DecodedAudioCache(int(decode_cache_mb * 2**20)) if decode_cache_mb > 0 else None
        self.return_text = return_text
        self._last_window: Cut | None = None  # the window _load_raw read last (for return_text)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if channels <= 0:
            raise ValueError(f"channels must be > 0, got {channels}")
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_seconds = segment_seconds
        self.num_samples = round(segment_seconds * sample_rate)
        if self.num_samples < 1:
            raise ValueError(f"segment_seconds={segment_seconds} is shorter than one sample at {sample_rate} Hz")
        self.random_offset = random_offset
        if normalize_db is not None and normalize_lufs is not None:
            raise ValueError("set at most one of normalize_db and normalize_lufs")
        self.normalize_db = normalize_db
        self.normalize_lufs = normalize_lufs
        self.seed = seed
        self.rank = rank
        self.augmentation = augmentation
        self._rng = random.Random(f"{seed}/rank{rank}/main")
        self._rng_worker: int | None = None  # DataLoader worker id the generator was seeded for

    def _generator(self) -> random.Random:
        """The offset generator of this process: re-seeded once in each DataLoader worker."""
        info = torch.utils.data.get_worker_info()
        worker = None if info is None else info.id
        if worker != self._rng_worker:
            self._rng = random.Random(f"{self.seed}/rank{self.rank}/worker{worker}")
            self._rng_worker = worker
        return self._rng

    def _draw_generator(self, cut: Cut) -> random.Random:
        """The generator of one draw: seeded by its ``draw_key`` (``sampling.with_draw_key``), the
        same in every run, rank and worker; without a key, this process's generator."""
        key = (cut.custom or {}).get("draw_key")
        return self._generator() if key is None else random.Random(f"{self.seed}/draw/{key}")

    def _batch_generator(self, cuts: list[Cut]) -> random.Random:
        """The generator of a batch's augmentation: seeded by its cuts' draw keys when all have
        one (a resumed run augments a batch as the uninterrupted run did), else this process's."""
        keys = [(cut.custom or {}).get("draw_key") for cut in cuts]
        if any(key is None for key in keys):
            return self._generator()
        return random.Random(f"{self.seed}/batch/" + "|".join(keys))

    def _window(self, cut: Cut, rng: random.Random | None = None) -> Cut:
        """The part of ``cut`` (already at ``sample_rate``) to load: at most one window long."""
        if cut.num_samples <= self.num_samples:
            return cut
        start = 0
        if self.random_offset:
            start = (rng or self._draw_generator(cut)).randint(0, cut.num_samples - self.num_samples)
        offset = start / self.sample_rate
        duration = min(self.num_samples / self.sample_rate, cut.duration - offset)
        return cut.truncate(offset=offset, duration=duration, preserve_id=True)

    def load_window(self, cut: Cut) -> np.ndarray | None:
        """Load one window of ``cut``: (channels, T) float32, or None (with a warning) if bad."""
        audio = self._load_raw(cut)
        return None if audio is None else self._finish(audio)

    def _load_raw(self, cut: Cut, rng: random.Random | None = None) -> np.ndarray | None:
        """One window of ``cut`` as recorded: (channels, <= T) float32, or None if bad."""
        window = self._window(cut.resample(self.sample_rate), rng)
        self._last_window = window
        try:
            audio = None
            if self.cache is not None and DecodedAudioCache.cacheable(window):
                audio = self.cache.window(window, self.sample_rate)
            if audio is None:
                audio = window.load_audio()  # (C_in, N)
        except Exception as err:
            warnings.warn(
                f"skipping cut {cut.id}: cannot load audio of {cut_source(cut)} ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if not np.isfinite(audio).all():
            warnings.warn(
                f"skipping cut {cut.id}: {cut_source(cut)} holds NaN/inf samples",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        audio = map_channels(audio, self.channels, f"recording {cut_source(cut)}")
        return audio[:, : self.num_samples]  # (C, <= T)

    def finish_window(self, audio: np.ndarray) -> np.ndarray:
        """Normalize (``normalize_db`` / ``normalize_lufs``) and zero-pad a raw window:
        (C, <= T) -> (C, T); also for windows read elsewhere (``datamodules.shards``)."""
        return self._finish(audio)

    def _finish(self, audio: np.ndarray) -> np.ndarray:
        """Normalize (``normalize_db``) and zero-pad a raw window: (C, <= T) -> (C, T)."""
        if self.normalize_db is not None:
            audio = normalize_rms(audio, self.normalize_db)
        if self.normalize_lufs is not None:
            audio = limit_peak(normalize_loudness(audio, self.sample_rate, self.normalize_lufs), 1.0)
        if audio.shape[1] < self.num_samples:
            audio = np.pad(audio, ((0, 0), (0, self.num_samples - audio.shape[1])))
        return audio

    def load_unclipped_window(self, cut: Cut) -> np.ndarray | None:
        """Load a window of ``cut`` that the augmentation does not count as clipped, trying new
        random offsets: (channels, T) float32, or None (with a warning) if bad or all clipped."""
        assert self.augmentation is not None
        # one offset only: a window from the start, or a cut no longer than the window
        fixed = not self.random_offset or cut.resample(self.sample_rate).num_samples <= self.num_samples
        tries = 1 if fixed else self.augmentation.tries_per_cut
        rng = self._draw_generator(cut)  # successive offsets of this draw
        for _ in range(tries):
            audio = self._load_raw(cut, rng)
            if audio is None:
                return None
            if not self.augmentation.is_clipped(audio):
                return self._finish(audio)
        aug = self.augmentation
        warnings.warn(
            f"skipping cut {cut.id}: {'the window' if tries == 1 else f'all {tries} windows'} drawn "
            f"from {cut_source(cut)} clipped ({aug.clip_min_run} or more consecutive samples at "
            f"|x| >= {aug.clip_threshold})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None

    def __getitem__(self, cuts: CutSet) -> torch.Tensor | dict[str, Any]:
        """Load a batch of cuts: a ``CutSet`` of B cuts -> (B', C, T) float32 with B' <= B
        (B' = B with an augmentation unless every cut failed)."""
        if self.augmentation is not None:
            cut_list = list(cuts)
            loaded = [self.load_unclipped_window(cut) for cut in cut_list]
            if all(w is None for w in loaded):
                return torch.zeros(0, self.channels, self.num_samples)
            batch = self.augmentation(
                loaded, [cut_domain(cut) for cut in cut_list], self.sample_rate, self._batch_generator(cut_list)
            )
            return torch.from_numpy(batch)  # (B, C, T)
        if self.return_text:
            return self._audio_and_text(cuts)
        windows = [w for w in (self.load_window(cut) for cut in cuts) if w is not None]
        if not windows:
            return torch.zeros(0, self.channels, self.num_samples)
        return torch.from_numpy(np.stack(windows))  # (B', C, T)

    def _audio_and_text(self, cuts: CutSet) -> dict[str, Any]:
        """``{"audio": (B', C, T), "text": [B' texts]}`` of the cuts that loaded (see ``return_text``)."""
        windows, texts = [], []
        for cut in cuts:
            audio = self.load_window(cut)
            if audio is not None:
                assert self._last_window is not None
                windows.append(audio)
                texts.append(window_text(cut, self._last_window))
        if not windows:
            return {"audio": torch.zeros(0, self.channels, self.num_samples), "text": []}
        return {"audio": torch.from_numpy(np.stack(windows)), "text": texts}


__all__ = ["AudioWindowDataset", "cut_domain", "cut_source", "map_channels", "normalize_rms", "window_text"]
