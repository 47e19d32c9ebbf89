"""Speech metrics from local pretrained checkpoints: speaker similarity and word error rate.

Both are torchmetrics ``Metric``s updated as ``metric.update(x_hat, x)`` with (B, C, T) audio at
``sample_rate`` (mixed to mono and resampled to 16 kHz), so ``BitrateEvaluator(test_metrics=...)``
takes them like ViSQOL. Nothing is downloaded: each needs a local directory written by
``save_pretrained`` (e.g. ``microsoft/wavlm-base-plus-sv`` or ``openai/whisper-small`` fetched by the
user beforehand). Without one (``None``) the metric is skipped: one warning when it is built, its
``unavailable`` attribute says why, ``update`` counts the examples it did not score in the ``skipped``
state (summed over ranks) and ``BitrateEvaluator`` logs that count as ``<stage>/skipped/<name>`` in
place of a value (``compute`` alone gives NaN). Why: a missing model is a counted skip in the logs and
tables, never a NaN row.

* :class:`SpeakerSimilarity`: cosine similarity of the x-vectors of ``x`` and ``x_hat`` from
  transformers ``WavLMForXVector`` or ``UniSpeechSatForXVector`` (the class named in the directory's
  config), mean over examples (higher is better, 1 = same embedding).
* :class:`WordErrorRate`: ``WhisperForConditionalGeneration`` transcribes ``x`` (the reference: the
  data has no transcripts) and ``x_hat`` (the hypothesis); WER = word edit distance / reference words,
  summed over the evaluation (``jiwer`` when installed, else :func:`word_edit_distance`). Text comes
  from the directory's ``WhisperProcessor`` tokenizer; a directory without tokenizer files (a tiny test
  model) is transcribed to token ids, each id a "word" (said in the warning).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from codecplatform.dsp.spectral import resample

MODEL_RATE = 16000


def _mono_16k(x: Tensor, sample_rate: int) -> Tensor:
    """(B, C, T) -> (B, T') mono at 16 kHz, float32."""
    if x.dim() != 3:
        raise ValueError(f"audio must be (B, C, T), got {tuple(x.shape)}")
    return resample(x.float().mean(dim=1).contiguous(), sample_rate, MODEL_RATE)


def _check_dir(path: str | None, field: str) -> Path | None:
    if path is None:
        return None
    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{field}={path}: no config.json; give a local save_pretrained directory")
    return directory


def _skip(metric: str, reason: str) -> str:
    """Warn once that ``metric`` is skipped for ``reason``; -> the reason (the metric's ``unavailable``)."""
    warnings.warn(
        f"{metric} skipped: {reason}; evaluations log the examples not scored as <stage>/skipped/<name>",
        stacklevel=3,
    )
    return reason


def word_edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions, insertions, deletions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def _errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words)."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return len(hyp), 0
    try:
        import jiwer
    except ImportError:
        return word_edit_distance(ref, hyp), len(ref)
    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions, len(ref)


class SpeakerSimilarity(Metric):
    """Mean cosine similarity of x-vectors of ``x`` and ``x_hat`` (see the module docstring).

    Args:
        sample_rate: of the audio given to ``update``.
        speaker_model_dir: a local ``WavLMForXVector`` / ``UniSpeechSatForXVector`` directory; None: skipped.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, sample_rate: int, speaker_model_dir: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        directory = _check_dir(speaker_model_dir, "speaker_model_dir")
        self.model: Any = None
        self.feature_extractor: Any = None
        self.unavailable: str | None = None
        if directory is None:
            self.unavailable = _skip(
                "speaker_similarity",
                "speaker_model_dir is not set (a local WavLMForXVector or UniSpeechSatForXVector "
                "save_pretrained directory)",
            )
            return
        from transformers import AutoConfig, UniSpeechSatForXVector, WavLMForXVector

        model_type = AutoConfig.from_pretrained(directory).model_type
        classes = {"wavlm": WavLMForXVector, "unispeech-sat": UniSpeechSatForXVector}
        if model_type not in classes:
            raise ValueError(
                f"speaker_model_dir={directory}: model_type {model_type!r}, expected wavlm or unispeech-sat"
            )
        # not a registered submodule: the weights stay out of the evaluating module's checkpoints
        object.__setattr__(self, "model", classes[model_type].from_pretrained(directory).eval().requires_grad_(False))
        if (directory / "preprocessor_config.json").is_file():
            from transformers import AutoFeatureExtractor

            self.feature_extractor = AutoFeatureExtractor.from_pretrained(directory)

    def embed(self, audio: Tensor) -> Tensor:
        """(B, T) 16 kHz -> (B, D) x-vectors."""
        if self.feature_extractor is not None and getattr(self.feature_extractor, "do_normalize", False):
            audio = (audio - audio.mean(-1, keepdim=True)) / (audio.var(-1, keepdim=True, unbiased=False) + 1e-7).sqrt()
        model = self.model.to(audio.device)
        return model(input_values=audio).embeddings

    @torch.no_grad()
    def update(self, x_hat: Tensor, x: Tensor) -> None:
        if self.model is None:
            self.skipped += x.shape[0]
            return
        a, b = _mono_16k(x, self.sample_rate), _mono_16k(x_hat, self.sample_rate)
        similarity = F.cosine_similarity(self.embed(a), self.embed(b), dim=-1)
        self.total += similarity.double().sum()
        self.count += similarity.numel()

    def compute(self) -> Tensor:
        if self.model is None or int(self.count) == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


class WordErrorRate(Metric):
    """WER of Whisper's transcript of ``x_hat`` against its transcript of ``x`` (see the module docstring).

    Args:
        sample_rate: of the audio given to ``update``.
        asr_model_dir: a local ``WhisperForConditionalGeneration`` (+ ``WhisperProcessor``) directory; None: skipped.
        language: Whisper's language token (e.g. "en"); None: the model decides.
        max_new_tokens: transcript length limit per example.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        sample_rate: int,
        asr_model_dir: str | None = None,
        language: str | None = None,
        max_new_tokens: int = 128,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sample_rate, self.language, self.max_new_tokens = sample_rate, language, max_new_tokens
        self.add_state("errors", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("words", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        directory = _check_dir(asr_model_dir, "asr_model_dir")
        self.model: Any = None
        self.tokenizer: Any = None
        self.unavailable: str | None = None
        if directory is None:
            self.unavailable = _skip(
                "wer",
                "asr_model_dir is not set (a local WhisperForConditionalGeneration + WhisperProcessor "
                "save_pretrained directory)",
            )
            return
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        model = WhisperForConditionalGeneration.from_pretrained(directory).eval().requires_grad_(False)
        object.__setattr__(self, "model", model)  # not a registered submodule (kept out of checkpoints)
        if (directory / "preprocessor_config.json").is_file():
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(directory)
        else:
            self.feature_extractor = WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins)
        if (directory / "vocab.json").is_file() or (directory / "tokenizer.json").is_file():
            from transformers import WhisperTokenizer

            self.tokenizer = WhisperTokenizer.from_pretrained(directory)
        else:
            warnings.warn(
                f"asr_model_dir={directory} has no Whisper tokenizer files: transcripts are token ids (each id a word)",
                stacklevel=2,
            )

    def transcribe(self, audio: Tensor) -> list[str]:
        """(B, T) 16 kHz -> B transcripts."""
        features = self.feature_extractor(
            [a.cpu().numpy() for a in audio], sampling_rate=MODEL_RATE, return_tensors="pt"
        ).input_features.to(audio.device)
        model = self.model.to(audio.device)
        generation = model.generation_config
        if getattr(generation, "lang_to_id", None) and getattr(generation, "no_timestamps_token_id", None):
            ids = model.generate(
                features, language=self.language, task="transcribe", max_new_tokens=self.max_new_tokens
            )
        else:  # a model without Whisper's generation config (tests): plain greedy decoding
            from transformers import GenerationMixin

            ids = GenerationMixin.generate(
                model, input_features=features, max_new_tokens=self.max_new_tokens, do_sample=False
            )
        if self.tokenizer is not None:
            return [t.strip().lower() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return [" ".join(str(int(i)) for i in row[1:]) for row in ids]

    @torch.no_grad()
    def update(self, x_hat: Tensor, x: Tensor) -> None:
        if self.model is None:
            self.skipped += x.shape[0]
            return
        references = self.transcribe(_mono_16k(x, self.sample_rate))
        hypotheses = self.transcribe(_mono_16k(x_hat, self.sample_rate))
        for ref, hyp in zip(references, hypotheses):
            errors, words = _errors(ref, hyp)
            self.errors += errors
            self.words += words

    def compute(self) -> Tensor:
        if self.model is None or int(self.words) == 0:
            return torch.tensor(float("nan"))
        return (self.errors.double() / self.words).float()


__all__ = ["SpeakerSimilarity", "WordErrorRate", "word_edit_distance"]
