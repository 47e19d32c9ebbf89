"""The quickstart's small dataset: music-like and speech-like audio, synthesized (no downloads).

    python -m datamodules.demo --out_dir data/demo

writes ``data/demo/audio/*.wav|flac`` and the lhotse manifests in ``data/demo/manifests/``.
Mixed formats on purpose, like a real corpus: music at 24 kHz mono (WAV) and 44.1 kHz stereo
(FLAC, slightly different left and right), speech at 16 kHz and 24 kHz mono (WAV). Every file
is a pure function of (seed, kind, index), so adding files leaves the existing ones unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from datamodules.manifests import prepare_manifests

_PEAK = 0.5  # every file is peak-normalized to this level
_PENTATONIC = np.array([0, 2, 4, 7, 9])  # major pentatonic scale, semitones above the root
# (F1, F2, F3) in Hz of the vowels a, e, i, o, u
_VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]],
    dtype=np.float64,
)
_FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0])  # Hz


# ------------------------------------------------------------------------------------- helpers
def _band_noise(n: int, sr: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """White noise (n,) shaped in the frequency domain by a smooth band-pass, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / sr) + 1e-3
    gain = 1.0 / np.sqrt(1.0 + (f / high_hz) ** 8) / np.sqrt(1.0 + (low_hz / f) ** 8)
    noise = np.fft.irfft(spectrum * gain, n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Envelope (n,): linear attack, exponential decay to ``sustain``, linear release at the end."""
    t = np.arange(n) / sr
    decayed = sustain + (1.0 - sustain) * np.exp(-(t - attack) / decay)
    env = np.where(t < attack, t / attack, decayed)
    return env * np.clip((n / sr - t) / release, 0.0, 1.0)


def _hann_bump(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n)


def _peak_normalize(x: np.ndarray) -> np.ndarray:
    return (x * (_PEAK / (np.max(np.abs(x)) + 1e-12))).astype(np.float32)


# --------------------------------------------------------------------------------------- music
def _tone(f0: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone (n,): decaying partials, ADSR envelope and a delayed vibrato."""
    t = np.arange(n) / sr
    depth = 0.004 * np.clip(t / 0.3, 0.0, 1.0)  # the vibrato sets in over 0.3 s
    vibrato = 1.0 + depth * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / sr  # (n,)
    k = np.arange(1, 9)[:, None]  # (K, 1) partial numbers
    k = k[k[:, 0] * f0 < 0.45 * sr]  # stay below Nyquist
    amps = k ** -rng.uniform(1.0, 2.0) * np.exp(-t[None] * rng.uniform(0.5, 3.0) * k)  # (K, n)
    partials = amps * np.sin(k * phase[None] + rng.uniform(0, 2 * np.pi, size=(len(k), 1)))
    attack, sustain = rng.uniform(0.005, 0.03), rng.uniform(0.4, 0.8)
    env = _adsr(n, sr, attack=attack, decay=0.15, sustain=sustain, release=0.12)
    return partials.sum(axis=0) * env


def synth_music(seconds: float, sr: int, stereo: bool, rng: np.random.Generator) -> np.ndarray:
    """Music-like audio (C, N), C = 2 if ``stereo`` else 1: notes and chords from a pentatonic
    scale over a beat grid, panned (stereo: plus a small right-channel delay), with occasional
    noise-burst percussion."""
    n = round(seconds * sr)
    beat = 60.0 / rng.uniform(80, 140)
    root = int(rng.integers(45, 58))  # MIDI note
    pitches = root + (_PENTATONIC[None] + 12 * np.arange(3)[:, None]).ravel()
    out = np.zeros((2, n))
    start = 0.0
    while start < seconds:
        length = beat * float(rng.choice([0.5, 1.0, 1.0, 2.0]))
        n_notes = 1 if rng.random() < 0.65 else int(rng.integers(2, 4))
        i0 = round(start * sr)
        m = min(round((length + 0.15) * sr), n - i0)
        for midi in rng.choice(pitches, size=n_notes, replace=False):
            note = _tone(440.0 * 2 ** ((midi - 69) / 12), m, sr, rng) / n_notes
            pan = rng.uniform(0.2, 0.8)
            out[0, i0 : i0 + m] += np.sqrt(1 - pan) * note
            out[1, i0 : i0 + m] += np.sqrt(pan) * note
        start += length
    if stereo:  # the right channel lags by a fraction of a millisecond
        lag = int(rng.integers(5, 27))
        out[1] = np.concatenate([np.zeros(lag), out[1, :-lag]])
    hits = np.arange(0.0, seconds, beat / 2)
    hits = hits[rng.random(len(hits)) < 0.35]
    if len(hits):
        low = _band_noise(n, sr, 40.0, 300.0, rng)
        high = _band_noise(n, sr, 5000.0, 0.45 * sr, rng)
        env_low, env_high = np.zeros(n), np.zeros(n)
        for hit in hits:
            i0 = round(hit * sr)
            t = np.arange(n - i0) / sr
            env_low[i0:] += np.exp(-t / 0.06)
            env_high[i0:] += 0.5 * np.exp(-t / 0.02)
        out += 0.15 * (low * env_low + high * env_high)[None]
    return _peak_normalize(out if stereo else out.mean(axis=0, keepdims=True))


# -------------------------------------------------------------------------------------- speech
def _formant_filter(x: np.ndarray, sr: int, formants: np.ndarray, hop: int) -> np.ndarray:
    """Pass ``x`` (n,) through three 2nd-order IIR resonators whose frequencies move per frame.

    ``formants`` (F, 3) holds the resonance frequencies of frame i = samples [i*hop, (i+2)*hop).
    Each Hann-windowed frame (50 % overlap, the windows sum to 1) is filtered in the frequency
    domain with the exact response of the cascade, over an FFT long enough for the resonances
    to ring out; the filtered frames are overlap-added.
    """
    n_frames, length = formants.shape[0], 2 * hop
    n_fft = hop * int(np.ceil((length + 0.03 * sr) / hop))  # frame + 30 ms of ringing
    padded = np.concatenate([np.zeros(hop), x, np.zeros(n_frames * hop + length)])
    idx = np.arange(n_frames)[:, None] * hop + np.arange(length)[None]  # (F, L)
    frames = padded[idx] * _hann_bump(length)[None]  # (F, L)
    z1 = np.exp(-2j * np.pi * np.fft.rfftfreq(n_fft))[None, None]  # (1, 1, K): z^-1, |z| = 1
    r = np.exp(-np.pi * _FORMANT_BANDWIDTHS / sr)[None, :, None]  # (1, 3, 1)
    cos_theta = np.cos(2 * np.pi * formants / sr)[:, :, None]  # (F, 3, 1)
    # H(z) = (1 - 2 r cos(theta) + r^2) / (1 - 2 r cos(theta) z^-1 + r^2 z^-2): unity gain at DC
    response = (1 - 2 * r * cos_theta + r**2) / (1 - 2 * r * cos_theta * z1 + r**2 * z1**2)
    filtered = np.fft.irfft(np.fft.rfft(frames, n_fft) * response.prod(axis=1), n_fft)  # (F, n_fft)
    blocks = filtered.reshape(n_frames, n_fft // hop, hop)  # (F, M, hop)
    out = np.zeros((n_frames + blocks.shape[1], hop))
    for j in range(blocks.shape[1]):
        out[j : j + n_frames] += blocks[:, j]
    return out.ravel()[hop : hop + len(x)]


def synth_speech(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like audio (1, N): a glottal pulse train (f0 slowly varying in 100-220 Hz) through
    three formant resonators moving between vowel targets, 4-5 syllables per second with noise
    fricatives, and pauses between phrases."""
    n = round(seconds * sr)
    t = np.arange(n) / sr
    voiced_env, fricative_env = np.zeros(n), np.zeros(n)
    centers, targets = [0.0], [_VOWELS[0]]
    syllable = 1.0 / rng.uniform(4.0, 5.0)
    time = rng.uniform(0.05, 0.2)
    while time < seconds:
        for _ in range(int(rng.integers(3, 9))):  # one phrase
            duration = syllable * rng.uniform(0.8, 1.2)
            i0, m = round(time * sr), round(duration * sr)
            if rng.random() < 0.35:  # fricative onset, then the vowel
                k = round(rng.uniform(0.05, 0.09) * sr)
                fricative_env[i0 : i0 + k] += _hann_bump(k)[: max(0, n - i0)]
                i0, m = i0 + k // 2, m - k // 2
            voiced_env[i0 : i0 + m] += (_hann_bump(m) ** 0.7)[: max(0, n - i0)]
            centers.append(time + duration / 2)
            targets.append(_VOWELS[rng.integers(len(_VOWELS))] * rng.uniform(0.92, 1.08))
            time += duration
        time += rng.uniform(0.15, 0.5)  # pause
    centers.append(max(time, seconds))
    targets.append(targets[-1])

    base = rng.uniform(110.0, 200.0)
    contour = 0.08 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 2 * np.pi))
    contour += 0.04 * np.sin(2 * np.pi * rng.uniform(0.9, 1.6) * t + rng.uniform(0, 2 * np.pi))
    f0 = np.clip(base * (1.0 + contour), 100.0, 220.0)  # (n,)
    frac = np.cumsum(f0 / sr) % 1.0
    open_quotient = 0.6
    flow = np.where(frac < open_quotient, np.sin(np.pi * frac / open_quotient) ** 2, 0.0)
    breath = 0.02 * rng.standard_normal(n)
    excitation = np.diff(flow, prepend=0.0) + breath  # glottal flow derivative

    hop = sr // 100  # 10 ms frames
    frame_times = (np.arange(n // hop + 1) + 0.5) * hop / sr
    tracks = np.array(targets)  # (S, 3)
    formants = np.stack([np.interp(frame_times, centers, tracks[:, i]) for i in range(3)], axis=1)
    formants = np.minimum(formants, 0.45 * sr)
    voiced = _formant_filter(excitation * voiced_env, sr, formants, hop)
    voiced /= np.max(np.abs(voiced)) + 1e-12
    fricative = _band_noise(n, sr, 2500.0, 0.45 * sr, rng) * fricative_env
    floor = 3e-4 * rng.standard_normal(n)  # room noise, so that pauses are not digital silence
    return _peak_normalize((voiced + 0.12 * fricative + floor)[None])


# ------------------------------------------------------------------------------------- dataset
def make_demo_dataset(
    out_dir: str | Path, n_music: int = 24, n_speech: int = 24, seconds: float = 4.0, seed: int = 0
) -> dict[str, Path]:
    """Synthesize the demo corpus into ``out_dir/audio``, its manifests into ``out_dir/manifests``.

    Files: ``music_XXX`` (every third one 44.1 kHz stereo FLAC, the others 24 kHz mono WAV) and
    ``speech_XXX`` (16 kHz and 24 kHz mono WAV, alternating), each ``seconds`` long, peak 0.5.

    Args:
        out_dir: output folder.
        n_music: number of music-like files.
        n_speech: number of speech-like files.
        seconds: length of each file.
        seed: seed of the synthesis and of the train/val/test split.

    Returns:
        Paths of the cut manifests keyed by split (see ``prepare_manifests``).
    """
    if n_music < 0 or n_speech < 0 or n_music + n_speech < 3:
        raise ValueError(
            f"n_music and n_speech must be >= 0 with at least 3 files in all (for train/val/test), "
            f"got n_music={n_music}, n_speech={n_speech}"
        )
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    audio_dir = Path(out_dir) / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_music):
        rng = np.random.default_rng([seed, 0, i])
        if i % 3 == 2:
            audio = synth_music(seconds, 44100, stereo=True, rng=rng)
            sf.write(audio_dir / f"music_{i:03d}.flac", audio.T, 44100)
        else:
            audio = synth_music(seconds, 24000, stereo=False, rng=rng)
            sf.write(audio_dir / f"music_{i:03d}.wav", audio.T, 24000)
    for i in range(n_speech):
        sr = 16000 if i % 2 == 0 else 24000
        audio = synth_speech(seconds, sr, np.random.default_rng([seed, 1, i]))
        sf.write(audio_dir / f"speech_{i:03d}.wav", audio.T, sr)
    return prepare_manifests(audio_dir, Path(out_dir) / "manifests", val_fraction=0.1, test_fraction=0.1, seed=seed)


def main(argv: list[str] | None = None) -> int:
    """``python -m datamodules.demo --out_dir data/demo``: synthesize the demo dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.demo", description="Synthesize the quickstart's demo dataset."
    )
    parser.add_argument("--out_dir", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument("--n_music", type=int, default=24, help="music-like files")
    parser.add_argument("--n_speech", type=int, default=24, help="speech-like files")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each file")
    parser.add_argument("--seed", type=int, default=0, help="synthesis and split seed")
    args = parser.parse_args(argv)
    paths = make_demo_dataset(args.out_dir, args.n_music, args.n_speech, args.seconds, args.seed)
    print(f"demo audio in {args.out_dir / 'audio'}; cut manifests:")
    for name, path in paths.items():
        print(f"{name:>5}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
