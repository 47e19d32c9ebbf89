"""MuCodecEvalModule: the platform's per-bitrate evaluation (``BitrateEvaluator``) of an end-to-end MuCodec.

``codecplatform test --config experiments/mucodec/codec_1x16384.yaml`` (or ``validate``) builds the
:class:`~codecplatform.mucodec.codec.MuCodec` from its stage checkpoints, encodes and decodes
every test batch through the codec interface and logs the same keys as the GAN codecs
(``test/mel_distance``, ``test/stft_distance``, ``test/si_sdr``, ``test/<kbps>kbps/<name>``, ViSQOL etc.
where ``test_metrics`` configures them, codebook rows) to MLflow beside them, with the per-bitrate
table as an artifact. MuCodec has one operating point (0.35 or 1.33 kbps).

Nothing is trained: ``fit`` only runs validation (``training_step`` counts batches, no optimizer), so
the smoke tests can run the YAML like every other. Without optimizer steps ``ModelCheckpoint`` writes
nothing; ``trainer.save_checkpoint(path)`` writes a MuCodec bundle (``codec_config`` without stage
paths + ``codec.*`` weights: ``AudioCodec.from_checkpoint`` loads it), as ``bundle.py`` does.

Mono data for a stereo MuCodec is repeated (L = R) before coding, as the training stages do.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import Metric

from codecplatform.lightning.base import TrainingModule
from codecplatform.lightning.evaluation import BitrateEvaluator
from codecplatform.mucodec.bundle import bundle_config
from codecplatform.mucodec.codec import MuCodec


class MuCodecEvalModule(TrainingModule):
    """Evaluates ``codec`` with :class:`~codecplatform.lightning.evaluation.BitrateEvaluator`.

    Args:
        codec: the end-to-end MuCodec.
        metrics, test_metrics, eval_bandwidths: see ``BitrateEvaluator`` (default metrics: mel
            distance, STFT distance, SI-SDR; test_metrics e.g. ViSQOL).
        max_batches: ``fit`` stops after this many (no-op) batches.
    """

    def __init__(
        self,
        codec: MuCodec,
        metrics: dict[str, Metric] | None = None,
        test_metrics: dict[str, Metric] | None = None,
        eval_bandwidths: list[float] | None = None,
        max_batches: int | None = None,
    ):
        super().__init__(max_batches=max_batches)  # the hparams: on_save_checkpoint reads "codec"
        self.automatic_optimization = False
        self.codec = codec
        self.evaluation = BitrateEvaluator(codec, metrics, test_metrics, eval_bandwidths)

    def expected_data(self) -> dict[str, int]:
        return {"sample_rate": self.codec.sample_rate}

    def configure_optimizers(self) -> Any:
        return None  # nothing to train

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        self.end_batch({}, batch_size=batch.shape[0])

    def _audio(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1 and self.codec.channels > 1:
            x = x.expand(-1, self.codec.channels, -1)
        return x.float()

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluation.update("val", self._audio(batch), self.codec)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.evaluation.update("test", self._audio(batch), self.codec)

    def _epoch_end(self, stage: str) -> None:
        table = self.evaluation.compute_and_log(self, stage)
        self.evaluation.write_tables(self, stage, table, int(self.batch_counter))

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def predict_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = self._audio(batch)
        return self.codec.decode(self.codec.encode(x))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        config = self.hparams.get("codec")
        if isinstance(config, dict):  # built by the CLI: the bundle config (no stage paths needed)
            checkpoint["codec_config"] = bundle_config(config, self.codec)


__all__ = ["MuCodecEvalModule"]
