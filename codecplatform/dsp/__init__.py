"""Pure DSP functions (no parameters, no state)."""

from codecplatform.dsp.loudness import integrated_loudness, normalize_loudness
from codecplatform.dsp.spectral import log_mel_spectrogram, mel_filterbank, resample, safe_log, stft
from codecplatform.dsp.stft2d import istft_2d, stft_2d

__all__ = [
    "integrated_loudness",
    "istft_2d",
    "log_mel_spectrogram",
    "mel_filterbank",
    "normalize_loudness",
    "resample",
    "safe_log",
    "stft",
    "stft_2d",
]
