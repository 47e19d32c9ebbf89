"""Pure DSP functions (no parameters, no state)."""

from codecplatform.dsp.loudness import integrated_loudness, normalize_loudness
from codecplatform.dsp.spectral import mel_filterbank, resample, safe_log, stft

__all__ = ["integrated_loudness", "mel_filterbank", "normalize_loudness", "resample", "safe_log", "stft"]
