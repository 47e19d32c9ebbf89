"""Classical reference codecs, Opus (libopus) and MP3 (LAME), as rows beside the trained families.

:func:`classical_roundtrip` encodes and decodes audio in memory through PyAV (whose wheels bundle FFmpeg
with libopus and libmp3lame), at constant bitrate; :func:`evaluate_classical` scores the decoded audio
with the same torchmetrics ``Metric``s as :class:`codecplatform.lightning.evaluation.BitrateEvaluator`,
one column per nominal bitrate; :func:`log_classical_run` logs the table as an MLflow run with the
metric names and tags of a trained codec's ``codecplatform test`` (``test/<kbps>kbps/<metric>``, tag
``family=opus|mp3``), so ``codecplatform compare`` draws it beside the families. Why: the papers
(DAC, EnCodec) compare with Opus and MP3 at matched bitrates.

Sample rates: libopus codes at 48 kHz here (the input is resampled there and back, as ``opusenc``
does); LAME codes at the input rate when it is one of MP3's rates, else at 48 kHz.

Delay: FFmpeg's encoders mark their look-ahead (Opus pre-skip, LAME's encoder delay) on the first
packet and the decoders drop it, so the decoded audio starts where the input did; what remains
(a few samples at most, measured) is removed by cross-correlation (``align=True``) within
``max_lag_seconds``, and the lag is reported.

True bitrate: the bytes of the encoded packets (the codec's bitstream, without a container) x 8 / the
input's duration; logged as ``test/<kbps>kbps/effective_kbps`` beside the nominal label.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from codecplatform.dsp.spectral import resample

ClassicalName = Literal["opus", "mp3"]
#: codec -> (FFmpeg encoder, FFmpeg decoder, the library's name for the run tags)
CODECS: dict[str, tuple[str, str, str]] = {
    "opus": ("libopus", "opus", "libopus"),
    "mp3": ("libmp3lame", "mp3float", "LAME"),
}
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATE = 48000
LAYOUTS = {1: "mono", 2: "stereo"}


@dataclass
class ClassicalCoded:
    """One encode-decode round trip.

    audio:         (C, T) decoded audio at the input's rate and length, float32, aligned to the input.
    nominal_kbps:  the bitrate asked of the encoder; true_kbps: payload_bytes * 8 / duration / 1000.
    payload_bytes: bytes of the encoded packets; codec_rate: the rate the codec ran at (Hz).
    lag:           samples (input rate) removed by the cross-correlation alignment (+: output was late).
    """

    audio: Tensor
    nominal_kbps: float
    true_kbps: float
    payload_bytes: int
    codec_rate: int
    lag: int


def codec_rate(codec: str, sample_rate: int) -> int:
    """The rate (Hz) ``codec`` runs at for input at ``sample_rate``."""
    if codec == "opus":
        return OPUS_RATE
    if codec == "mp3":
        return sample_rate if sample_rate in MP3_RATES else 48000
    raise ValueError(f"classical codec must be one of {sorted(CODECS)}, got {codec!r}")


def best_lag(y: np.ndarray, x: np.ndarray, max_lag: int) -> int:
    """The lag in ``[-max_lag, max_lag]`` at which ``y`` (T,) best correlates with ``x`` (T,):
    ``argmax_d sum_t y[t + d] x[t]`` (FFT cross-correlation)."""
    n = 1 << math.ceil(math.log2(len(x) + len(y)))
    corr = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)
    lags = np.arange(-max_lag, max_lag + 1)
    return int(lags[np.argmax(corr[lags % n])])


def shift(y: np.ndarray, lag: int) -> np.ndarray:
    """(C, T) -> (C, T) with ``out[:, t] = y[:, t + lag]`` (zeros outside)."""
    out = np.zeros_like(y)
    if lag >= 0:
        out[:, : y.shape[1] - lag] = y[:, lag:]
    else:
        out[:, -lag:] = y[:, : y.shape[1] + lag]
    return out


def _encode_decode(audio: np.ndarray, rate: int, codec: str, kbps: float) -> tuple[np.ndarray, int]:
    """(C, T) float32 at ``rate`` -> (decoded (C, T'), payload bytes), through FFmpeg."""
    import av

    encoder_name, decoder_name, _ = CODECS[codec]
    channels = audio.shape[0]
    encoder = av.CodecContext.create(encoder_name, "w")
    encoder.sample_rate = rate
    encoder.layout = LAYOUTS[channels]
    planar = "flt" not in {f.name for f in encoder.codec.audio_formats}
    encoder.format = "fltp" if planar else "flt"
    encoder.bit_rate = int(round(kbps * 1000))
    if codec == "opus":
        encoder.options = {"vbr": "off", "application": "audio"}  # constant bitrate, general audio
    encoder.open()
    frame_size = encoder.frame_size
    total = math.ceil(audio.shape[1] / frame_size) * frame_size
    padded = np.zeros((channels, total), dtype=np.float32)
    padded[:, : audio.shape[1]] = audio
    packets = []
    for start in range(0, total, frame_size):
        chunk = padded[:, start : start + frame_size]
        array = chunk if planar else chunk.T.reshape(1, -1)  # planar (C, n) or interleaved (1, n * C)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(array), format=encoder.format.name, layout=encoder.layout.name
        )
        frame.sample_rate, frame.pts = rate, start
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create(decoder_name, "r")
    decoder.sample_rate, decoder.layout = rate, LAYOUTS[channels]
    if encoder.extradata:
        decoder.extradata = encoder.extradata  # Opus: the identification header (channels, pre-skip)
    pieces = []
    for packet in [*packets, None]:
        for frame in decoder.decode(packet):
            if frame.sample_rate != rate:
                raise RuntimeError(f"{decoder_name} decoded at {frame.sample_rate} Hz, expected {rate} Hz")
            data = frame.to_ndarray()
            pieces.append(data if frame.format.is_planar else data.reshape(-1, channels).T)
    decoded = np.concatenate(pieces, axis=1).astype(np.float32) if pieces else np.zeros((channels, 0), np.float32)
    return decoded, sum(packet.size for packet in packets)


def classical_roundtrip(
    x: Tensor,
    sample_rate: int,
    codec: ClassicalName,
    kbps: float,
    align: bool = True,
    max_lag_seconds: float = 0.005,
) -> ClassicalCoded:
    """Encode and decode ``x`` (C, T), C in {1, 2}, at ``sample_rate`` with ``codec`` at ``kbps``
    (constant bitrate) -> :class:`ClassicalCoded` at the input's rate and length."""
    if x.dim() != 2 or x.shape[0] not in LAYOUTS:
        raise ValueError(f"classical codecs take (C, T) audio with 1 or 2 channels, got {tuple(x.shape)}")
    if kbps <= 0:
        raise ValueError(f"kbps must be > 0, got {kbps}")
    rate = codec_rate(codec, sample_rate)
    audio = resample(x.detach().float().cpu(), sample_rate, rate).clamp(-1.0, 1.0).numpy()
    decoded, payload = _encode_decode(audio, rate, codec, kbps)
    y = resample(torch.from_numpy(decoded), rate, sample_rate).numpy()
    length = x.shape[1]
    out = np.zeros((x.shape[0], length), dtype=np.float32)
    out[:, : min(length, y.shape[1])] = y[:, :length]
    lag = 0
    if align and length > 0:
        reference = x.detach().float().cpu().mean(0).numpy()
        lag = best_lag(out.mean(0), reference, max(1, int(max_lag_seconds * sample_rate)))
        out = shift(out, lag)
    duration = length / sample_rate
    return ClassicalCoded(
        audio=torch.from_numpy(out).to(x.dtype if x.is_floating_point() else torch.float32),
        nominal_kbps=float(kbps),
        true_kbps=payload * 8 / duration / 1000 if duration > 0 else float("nan"),
        payload_bytes=int(payload),
        codec_rate=rate,
        lag=lag,
    )


@dataclass
class ClassicalTable:
    """What :func:`evaluate_classical` measured: ``columns`` (label, kbps, true_kbps), ``rows``
    (metric -> one value per column, as ``BitrateEvaluator.table_json``), the lags seen per column."""

    codec: str
    sample_rate: int
    channels: int
    seconds: float
    columns: list[dict[str, Any]]
    rows: dict[str, list[float]] = field(default_factory=dict)
    lags: dict[str, list[int]] = field(default_factory=dict)

    def cell(self, metric: str, label: str) -> float:
        return self.rows[metric][[c["label"] for c in self.columns].index(label)]


def evaluate_classical(
    batches: Iterable[Tensor],
    sample_rate: int,
    codec: ClassicalName,
    bitrates: list[float],
    metrics: dict[str, Metric],
) -> ClassicalTable:
    """Score ``codec`` at each of ``bitrates`` (kbps) on ``batches`` of (B, C, T) audio (e.g. a test
    DataLoader's), each example coded on its own; ``metrics`` as ``BitrateEvaluator``'s (name ->
    ``Metric`` updated as ``update(x_hat, x)``), deep-copied per bitrate."""
    from codecplatform.lightning.evaluation import bitrate_label

    if not bitrates:
        raise ValueError("give at least one bitrate in kbps")
    labels = [bitrate_label(kbps) for kbps in bitrates]
    per_rate = {label: {name: copy.deepcopy(m) for name, m in metrics.items()} for label in labels}
    payload = dict.fromkeys(labels, 0)
    lags: dict[str, list[int]] = {label: [] for label in labels}
    samples, channels = 0, 0
    for batch in batches:
        batch = batch.float()
        channels = batch.shape[1]
        samples += batch.shape[0] * batch.shape[2]
        for kbps, label in zip(bitrates, labels):
            coded = [classical_roundtrip(example, sample_rate, codec, kbps) for example in batch]
            payload[label] += sum(c.payload_bytes for c in coded)
            lags[label] += [c.lag for c in coded]
            x_hat = torch.stack([c.audio for c in coded])
            for metric in per_rate[label].values():
                metric.update(x_hat, batch)
    if samples == 0:
        raise ValueError("no audio to evaluate (empty batches)")
    seconds = samples / sample_rate
    columns = [
        {"label": label, "kbps": float(kbps), "true_kbps": payload[label] * 8 / seconds / 1000}
        for kbps, label in zip(bitrates, labels)
    ]
    rows = {name: [float(per_rate[label][name].compute()) for label in labels] for name in metrics}
    return ClassicalTable(codec, sample_rate, channels, seconds, columns, rows, lags)


def log_classical_run(
    table: ClassicalTable,
    tracking_uri: str,
    experiment: str = "codecplatform",
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``table`` as a finished MLflow run of ``experiment`` -> its run id: metrics
    ``test/<label>/<metric>``, ``test/<label>/effective_kbps`` (the true kbps) and ``test/<metric>``
    (the highest bitrate, as a codec's full bitrate), tags ``family`` (``table.codec``: ``opus``/``mp3``,
    or another codec's table scored the same way), ``sample_rate``, ``channels``, ``max_kbps``,
    ``stage=test``, ``encoder`` (Opus/MP3: the library and FFmpeg's version), ``tags``, and the
    table as ``tables/test_per_bitrate.json``."""
    import av
    from mlflow.entities import Metric as MlflowMetric
    from mlflow.tracking import MlflowClient

    from codecplatform.compare import prepare_experiment
    from codecplatform.tracking import absolute_sqlite_uri

    client = MlflowClient(absolute_sqlite_uri(tracking_uri))
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    prepare_experiment(client, experiment_id)
    top = max(range(len(table.columns)), key=lambda i: table.columns[i]["kbps"])
    run_tags = {
        "family": table.codec,
        "sample_rate": str(table.sample_rate),
        "channels": str(table.channels),
        "max_kbps": f"{table.columns[top]['kbps']:g}",
        "stage": "test",
        "module": "classical",
        **(
            {"encoder": f"{CODECS[table.codec][2]} (FFmpeg {av.ffmpeg_version_info}, PyAV {av.__version__})"}
            if table.codec in CODECS
            else {}
        ),
        **(tags or {}),
    }
    run = client.create_run(experiment_id, run_name=run_name or f"{table.codec}-reference", tags=run_tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        values: dict[str, float] = {}
        for i, column in enumerate(table.columns):
            values[f"test/{column['label']}/effective_kbps"] = column["true_kbps"]
            for name, row in table.rows.items():
                values[f"test/{column['label']}/{name}"] = row[i]
                if i == top:
                    values[f"test/{name}"] = row[i]
        client.log_batch(run_id, metrics=[MlflowMetric(k, float(v), now, 0) for k, v in values.items()])
        client.log_dict(
            run_id,
            {
                "stage": "test",
                "codec": table.codec,
                "seconds": table.seconds,
                "columns": table.columns,
                "rows": table.rows,
            },
            "tables/test_per_bitrate.json",
        )
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
