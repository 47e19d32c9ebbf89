"""On-the-fly training augmentation: EnCodec's mixing strategies s1-s4, loudness normalization,
random gain, clip rejection, reverb from user impulse responses, polarity flip and phase shift.

:class:`Augmentation` is built from YAML (``class_path: datamodules.augment.Augmentation``) and
given to :class:`~datamodules.dataset.AudioWindowDataset`, which loads the windows of a sampler
batch (re-drawing the offset of clipped ones, see :meth:`Augmentation.is_clipped`) and then calls
the augmentation once per batch. The math lives in pure functions below; the class only holds
the settings and the loaded impulse responses and draws the random numbers.

Sources of a mixture come from the same batch (no random access to the corpus, so it works on
streamed Shar data as well): output slot ``i`` uses window ``i`` as its first source whenever the
drawn strategy allows it, and the other sources are drawn from the rest of the batch. Per-domain
balance is therefore set by the sampler (lhotse mux weights); the strategies decide how the
batch's windows are combined. See :func:`choose_sources` for the draw and its fallbacks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.fft import irfft, next_fast_len, rfft

from codecplatform.dsp.loudness import normalize_loudness
from codecplatform.dsp.spectral import resample

MUSIC = "music"  # the domain that s1 draws from and s4 excludes (cut.custom["domain"])
STRATEGIES = ("s1", "s2", "s3", "s4")  # single music, single other, mix of 2, mix of 3 non-music
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


# --------------------------------------------------------------------------- pure functions
def longest_clipped_run(audio: np.ndarray, threshold: float) -> int:
    """Length of the longest run of consecutive samples with ``|x| >= threshold`` in any channel
    of ``audio`` (T,) or (C, T); 0 when no sample reaches the threshold."""
    x = np.atleast_2d(np.asarray(audio))
    hot = np.abs(x) >= threshold  # (C, T)
    if not hot.any():
        return 0
    padded = np.pad(hot.astype(np.int8), ((0, 0), (1, 1)))  # (C, T+2): runs start/end inside
    edges = np.diff(padded, axis=1)  # +1 at a run's start, -1 one past its end
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    # nonzero walks row by row, so the i-th start and i-th end belong to the same run
    return int(np.max(ends[1] - starts[1]))


def is_clipped(audio: np.ndarray, threshold: float = 0.999, min_run: int = 3) -> bool:
    """True when ``audio`` (T,) or (C, T) holds ``min_run`` or more consecutive samples at
    ``|x| >= threshold`` in one channel: the flat top a clipped recording leaves. A lone sample
    at full scale (a peak-normalized file) is not clipping."""
    return longest_clipped_run(audio, threshold) >= min_run


def db_to_amplitude(gain_db: float) -> float:
    """Amplitude factor of a gain in dB: ``10 ** (gain_db / 20)``."""
    return 10.0 ** (gain_db / 20.0)


def limit_peak(audio: np.ndarray, max_peak: float) -> np.ndarray:
    """Scale ``audio`` (any shape) down so that ``max |x| <= max_peak``; unchanged when it
    already is (a gain, never a waveshaper: the result is not clipped)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio * (max_peak / peak) if peak > max_peak else audio


def convolve_reverb(audio: np.ndarray, impulse_response: np.ndarray) -> np.ndarray:
    """Reverberate ``audio`` (C, T) with ``impulse_response`` (1 or C, L): (C, T) -> (C, T).

    FFT convolution; the full result (T + L - 1 samples) is scaled to the input's energy (summed
    over channels), then cut to the first T samples. A unit impulse is the identity and a delayed
    unit impulse a delay; silence stays silence. A mono IR is used for every channel.
    """
    channels, length = audio.shape
    if impulse_response.ndim != 2 or impulse_response.shape[0] not in (1, channels):
        raise ValueError(
            f"impulse response of shape {impulse_response.shape} does not fit audio with "
            f"{channels} channel(s): give a mono IR or one with {channels} channels"
        )
    n_full = length + impulse_response.shape[1] - 1
    n_fft = next_fast_len(n_full, real=True)
    wet = irfft(rfft(audio, n_fft, axis=1) * rfft(impulse_response, n_fft, axis=1), n_fft, axis=1)
    wet = wet[:, :n_full]  # (C, T+L-1)
    energy_in, energy_out = float(np.sum(audio**2)), float(np.sum(wet**2))
    if energy_in > 0.0 and energy_out > 0.0:
        wet = wet * math.sqrt(energy_in / energy_out)
    return wet[:, :length]


def flip_polarity(audio: np.ndarray) -> np.ndarray:
    """Polarity flip (a "random phase flip"): ``-audio``, a 180 degree phase shift of every partial."""
    return -audio


def shift_phase(audio: np.ndarray, angle: float) -> np.ndarray:
    """DAC's phase shift: rotate the phase of every frequency of ``audio`` (..., T) by ``angle``
    radians: (..., T) -> (..., T).

    Computed on the DFT of the whole excerpt: positive-frequency bins times ``exp(i angle)``,
    the real-valued DC and Nyquist bins times ``cos(angle)``; equals ``x cos(angle) - H(x)
    sin(angle)`` with H the (circular) Hilbert transform. The magnitude spectrum is unchanged
    (except at DC and Nyquist), the waveform and its peak are not; ``angle = pi`` is the polarity
    flip. DAC's ``ShiftPhase`` adds the same constant to the phase of every STFT bin (uniform in
    [-pi, pi]), which is this rotation up to STFT framing.
    """
    length = audio.shape[-1]
    spectrum = rfft(audio, axis=-1)
    rotation = np.full(spectrum.shape[-1], complex(math.cos(angle), math.sin(angle)))
    rotation[0] = math.cos(angle)
    if length % 2 == 0:
        rotation[-1] = math.cos(angle)
    return irfft(spectrum * rotation, length, axis=-1)


def _draw_strategy(probabilities: Sequence[float], rng: random.Random) -> str:
    u = rng.random() * sum(probabilities)
    for strategy, p in zip(STRATEGIES, probabilities):
        if u < p:
            return strategy
        u -= p
    return next(s for s, p in zip(reversed(STRATEGIES), reversed(probabilities)) if p > 0)


def choose_sources(
    domains: Sequence[str | None],
    slot: int,
    probabilities: Sequence[float],
    rng: random.Random,
) -> tuple[str, list[int]]:
    """Draw a mixing strategy for output ``slot`` of a batch and the batch items it mixes.

    Args:
        domains: domain of each item of the batch (``"music"`` or anything else), None for an
            item that could not be loaded (never chosen).
        slot: the output position; its own item is the first source whenever it qualifies.
        probabilities: weights of s1 (one music item), s2 (one non-music item), s3 (two items
            of any domain), s4 (three non-music items); need not sum to 1.
        rng: the caller's generator (one ``random()`` for the strategy, then the item draws).

    Returns:
        (strategy actually used, distinct item indices: 1, 2 or 3 of them).

    When the batch cannot supply the drawn strategy, it falls back deterministically:
    s4 with fewer than 3 non-music items -> s3; s3 with a single item -> a single source of
    the first source's domain (s1 if music, else s2); s1 without music -> s2; s2 with only
    music -> s1. The first source is ``slot`` if it qualifies, else a uniform draw among the
    items that do; the others are uniform draws without replacement among the rest.
    """
    available = [j for j, d in enumerate(domains) if d is not None]
    if not available:
        raise ValueError("choose_sources: no item of the batch is available")
    music = [j for j in available if domains[j] == MUSIC]
    other = [j for j in available if domains[j] != MUSIC]
    strategy = _draw_strategy(probabilities, rng)
    if strategy == "s4" and len(other) < 3:
        strategy = "s3"
    if strategy == "s3" and len(available) < 2:
        only = available[0]
        strategy = "s1" if domains[only] == MUSIC else "s2"
    if strategy == "s1" and not music:
        strategy = "s2"
    if strategy == "s2" and not other:
        strategy = "s1"
    candidates = {"s1": music, "s2": other, "s3": available, "s4": other}[strategy]
    count = {"s1": 1, "s2": 1, "s3": 2, "s4": 3}[strategy]
    first = slot if slot in candidates else rng.choice(candidates)
    rest = rng.sample([j for j in candidates if j != first], count - 1)
    return strategy, [first, *rest]


def find_audio_files(paths: Sequence[str]) -> list[Path]:
    """Audio files (wav, flac, ogg, mp3) named in ``paths``: files as given, folders searched
    recursively (sorted). A missing path or a folder without audio files is an error naming it."""
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"impulse_responses: folder {path} holds no {AUDIO_SUFFIXES} files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"impulse_responses: {path} does not exist")
    return files


def load_impulse_response(path: Path) -> tuple[np.ndarray, int]:
    """Read one impulse response: ((C_ir, L) float64 scaled to unit energy, sample rate).

    An unreadable, empty, non-finite or all-zero file is an error naming it.
    """
    try:
        data, sample_rate = sf.read(str(path), dtype="float64", always_2d=True)  # (L, C_ir)
    except Exception as err:
        raise ValueError(f"impulse_responses: cannot read {path} ({err})") from err
    ir = np.ascontiguousarray(data.T)  # (C_ir, L)
    if ir.shape[1] == 0:
        raise ValueError(f"impulse_responses: {path} is empty")
    if not np.isfinite(ir).all():
        raise ValueError(f"impulse_responses: {path} holds NaN/inf samples")
    energy = float(np.sum(ir**2))
    if energy == 0.0:
        raise ValueError(f"impulse_responses: {path} is all zeros")
    return ir / math.sqrt(energy), int(sample_rate)


# --------------------------------------------------------------------------- the transform
class Augmentation:
    """Augment a training batch: windows (C, T) of a sampler batch -> (B, C, T) float32.

    Per output slot, in this order (each random draw from the dataset's seeded generator):

    1. Sources: with ``mixing``, a strategy s1-s4 drawn with the four probabilities and its
       items from the batch (:func:`choose_sources`, incl. its fallbacks); without ``mixing``
       the slot's own window. A slot whose window failed to load or stayed clipped takes
       another window of the batch, so B stays the sampler's batch size while one loaded.
    2. Each source: loudness-normalized to ``target_lufs`` (BS.1770-4; skipped when None; a
       silent source is left as is), then a random gain uniform in
       [``min_gain_db``, ``max_gain_db``]; the sources are summed.
    3. Reverb with probability ``reverb_prob`` when ``impulse_responses`` are given: a uniformly
       drawn IR, resampled to the batch rate, convolved (:func:`convolve_reverb`); single-source
       music (s1) is kept dry unless ``reverb_single_music``.
    4. Phase: with probability ``phase_shift_prob`` DAC's uniform phase shift (angle uniform in
       [-pi, pi], :func:`shift_phase`); then with probability ``polarity_flip_prob`` a polarity
       flip (:func:`flip_polarity`).
    5. Peak: if ``max |x| > max_peak`` the slot is scaled down to ``max_peak`` (a gain, so the
       output never clips; such a slot ends below its drawn gain).

    Clip rejection happens when loading (see :meth:`is_clipped`): a window with
    ``clip_min_run`` consecutive samples at ``|x| >= clip_threshold`` is re-drawn at another
    random offset, at most ``clip_max_tries`` windows per cut; a cut whose windows are all
    clipped is dropped with a warning and its slot filled as in step 1.

    Args:
        mixing: combine windows with EnCodec's strategies (s1-s4); False: one source per slot.
        single_music_prob: weight of s1, one music window (EnCodec 0.32).
        single_other_prob: weight of s2, one non-music window (EnCodec 0.32).
        mix2_prob: weight of s3, two windows of any domain (EnCodec 0.24).
        mix3_prob: weight of s4, three non-music windows (EnCodec 0.12).
        target_lufs: loudness of every source before its gain, LUFS (DAC -24); None: no
            loudness normalization.
        min_gain_db: lower end of the random gain per source in dB (EnCodec -10).
        max_gain_db: upper end of the random gain per source in dB (EnCodec +6).
        max_peak: peak limit of the output (full scale 1.0); keep it below ``clip_threshold``.
        reject_clipped: re-draw clipped windows (step "clip rejection" above).
        clip_threshold: a sample counts as at full scale when ``|x| >= clip_threshold``.
        clip_min_run: consecutive full-scale samples that make a window clipped.
        clip_max_tries: windows tried per cut before it is dropped.
        impulse_responses: impulse-response audio files and/or folders (searched recursively
            for wav/flac/ogg/mp3); each is read here, so a bad file fails at construction.
        reverb_prob: probability of reverb per slot (EnCodec 0.2).
        reverb_single_music: also reverberate single-source music (EnCodec: no).
        polarity_flip_prob: probability of negating the output.
        phase_shift_prob: probability of DAC's uniform phase shift (DAC: 1.0).
    """

    def __init__(
        self,
        mixing: bool = True,
        single_music_prob: float = 0.32,
        single_other_prob: float = 0.32,
        mix2_prob: float = 0.24,
        mix3_prob: float = 0.12,
        target_lufs: float | None = -24.0,
        min_gain_db: float = -10.0,
        max_gain_db: float = 6.0,
        max_peak: float = 0.99,
        reject_clipped: bool = True,
        clip_threshold: float = 0.999,
        clip_min_run: int = 3,
        clip_max_tries: int = 5,
        impulse_responses: list[str] | None = None,
        reverb_prob: float = 0.2,
        reverb_single_music: bool = False,
        polarity_flip_prob: float = 0.5,
        phase_shift_prob: float = 0.0,
    ) -> None:
        self.probabilities = (single_music_prob, single_other_prob, mix2_prob, mix3_prob)
        names = ("single_music_prob", "single_other_prob", "mix2_prob", "mix3_prob")
        for name, p in zip(names, self.probabilities):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if mixing and sum(self.probabilities) <= 0.0:
            raise ValueError(f"with mixing, at least one of {', '.join(names)} must be > 0")
        for name, p in (
            ("reverb_prob", reverb_prob),
            ("polarity_flip_prob", polarity_flip_prob),
            ("phase_shift_prob", phase_shift_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if min_gain_db > max_gain_db:
            raise ValueError(f"min_gain_db ({min_gain_db}) must be <= max_gain_db ({max_gain_db})")
        if max_peak <= 0.0:
            raise ValueError(f"max_peak must be > 0, got {max_peak}")
        if not 0.0 < clip_threshold:
            raise ValueError(f"clip_threshold must be > 0, got {clip_threshold}")
        if clip_min_run < 1:
            raise ValueError(f"clip_min_run must be >= 1, got {clip_min_run}")
        if clip_max_tries < 1:
            raise ValueError(f"clip_max_tries must be >= 1, got {clip_max_tries}")
        self.mixing = mixing
        self.target_lufs = target_lufs
        self.min_gain_db = min_gain_db
        self.max_gain_db = max_gain_db
        self.max_peak = max_peak
        self.reject_clipped = reject_clipped
        self.clip_threshold = clip_threshold
        self.clip_min_run = clip_min_run
        self.clip_max_tries = clip_max_tries
        self.reverb_prob = reverb_prob
        self.reverb_single_music = reverb_single_music
        self.polarity_flip_prob = polarity_flip_prob
        self.phase_shift_prob = phase_shift_prob
        files = find_audio_files(impulse_responses or [])
        self.impulse_response_files = [str(f) for f in files]
        self._impulse_responses = [load_impulse_response(f) for f in files]  # [((C_ir, L), sr)]
        self._resampled: dict[int, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ loading side
    @property
    def tries_per_cut(self) -> int:
        """Windows the dataset may draw per cut: ``clip_max_tries`` with clip rejection, else 1."""
        return self.clip_max_tries if self.reject_clipped else 1

    def is_clipped(self, audio: np.ndarray) -> bool:
        """Whether a loaded window (C, T) counts as clipped (always False without rejection)."""
        return self.reject_clipped and is_clipped(audio, self.clip_threshold, self.clip_min_run)

    # ------------------------------------------------------------------ impulse responses
    def impulse_responses_at(self, sample_rate: int) -> list[np.ndarray]:
        """The impulse responses (C_ir, L) at ``sample_rate``, unit energy (resampled once)."""
        if sample_rate not in self._resampled:
            irs = []
            for ir, ir_rate in self._impulse_responses:
                if ir_rate != sample_rate:
                    ir = resample(torch.from_numpy(ir), ir_rate, sample_rate).numpy()
                    ir = ir / math.sqrt(float(np.sum(ir**2)))
                irs.append(ir)
            self._resampled[sample_rate] = irs
        return self._resampled[sample_rate]

    # ------------------------------------------------------------------ the batch
    def __call__(
        self,
        windows: Sequence[np.ndarray | None],
        domains: Sequence[str],
        sample_rate: int,
        rng: random.Random,
    ) -> np.ndarray:
        """Augment one batch.

        Args:
            windows: the batch's windows, each (C, T) (same C and T), None where loading
                failed or every try was clipped.
            domains: ``cut.custom["domain"]`` of each item (``"general"`` when absent).
            sample_rate: of the windows, in Hz.
            rng: the dataset's seeded per-rank/per-worker generator.

        Returns:
            (B, C, T) float32 with B = ``len(windows)``, or (0, C, T) when every window is None
            (then C and T are unknown here: shape (0, 0, 0)).
        """
        if len(windows) != len(domains):
            raise ValueError(f"{len(windows)} windows but {len(domains)} domains")
        pool_domains = [d if w is not None else None for w, d in zip(windows, domains)]
        available = [j for j, d in enumerate(pool_domains) if d is not None]
        if not available:
            return np.zeros((0, 0, 0), dtype=np.float32)
        out = [self._slot(windows, pool_domains, available, slot, sample_rate, rng) for slot in range(len(windows))]
        return np.stack(out).astype(np.float32)  # (B, C, T)

    def _slot(
        self,
        windows: Sequence[np.ndarray | None],
        domains: Sequence[str | None],
        available: list[int],
        slot: int,
        sample_rate: int,
        rng: random.Random,
    ) -> np.ndarray:
        if self.mixing:
            strategy, items = choose_sources(domains, slot, self.probabilities, rng)
        else:
            item = slot if domains[slot] is not None else rng.choice(available)
            strategy, items = ("s1" if domains[item] == MUSIC else "s2"), [item]
        mix = None
        for j in items:
            source = np.asarray(windows[j], dtype=np.float64)  # (C, T)
            if self.target_lufs is not None:
                source = normalize_loudness(source, sample_rate, self.target_lufs)
            source = source * db_to_amplitude(rng.uniform(self.min_gain_db, self.max_gain_db))
            mix = source if mix is None else mix + source
        assert mix is not None
        irs = self.impulse_responses_at(sample_rate) if self._impulse_responses else []
        if irs and rng.random() < self.reverb_prob and (strategy != "s1" or self.reverb_single_music):
            k = rng.randrange(len(irs))
            if irs[k].shape[0] not in (1, mix.shape[0]):
                raise ValueError(
                    f"impulse response {self.impulse_response_files[k]} has {irs[k].shape[0]} channels; "
                    f"the audio has {mix.shape[0]}: use mono IRs or IRs with {mix.shape[0]} channels"
                )
            mix = convolve_reverb(mix, irs[k])
        if rng.random() < self.phase_shift_prob:
            mix = shift_phase(mix, rng.uniform(-math.pi, math.pi))
        if rng.random() < self.polarity_flip_prob:
            mix = flip_polarity(mix)
        return limit_peak(mix, self.max_peak)


__all__ = [
    "MUSIC",
    "STRATEGIES",
    "Augmentation",
    "choose_sources",
    "convolve_reverb",
    "db_to_amplitude",
    "find_audio_files",
    "flip_polarity",
    "is_clipped",
    "limit_peak",
    "load_impulse_response",
    "longest_clipped_run",
    "shift_phase",
]
