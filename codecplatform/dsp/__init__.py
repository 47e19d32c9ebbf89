"""Pure DSP functions (no parameters, no state)."""

from codecplatform.dsp.spectral import mel_filterbank, resample, safe_log, stft

__all__ = ["mel_filterbank", "resample", "safe_log", "stft"]
