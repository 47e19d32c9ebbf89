"""DNSMOS (non-intrusive speech quality, 1-5, higher is better) through ``speechmos``, which ships
Microsoft's ONNX models and runs them on onnxruntime: nothing is downloaded at run time.

:class:`DNSMOS` is a torchmetrics ``Metric`` with ``update(x_hat, x)`` on (B, C, T) audio at
``sample_rate``, like the other ``test_metrics``; only ``x_hat`` is scored (the reference is not
used). ``score`` picks one output: ``sig``, ``bak``, ``ovrl`` (ITU-T P.835 signal, background,
overall; Reddy et al. 2022, "DNSMOS P.835") or ``p808`` (the P.808 overall-quality model). Each
example is mixed to mono, resampled to 16 kHz, clipped to [-1, 1] and scored as speechmos does:
9.01 s windows at a 1 s hop (shorter audio is repeated to 9.01 s), the mean over windows. Why: the
speech rows of the leaderboard are scored as speech codec papers score them.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from codecplatform.dsp.spectral import resample
from codecplatform.metrics.reconstruction import MeanOverExamples

MODEL_RATE = 16000
SCORES = {"sig": "sig_mos", "bak": "bak_mos", "ovrl": "ovrl_mos", "p808": "p808_mos"}
_MODELS: dict[bool, object] = {}  # personalized -> speechmos.dnsmos.DNSMOS (ONNX sessions are not copied)
_RESULTS: OrderedDict[tuple, dict] = OrderedDict()  # the four outputs of recent clips, shared by the four metrics


def _model(personalized: bool):
    if personalized not in _MODELS:
        from speechmos import dnsmos

        folder = Path(dnsmos.__file__).parent
        primary = folder / ("pdnsmos_models" if personalized else "dnsmos_models") / "sig_bak_ovr.onnx"
        _MODELS[personalized] = dnsmos.DNSMOS(str(primary), str(folder / "dnsmos_models" / "model_v8.onnx"))
    return _MODELS[personalized]


def dnsmos_scores(audio: np.ndarray, personalized: bool = False) -> dict[str, float]:
    """(T,) mono speech at 16 kHz in [-1, 1] -> ``{"sig", "bak", "ovrl", "p808"}`` MOS (1-5)."""
    key = (hash(audio.tobytes()), audio.size, personalized)
    if key not in _RESULTS:
        raw = _model(personalized)(audio.astype(np.float32), MODEL_RATE, personalized)
        _RESULTS[key] = {name: float(raw[column]) for name, column in SCORES.items()}
        while len(_RESULTS) > 64:
            _RESULTS.popitem(last=False)
    return _RESULTS[key]


class DNSMOS(MeanOverExamples):
    """One DNSMOS output (``score``: ``sig``, ``bak``, ``ovrl`` or ``p808``) of ``x_hat``, averaged over
    examples; ``personalized=True`` uses the personalized P.835 model. ``update(x_hat, x)`` with
    (B, C, T) audio at ``sample_rate``; ``x`` is not used."""

    higher_is_better = True

    def __init__(
        self,
        sample_rate: int,
        score: Literal["sig", "bak", "ovrl", "p808"] = "ovrl",
        personalized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if score not in SCORES:
            raise ValueError(f"DNSMOS score must be one of {sorted(SCORES)}, got {score!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.sample_rate, self.score, self.personalized = sample_rate, score, personalized

    def _values(self, x_hat: Tensor, x: Tensor) -> Tensor:
        if x_hat.dim() != 3:
            raise ValueError(f"x_hat must be (B, C, T), got {tuple(x_hat.shape)}")
        mono = resample(x_hat.detach().float().mean(dim=1).cpu(), self.sample_rate, MODEL_RATE)  # (B, T')
        clips = mono.clamp(-1.0, 1.0).numpy()
        return torch.tensor([dnsmos_scores(clip, self.personalized)[self.score] for clip in clips], dtype=torch.float64)
