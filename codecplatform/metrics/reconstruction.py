"""Reconstruction metrics as torchmetrics ``Metric``s (summed states, so DDP reduces them)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

from codecplatform.losses.reconstruction import MultiScaleMelLoss, MultiScaleSTFTLoss


class MeanOverExamples(Metric):
    """Base class: a value per example (and channel), summed with its count; ``compute`` is the mean.
    Summed states make DDP reduction exact, and the mean does not depend on batching. Subclasses
    implement ``_values(x_hat, x) -> (N,)`` for (B, C, T) audio."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _values(self, x_hat: Tensor, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        values = self._values(x_hat, x)
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class _ExampleDistance(MeanOverExamples):
    """A distance module (``loss(x, x_hat)``) applied to each example on its own."""

    higher_is_better = False
    distance: torch.nn.Module

    def _values(self, x_hat: Tensor, x: Tensor) -> Tensor:
        return torch.stack([self.distance(x[i : i + 1], x_hat[i : i + 1]) for i in range(x.shape[0])])


class MelDistance(_ExampleDistance):
    """DAC's mel distance (``dac.nn.loss.MelSpectrogramLoss`` with DAC's settings, ``conf/base.yml``:
    windows 32..2048 with 5..320 slaney mels, hop = window / 4, ``mag_weight=0``, ``log_weight=1``,
    ``pow=1``, ``clamp_eps=1e-5``): per scale mean|log10(max(mel(x), 1e-5)) - log10(max(mel(x_hat), 1e-5))|,
    *summed* over the 7 scales as DAC does; averaged over examples. ``update(x_hat, x)`` with (B, C, T)
    audio; lower is better.
    """

    def __init__(self, sample_rate: int, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate  # checked against the codec's by GANCodecModule
        self.distance = MultiScaleMelLoss(
            sample_rate,
            window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
            n_mels=[5, 10, 20, 40, 80, 160, 320],
            l1_weight=1.0,
            l2_weight=0.0,
            log=True,
            log_base=10.0,
            clamp_eps=1e-5,
            power=1.0,
            scale_reduction="sum",
        )


class STFTDistance(_ExampleDistance):
    """DAC's STFT distance (``dac.nn.loss.MultiScaleSTFTLoss`` with its defaults, as DAC's
    ``scripts/evaluate.py`` uses it): per window length in ``[2048, 512]`` (hop = window / 4, Hann,
    centred), ``mean|log10(max(|X|, 1e-5)^2) - log10(max(|X_hat|, 1e-5)^2)| + mean| |X| - |X_hat| |``,
    summed over the two scales; averaged over examples. ``update(x_hat, x)`` with (B, C, T) audio of at
    least 1025 samples; lower is better.
    """

    def __init__(self, window_lengths: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.distance = MultiScaleSTFTLoss(
            window_lengths=window_lengths or [2048, 512],
            hop_divisor=4,
            log_weight=1.0,
            mag_weight=1.0,
            clamp_eps=1e-5,
            log_base=10.0,
            power=2.0,
            scale_reduction="sum",
            center=True,
        )


class SISDR(MeanOverExamples):
    """Scale-invariant signal-to-distortion ratio in dB (torchmetrics'
    ``scale_invariant_signal_distortion_ratio``, in float64), per channel, averaged over examples and
    channels. ``update(x_hat, x)`` with (B, C, T) audio; higher is better.

    ``zero_mean=True`` (default) removes each signal's mean first, as DAC's evaluation
    (audiotools ``SISDRLoss``) and the SI-SDR definition of Le Roux et al. (2019) do; torchmetrics'
    own default is ``False``.
    """

    higher_is_better = True

    def __init__(self, zero_mean: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.zero_mean = zero_mean

    def _values(self, x_hat: Tensor, x: Tensor) -> Tensor:
        return scale_invariant_signal_distortion_ratio(x_hat.double(), x.double(), zero_mean=self.zero_mean)  # (B, C)


class Resampled(Metric):
    """``metric`` scored on ``x_hat`` and ``x`` resampled from ``sample_rate`` to ``score_rate`` with
    ``julius.resample_frac`` (its defaults), as audiotools' ``AudioSignal.resample``. Why: DAC's ``scripts/evaluate.py``
    resamples both signals to 44.1 kHz (and 22.05 kHz) before its mel and STFT distances, so its numbers
    (the DAC paper's tables) compare only with distances taken at that rate, e.g.
    ``Resampled(MelDistance(44100), sample_rate=24000)``. ``update(x_hat, x)`` with (B, C, T) audio;
    ``compute`` is the wrapped metric's."""

    full_state_update = False

    def __init__(self, metric: Metric, sample_rate: int, score_rate: int = 44100, **kwargs):
        super().__init__(**kwargs)
        if sample_rate <= 0 or score_rate <= 0:
            raise ValueError(f"sample_rate and score_rate must be > 0, got {sample_rate} and {score_rate}")
        wanted = getattr(metric, "sample_rate", score_rate)
        if wanted != score_rate:
            raise ValueError(f"the wrapped metric works at {wanted} Hz, not at score_rate={score_rate}")
        self.metric, self.sample_rate, self.score_rate = metric, sample_rate, score_rate

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        from julius import resample_frac

        rates = (self.sample_rate, self.score_rate)
        self.metric.update(resample_frac(x_hat.float(), *rates), resample_frac(x.float(), *rates))

    def compute(self) -> Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        super().reset()
        self.metric.reset()
