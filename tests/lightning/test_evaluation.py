"""BitrateEvaluator on a codec that is only an AudioCodec (no encoder, quantizer or decoder attributes),
inside a LightningModule that is not GANCodecModule: the same log keys, table and values as computed by
hand from ``encode``/``decode``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from codecplatform.lightning.evaluation import CODEBOOK_ROWS, BitrateEvaluator, format_table
from codecplatform.metrics.reconstruction import SISDR, MelDistance
from codecplatform.models.base import AudioCodec
from codecplatform.types import EncodedAudio

sys.path.insert(0, str(Path(__file__).parent))
from test_gan_codec import SR, NoiseAudio  # noqa: E402

HOP, SIZE, K = 1, 16, 3


class ScalarResidualCodec(AudioCodec):
    """Frame means (one value per HOP samples; HOP = 1: the samples) coded by K residual uniform scalar
    quantizers of SIZE levels, each finer than the last: more codebooks, smaller error. Implements only
    the interface."""

    sample_rate, channels = SR, 1

    def __init__(self, bandwidths: list[float] | None = None):
        super().__init__()
        self.bandwidths = bandwidths
        self.steps = [2.0 / SIZE / SIZE**k for k in range(K)]  # level k covers the step of level k - 1

    @property
    def frame_rate(self) -> float:
        return SR / HOP

    @property
    def codebook_sizes(self) -> list[int]:
        return [SIZE] * K

    def encode(self, x: Tensor, bandwidth: float | None = None, n_q: int | None = None) -> EncodedAudio:
        n_q = self.resolve_n_q(bandwidth, n_q)
        residual = x.reshape(x.shape[0], -1, HOP).mean(-1)  # (B, T')
        codes = []
        for step in self.steps[:n_q]:
            code = torch.clamp(torch.round(residual / step) + SIZE // 2, 0, SIZE - 1)
            residual = residual - (code - SIZE // 2) * step
            codes.append(code.long())
        return EncodedAudio(codes=torch.stack(codes, dim=1), scale=None, length=x.shape[-1])

    def decode(self, encoded: EncodedAudio, codebooks=None) -> Tensor:
        values = sum(
            (encoded.codes[:, k] - SIZE // 2).float() * step
            for k, step in enumerate(self.steps[: encoded.codes.shape[1]])
        )
        return values.repeat_interleave(HOP, dim=-1)[:, None, : encoded.length]  # (B, 1, T)


class EvalOnly(LightningModule):
    def __init__(self, codec: AudioCodec, **kwargs):
        super().__init__()
        self.codec = codec
        self.evaluation = BitrateEvaluator(codec, **kwargs)
        self.tables: dict[str, dict] = {}

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluation.update("test", batch, self.codec)

    def on_test_epoch_end(self) -> None:
        table = self.evaluation.compute_and_log(self, "test")
        self.tables["test"] = self.evaluation.write_tables(self, "test", table, batches=0)


def test_any_audio_codec_is_evaluated_per_bitrate_through_the_interface(capsys):
    codec = ScalarResidualCodec()
    assert not any(hasattr(codec, part) for part in ("encoder", "quantizer", "decoder", "n_q_choices"))
    data = NoiseAudio(n=6)
    module = EvalOnly(codec, metrics={"mel_distance": MelDistance(SR), "si_sdr": SISDR()})
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    results = trainer.test(module, DataLoader(data, batch_size=3))[0]

    labels = {k: f"{round(codec.bitrate(k), 3):g}kbps" for k in (1, 2, 3)}
    assert module.evaluation.eval_n_q == {"test": [1, 2, 3], "val": [1, 2, 3]}
    assert module.evaluation.bitrate_labels == labels == {1: "32kbps", 2: "64kbps", 3: "96kbps"}
    for label in labels.values():
        for name in ("mel_distance", "si_sdr", *CODEBOOK_ROWS):
            assert f"test/{label}/{name}" in results, (label, name)
    for name in ("mel_distance", "si_sdr", *CODEBOOK_ROWS):
        assert results[f"test/{name}"] == results[f"test/96kbps/{name}"]
    sisdr = [results[f"test/{label}/si_sdr"] for label in labels.values()]
    assert sisdr[0] < sisdr[1] < sisdr[2], sisdr

    # the values are those of decode(first k codebooks of encode(x))
    x = data.x
    encoded = codec.encode(x, n_q=3)
    for k, label in labels.items():
        x_hat = codec.decode(EncodedAudio(encoded.codes[:, :k], None, encoded.length))
        mel = MelDistance(SR)
        mel.update(x_hat, x)
        assert results[f"test/{label}/mel_distance"] == pytest.approx(float(mel.compute()), rel=1e-5)
        assert 0 < results[f"test/{label}/codebook_efficiency"] <= 1

    table = module.tables["test"]
    assert [c["label"] for c in table["columns"]] == list(labels.values())
    assert [c["n_q"] for c in table["columns"]] == [1, 2, 3]
    assert set(table["rows"]) == {"mel_distance", "si_sdr", *CODEBOOK_ROWS}
    json.dumps(table)  # the MLflow artifact
    printed = capsys.readouterr().out
    assert (
        format_table(table) in printed
        and printed.count("| metric | 32kbps (n_q=1) | 64kbps (n_q=2) | 96kbps (n_q=3) |") == 1
    )


def test_operating_points_and_eval_bandwidths_choose_the_counts():
    codec = ScalarResidualCodec(bandwidths=[32.0, 96.0])
    evaluator = BitrateEvaluator(codec, per_bitrate_validation=False)
    assert evaluator.eval_n_q == {"test": [1, 3], "val": [3]}
    assert set(evaluator.metrics["test"]) == {"nq1", "nq3"} and set(evaluator.metrics["val"]) == {"nq3"}
    assert set(evaluator.metrics["test"]["nq1"]) == {"mel_distance", "stft_distance", "si_sdr"}
    assert BitrateEvaluator(codec, eval_bandwidths=[70.0]).eval_n_q["test"] == [2, 3]
    assert list(evaluator.state_dict()) == []  # no codec inside; metric states are not persistent
    assert evaluator.update("test", torch.zeros(0, 1, 64), codec) is None
    batch = evaluator.update("test", NoiseAudio(n=2).x, codec)
    assert batch is not None and batch.encoded.codes.shape == (2, 3, 2048 // HOP)
    assert torch.equal(batch.x_hat, codec.decode(codec.encode(NoiseAudio(n=2).x)))
    rows = evaluator.codebook_rows(torch.ones(3, SIZE, dtype=torch.long), 2)
    assert rows["codebook_entropy"] == pytest.approx(2 * math.log2(SIZE))
    assert rows["codebook_efficiency"] == pytest.approx(1.0) and rows["codebook_dead_codes"] == 0
