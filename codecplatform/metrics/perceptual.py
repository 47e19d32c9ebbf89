"""Perceptual quality metrics computed on the CPU by reference implementations: ViSQOL v3 (``visqol-python``),
wide-band PESQ and STOI (torchmetrics' ``perceptual_evaluation_speech_quality`` and
``short_time_objective_intelligibility`` functionals, which call ``pesq`` and ``pystoi``; each example is
given to them as a 1-D signal so that an example they cannot score raises here and is counted).

All three are torchmetrics ``Metric``s with ``update(x_hat, x)`` on (B, C, T) audio at the metric's
``sample_rate``. Each example is scored on its own and the scores are averaged over examples, so batching
does not change the result; the states (``total``, ``count``, ``skipped``) are sums, so DDP adds the ranks'
states before ``compute``.

Channels: the C channels are averaged to mono before scoring (what ViSQOL itself does with a multi-channel
file; PESQ and STOI are defined on one channel).

Resampling (band-limited sinc, ``codecplatform.dsp.spectral.resample``): ViSQOL audio mode scores at 48 kHz
(its SVR model was fitted there), speech mode at 16 kHz; PESQ wide-band needs 16 kHz. STOI is given the
native rate: ``pystoi`` resamples to its 10 kHz itself (its MATLAB-matching resampler).

Failures: an example without a defined score is skipped and counted in the ``skipped`` state (a sum, so
the count is global under DDP): a silent reference (peak ``<= silence_threshold``), audio too short for the
scorer (PESQ: 0.25 s; ViSQOL audio mode: 0.96 s, 45 frames of its 1024-sample hop at 48 kHz; ViSQOL speech
mode: about 0.8 s of which enough must be voiced), nothing to score (PESQ: no utterance detected; ViSQOL
speech: no voiced patch) or a non-finite score. ``compute`` warns with the count and the reasons seen, and
is NaN if every example was skipped. Skipping rather than raising keeps a long test run alive when a few
windows (the last, shorter window of a file; silence) cannot be scored; the count says how many.

ViSQOL audio takes about 0.5 s per second of audio on one CPU thread (PESQ 0.03, STOI 0.01): use these
in ``test_metrics`` (test stage), not in validation.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from codecplatform.dsp.spectral import resample
from codecplatform.metrics.reconstruction import MeanOverExamples
from codecplatform.types import check_audio


class _SkippedExample(Exception):
    """Raised by a scorer for an example without a defined score (counted, not fatal); the message is
    the reason."""


class PerExampleAudioScore(MeanOverExamples):
    """Base class: mono, resampled, per-example scores averaged over examples (see the module docstring).

    Subclasses set ``name`` and ``score_rate`` (Hz the scorer gets; None: the input rate) and implement
    ``_score(reference, degraded) -> float`` on 1-D float64 numpy arrays at ``score_rate``.
    """

    higher_is_better = True
    full_state_update = False
    name: str = "score"
    score_rate: int | None = None

    def __init__(self, sample_rate: int, silence_threshold: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.sample_rate = sample_rate
        self.silence_threshold = silence_threshold
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._skip_reasons: set[str] = set()  # for the warning only (this rank's, not synchronized)

    def _score(self, reference: np.ndarray, degraded: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError

    def _values(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """x_hat, x: (B, C, T) reconstruction and reference at ``sample_rate`` -> the scores of the
        examples that have one (the others are counted in ``skipped``)."""
        check_audio(x, name="x")
        check_audio(x_hat, x.shape[1], name="x_hat")
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")
        rate = self.score_rate or self.sample_rate
        mono = torch.stack([x.float().mean(dim=1), x_hat.float().mean(dim=1)])  # (2, B, T)
        mono = resample(mono.cpu(), self.sample_rate, rate).double().numpy()  # (2, B, T')
        values = []
        for reference, degraded in zip(mono[0], mono[1]):
            try:
                if np.abs(reference).max() <= self.silence_threshold:
                    raise _SkippedExample(f"silent reference (peak <= {self.silence_threshold:g})")
                value = self._score(reference, degraded)
                if not math.isfinite(value):
                    raise _SkippedExample(f"non-finite score {value}")
            except _SkippedExample as reason:
                self.skipped += 1
                self._skip_reasons.add(str(reason))
                continue
            values.append(value)
        return torch.tensor(values, dtype=torch.float64)

    def reset(self) -> None:
        super().reset()
        self._skip_reasons = set()

    def compute(self) -> Tensor:
        if int(self.skipped) > 0:
            rank_zero_warn(
                f"{self.name}: skipped {int(self.skipped)} of {int(self.skipped) + int(self.count)} examples "
                f"without a defined score ({'; '.join(sorted(self._skip_reasons)) or 'on another rank'})"
            )
        if int(self.count) == 0:
            return torch.tensor(float("nan"))
        return super().compute()


class ViSQOL(PerExampleAudioScore):
    """ViSQOL v3 MOS-LQO (1-5, higher is better) through ``visqol-python``.

    ``mode="audio"``: music/general audio, scored at 48 kHz with the bundled SVR model (the mode DAC
    and MuCodec report). ``mode="speech"``: scored at 16 kHz with voice-activity patch selection and the
    deep-lattice mapper (``visqol-python[lattice]``, the C++ default; refused if that runtime is missing,
    rather than silently falling back to the polynomial mapper whose scores differ).
    """

    def __init__(
        self,
        sample_rate: int,
        mode: Literal["audio", "speech"] = "audio",
        silence_threshold: float = 1e-4,
        **kwargs,
    ):
        super().__init__(sample_rate, silence_threshold, **kwargs)
        if mode not in ("audio", "speech"):
            raise ValueError(f"ViSQOL mode must be 'audio' or 'speech', got {mode!r}")
        from visqol import VisqolApi

        self.mode = mode
        self.name = f"ViSQOL ({mode} mode)"
        self.score_rate = 48000 if mode == "audio" else 16000
        self._api = VisqolApi()
        try:
            self._api.create(mode=mode, use_lattice_model=True if mode == "speech" else None)
        except ImportError as error:
            raise ImportError(
                "ViSQOL speech mode needs the lattice mapper: pip install 'visqol-python[lattice]'"
            ) from error

    def _score(self, reference: np.ndarray, degraded: np.ndarray) -> float:
        try:
            result = self._api.measure_from_arrays(reference, degraded, self.score_rate)
        except ValueError as error:  # "Too few samples ..." / "... smaller than minimum patch size ..."
            if "Too few samples" in str(error) or "minimum patch size" in str(error):
                raise _SkippedExample(f"too short: {error}") from error
            raise
        except IndexError as error:  # speech mode: the voice-activity patch search found no patch
            if self.mode != "speech":
                raise
            raise _SkippedExample(f"no voiced patch found ({error})") from error
        return float(result.moslqo)

    def __getstate__(self) -> dict:  # the visqol API object is rebuilt, not pickled (deepcopy, spawn)
        state = super().__getstate__()
        state.pop("_api", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        from visqol import VisqolApi

        self._api = VisqolApi()
        self._api.create(mode=self.mode, use_lattice_model=True if self.mode == "speech" else None)


class PESQ(PerExampleAudioScore):
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, about 1.04-4.64, higher is better; scored at 16 kHz
    (torchmetrics' PESQ functional, mode ``"wb"``).

    An example shorter than 0.25 s, in which PESQ detects no utterance, or whose score is not finite
    (a silent reconstruction makes pesq fail) is skipped and counted.
    """

    name = "PESQ"
    score_rate = 16000

    def _score(self, reference: np.ndarray, degraded: np.ndarray) -> float:
        import pesq
        from torchmetrics.functional.audio import perceptual_evaluation_speech_quality

        if reference.size < self.score_rate // 4:
            raise _SkippedExample(f"too short: PESQ needs 0.25 s, got {reference.size / self.score_rate:.3f} s")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # pesq's own division warnings on silence
                score = perceptual_evaluation_speech_quality(
                    torch.from_numpy(degraded), torch.from_numpy(reference), self.score_rate, "wb"
                )
                return float(score)
        except pesq.NoUtterancesError as error:
            raise _SkippedExample(str(error)) from error
        except ValueError as error:  # NaN inside pesq (silent degraded signal)
            raise _SkippedExample(str(error)) from error


class STOI(PerExampleAudioScore):
    """Short-time objective intelligibility (0-1, higher is better): torchmetrics' STOI functional
    (``pystoi``); ``extended=True`` gives ESTOI. The native rate is passed to pystoi, which resamples to
    its 10 kHz itself.
    """

    name = "STOI"

    def __init__(self, sample_rate: int, extended: bool = False, silence_threshold: float = 1e-4, **kwargs):
        super().__init__(sample_rate, silence_threshold, **kwargs)
        self.extended = extended
        if extended:
            self.name = "ESTOI"

    def _score(self, reference: np.ndarray, degraded: np.ndarray) -> float:
        from torchmetrics.functional.audio import short_time_objective_intelligibility

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            score = short_time_objective_intelligibility(
                torch.from_numpy(degraded), torch.from_numpy(reference), self.sample_rate, extended=self.extended
            )
            value = float(score)
        if any("Not enough STFT frames" in str(w.message) for w in caught):
            raise _SkippedExample("not enough non-silent frames")
        return value
