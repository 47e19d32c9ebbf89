"""Speech metrics from local checkpoint directories: tiny random WavLM x-vector and Whisper models are
written with save_pretrained and loaded by path; without a directory the metric is skipped and counted."""

from __future__ import annotations

import math

import pytest
import torch

from codecplatform.metrics.speech import SpeakerSimilarity, WordErrorRate, word_edit_distance


def test_word_edit_distance():
    assert word_edit_distance("a b c".split(), "a x c d".split()) == 2
    assert word_edit_distance([], ["a"]) == 1


def test_skipped_without_directories():
    """Without a model: one warning, the reason in ``unavailable``, the examples given counted in
    ``skipped`` (BitrateEvaluator logs that count; tests/mucodec/test_eval_module.py)."""
    with pytest.warns(UserWarning, match="speaker_similarity skipped: speaker_model_dir is not set"):
        sim = SpeakerSimilarity(16000)
    with pytest.warns(UserWarning, match="wer skipped: asr_model_dir is not set"):
        wer = WordErrorRate(16000)
    x = torch.randn(3, 1, 16000)
    for metric in (sim, wer):
        metric.update(x, x)
        metric.update(x[:1], x[:1])
        assert int(metric.skipped) == 4 and "is not set" in metric.unavailable
        assert math.isnan(float(metric.compute()))  # alone, compute has no value to give
    with pytest.raises(FileNotFoundError, match="speaker_model_dir=.*nowhere"):
        SpeakerSimilarity(16000, speaker_model_dir="/nowhere")


def test_speaker_similarity_with_a_tiny_wavlm(tmp_path):
    from transformers import WavLMConfig, WavLMForXVector

    torch.manual_seed(0)
    config = WavLMConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        tdnn_dim=(8, 8),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=8,
        num_buckets=16,
        max_bucket_distance=32,
    )
    WavLMForXVector(config).save_pretrained(tmp_path / "wavlm")
    metric = SpeakerSimilarity(48000, speaker_model_dir=str(tmp_path / "wavlm"))
    x = torch.randn(2, 2, 48000) * 0.1
    metric.update(x, x)
    assert float(metric.compute()) == pytest.approx(1.0, abs=1e-5)
    metric.reset()
    metric.update(torch.randn(2, 2, 48000) * 0.1, x)
    assert -1.0 <= float(metric.compute()) < 1.0


@pytest.fixture(scope="module")
def tiny_whisper_dir(tmp_path_factory):
    """A random 2-layer Whisper without tokenizer. init_std 1.0 (not the default 0.02) makes its
    greedy transcripts depend on the audio (with the default every input decodes to the same ids)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=32,
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        init_std=1.0,
    )
    directory = tmp_path_factory.mktemp("asr") / "whisper"
    WhisperForConditionalGeneration(config).save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return directory


def tiny_wer(directory) -> WordErrorRate:
    with pytest.warns(UserWarning, match="token ids"):
        return WordErrorRate(24000, asr_model_dir=str(directory), max_new_tokens=4)


def test_wer_with_a_tiny_whisper_without_tokenizer(tiny_whisper_dir):
    """No Whisper tokenizer can be built offline here: the minimal path scores token ids as words.
    The metric equals the word edit distance of the model's own transcripts, and is > 0 where they differ."""
    from codecplatform.metrics.speech import _mono_16k

    metric = tiny_wer(tiny_whisper_dir)
    x = torch.randn(1, 1, 24000, generator=torch.Generator().manual_seed(1)) * 0.1
    metric.update(x, x)
    assert float(metric.compute()) == 0.0  # the same audio, the same transcript
    metric.reset()
    t = torch.arange(24000) / 24000
    others = [torch.zeros(1, 1, 24000), 0.5 * torch.sin(2 * torch.pi * 440 * t).view(1, 1, -1)]
    errors = words = 0
    (reference,) = metric.transcribe(_mono_16k(x, 24000))
    for x_hat in others:
        (hypothesis,) = metric.transcribe(_mono_16k(x_hat, 24000))
        assert hypothesis != reference  # clearly different audio, different transcripts
        errors += word_edit_distance(reference.split(), hypothesis.split())
        words += len(reference.split())
        metric.update(x_hat, x)
    assert errors > 0
    assert float(metric.compute()) == pytest.approx(errors / words)


def test_wer_counts_edits_against_the_transcript_of_x(tiny_whisper_dir):
    """Known transcripts (the ASR model replaced): x is the reference, x_hat the hypothesis, and
    errors and reference words are summed over updates: (1 insertion + 1 substitution) / (3 + 2)."""
    metric = tiny_wer(tiny_whisper_dir)
    transcripts = {0.0: "the cat sat", 0.1: "the cat sat down", 0.2: "a b", 0.3: "x b"}
    metric.transcribe = lambda audio: [transcripts[round(float(a.median()), 1)] for a in audio]  # (B, T) 16 kHz
    full = lambda value: torch.full((1, 1, 24000), value)  # noqa: E731
    metric.update(full(0.1), full(0.0))  # hypothesis "the cat sat down" against "the cat sat"
    metric.update(full(0.3), full(0.2))  # hypothesis "x b" against "a b"
    assert float(metric.compute()) == pytest.approx(2 / 5)  # swapped roles would give 2 / 6
    metric.reset()
    metric.update(full(0.0), full(0.0))
    assert float(metric.compute()) == 0.0
