"""BitrateEvaluator: validation and test of a codec at every bitrate, for any LightningModule.

It relies only on the codec interface (:class:`codecplatform.models.base.AudioCodec`): ``encode``,
``decode``, ``n_q``, ``codebook_sizes``, ``bitrate``, ``n_q_for_bandwidth``, ``operating_points``,
``sample_rate``. A module holds one (``self.evaluation = BitrateEvaluator(codec, ...)``), calls
:meth:`BitrateEvaluator.update` in ``validation_step``/``test_step`` and
:meth:`BitrateEvaluator.compute_and_log` then :meth:`BitrateEvaluator.write_tables` at the end of the
evaluation epoch.

Each evaluation batch is encoded once with all codebooks (``codec.encode(x, n_q=codec.n_q)``, the
inference path) and decoded once per evaluated codebook count k from the first k codebooks of those
codes (residual quantizers: the first codes do not depend on how many follow). Evaluated counts:
those of ``eval_bandwidths`` (default: the codec's operating points, ``codec.operating_points()``),
always including the full count. Validation uses the ``metrics`` (cheap ones; default mel distance,
STFT distance, SI-SDR) at every evaluated count, or only at the full count with
``per_bitrate_validation=False``; test adds ``test_metrics`` (expensive ones: ViSQOL, PESQ, STOI).
Codebook statistics (``CodebookUsage``) come from the same codes.

Log keys (valid MLflow metric keys):
  ``<stage>/<name>``            the full bitrate (all codebooks), e.g. ``val/mel_distance``, ``test/si_sdr``;
  ``<stage>/<kbps>kbps/<name>`` one bitrate, kbps = ``codec.bitrate(n_q)`` rounded to 3 decimals with
                                trailing zeros dropped, e.g. ``test/6kbps/mel_distance``,
                                ``test/1.5kbps/codebook_efficiency``, ``val/0.861kbps/si_sdr``.
A metric that cannot score at all (its ``unavailable`` attribute says why, e.g. a speech metric
without its model directory) gives no value: the row ``skipped/<name>`` holds the number of examples
it did not score (its ``skipped`` state, summed over ranks), logged as ``<stage>/skipped/<name>``.
Codebook rows: ``codebook_entropy`` (bits per frame, summed over the used codebooks),
``codebook_efficiency`` (that sum / the bits allotted, DAC's bitrate efficiency),
``codebook_perplexity`` (mean over the used codebooks), ``codebook_min_perplexity`` (the least used
codebook's: a collapsed codebook shows here, not in the mean), ``codebook_dead_codes`` (entries never
used, summed).

At the end of each evaluation epoch every rank computes the metrics (same collectives everywhere); rank
zero builds the table metrics x bitrate, writes it to every MLflow logger of the trainer as the
artifacts ``tables/<stage>_per_bitrate.json`` and ``.md`` (overwritten at each validation; the history
is in the metrics), and prints it for ``test`` and ``validate`` runs (not during ``fit``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import MLFlowLogger
from torch import Tensor, nn
from torchmetrics import Metric

from codecplatform.metrics.codebook import CodebookUsage, codebook_statistics
from codecplatform.metrics.reconstruction import SISDR, MelDistance, STFTDistance
from codecplatform.models.base import AudioCodec
from codecplatform.types import EncodedAudio

STAGES = ("val", "test")
CODEBOOK_ROWS = (
    "codebook_entropy",
    "codebook_efficiency",
    "codebook_perplexity",
    "codebook_min_perplexity",
    "codebook_dead_codes",
)


@dataclass
class EvaluatedBatch:
    """What :meth:`BitrateEvaluator.update` saw and made of one batch.

    x:       (B, C, T) the input, float32.
    encoded: all codebooks: codes (B, n_q, T').
    x_hat:   (B, C, T) decoded from all codebooks.
    """

    x: Tensor
    encoded: EncodedAudio
    x_hat: Tensor


def bitrate_label(kbps: float) -> str:
    """``6.0`` -> ``"6kbps"``, ``0.86133`` -> ``"0.861kbps"`` (3 decimals, trailing zeros dropped)."""
    return f"{round(kbps, 3):g}kbps"


def evaluation_step(module: LightningModule) -> int | None:
    """The step at which a ``validate`` or ``test`` run logs its metrics: the last training step of the
    checkpoint it evaluates, ``batch_counter - 1`` (where the fit logged that batch and the validation
    after it; 0 for an untrained module). None during ``fit`` (Lightning's own step is already that)
    and for a module without a ``batch_counter``. Without it, Lightning logs a later stage at step 0,
    since ``validate``/``test`` do not restore the fit loop."""
    trainer = module.trainer
    counter = getattr(module, "batch_counter", None)
    if trainer.state.fn not in ("validate", "test") or not isinstance(counter, Tensor):
        return None
    return max(int(counter) - 1, 0)


def format_table(data: dict[str, Any]) -> str:
    """Markdown table, metrics x bitrates, of :meth:`BitrateEvaluator.table_json`'s output."""
    heads = [f"{c['label']} (n_q={c['n_q']})" for c in data["columns"]]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, values in data["rows"].items():
        cells = ["nan" if not math.isfinite(v) else f"{v:.4g}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replaced_figures_notice(logger: MLFlowLogger, stage: str, step: int | None) -> str | None:
    """One line when ``logger``'s run already holds a ``<stage>`` table (an earlier ``test``, or the
    fit's last validation for ``validate``): the new figures replace it. None for a run without one."""
    client, run_id = logger.experiment, logger.run_id
    path = f"tables/{stage}_per_bitrate.json"
    if path not in {item.path for item in client.list_artifacts(run_id, "tables")}:
        return None
    at = "" if step is None else f" at step {step}"
    return (
        f"note: MLflow run {run_id} already has {stage} figures; these replace them "
        f"({path} and .md overwritten, each {stage}/* metric gets a newer value{at}, shown as its latest)"
    )


class BitrateEvaluator(nn.Module):
    """Per-bitrate metrics and codebook statistics of a codec for the stages ``val`` and ``test``.

    Holds no reference to the codec (it is not part of this module's state): what it needs of it is
    read once here, and :meth:`update` is given the codec to run (whatever weights it has then,
    e.g. an EMA).

    Args:
        codec: the codec to be evaluated (the interface only).
        metrics: name -> torchmetrics ``Metric`` updated as ``metric.update(x_hat, x)`` with (B, C, T)
            audio and computing a scalar; deep-copied per stage and bitrate. Default: ``mel_distance``
            (MelDistance), ``stft_distance`` (STFTDistance), ``si_sdr`` (SISDR). The names are log keys.
        test_metrics: further metrics for test only (e.g. ViSQOL, PESQ, STOI, which run on the CPU).
        eval_bandwidths: the bitrates (kbps) to evaluate; each maps to a codebook count with
            ``codec.n_q_for_bandwidth``. Default: the codec's operating points. The full count is
            always evaluated.
        per_bitrate_validation: evaluate validation at every bitrate (default) or only at the full one.

    Attributes:
        eval_n_q: stage -> evaluated codebook counts, ascending.
        bitrate_labels: codebook count -> label (``"6kbps"``); kbps: count -> nominal kbps.
        metrics: ``metrics[stage][f"nq{k}"][name]``, the Metric of one stage, count and name.
        codebook_usage: ``codebook_usage[stage]``, the code counts (all codebooks) of a stage.
    """

    def __init__(
        self,
        codec: AudioCodec,
        metrics: dict[str, Metric] | None = None,
        test_metrics: dict[str, Metric] | None = None,
        eval_bandwidths: list[float] | None = None,
        per_bitrate_validation: bool = True,
    ):
        super().__init__()
        if metrics is None:
            metrics = {
                "mel_distance": MelDistance(codec.sample_rate),
                "stft_distance": STFTDistance(),
                "si_sdr": SISDR(),
            }
        test_metrics = test_metrics or {}
        for field, given in (("metrics", metrics), ("test_metrics", test_metrics)):
            for name, metric in given.items():
                if not isinstance(metric, Metric):
                    raise TypeError(f"{field}.{name} must be a torchmetrics Metric, got {type(metric).__name__}")
                if not name or any(not (c.isalnum() or c in "_-") for c in name):
                    raise ValueError(f"{field}: metric name {name!r} must be letters, digits, '_' or '-'")
        clash = sorted(set(metrics) & set(test_metrics))
        if clash:
            raise ValueError(f"test_metrics repeats names of metrics: {clash}; give each metric once")
        self.n_q = int(codec.n_q)
        self.codebook_sizes = [int(size) for size in codec.codebook_sizes]
        if eval_bandwidths is not None:
            if not eval_bandwidths:
                raise ValueError("eval_bandwidths: give at least one bandwidth in kbps, or null for the codec's own")
            chosen = {codec.n_q_for_bandwidth(bw) for bw in eval_bandwidths}
        else:
            chosen = set(codec.operating_points().values())
        self.eval_n_q = {"test": sorted(chosen | {self.n_q})}
        self.eval_n_q["val"] = self.eval_n_q["test"] if per_bitrate_validation else [self.n_q]
        self.kbps = {k: float(codec.bitrate(k)) for k in self.eval_n_q["test"]}
        self.bitrate_labels = {k: bitrate_label(kbps) for k, kbps in self.kbps.items()}
        if len(set(self.bitrate_labels.values())) != len(self.bitrate_labels):
            raise ValueError(f"evaluated bitrates share a label: {self.bitrate_labels}")
        per_stage = {"val": metrics, "test": {**metrics, **test_metrics}}
        self.metrics = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {
                        f"nq{k}": nn.ModuleDict({name: copy.deepcopy(m) for name, m in per_stage[stage].items()})
                        for k in self.eval_n_q[stage]
                    }
                )
                for stage in STAGES
            }
        )
        self.codebook_usage = nn.ModuleDict(
            {stage: CodebookUsage(self.n_q, max(self.codebook_sizes)) for stage in STAGES}
        )

    # -- per batch -------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, stage: str, x: Tensor, codec: AudioCodec) -> EvaluatedBatch | None:
        """Encode ``x`` (B, C, T) once with all codebooks, decode it at every evaluated count of
        ``stage`` and update that count's metrics and the codebook counts. None for an empty batch."""
        if x.shape[0] == 0:
            return None
        x = x.float()
        encoded = codec.encode(x, n_q=self.n_q)  # codes (B, n_q, T'); eval mode, no codebook updates
        self.codebook_usage[stage].update(encoded.codes)
        x_hat_full: Tensor | None = None
        for k in self.eval_n_q[stage]:
            x_hat = codec.decode(dataclasses.replace(encoded, codes=encoded.codes[:, :k])).float()
            for metric in self.metrics[stage][f"nq{k}"].values():
                metric.update(x_hat, x)
            if k == self.n_q:
                x_hat_full = x_hat
        assert x_hat_full is not None  # the full count is always evaluated
        return EvaluatedBatch(x=x, encoded=encoded, x_hat=x_hat_full)

    # -- per epoch -------------------------------------------------------------------------------
    def compute(self, stage: str) -> dict[str, dict[str, float]]:
        """Compute (collectives on every rank) and reset the metrics and codebook counts of ``stage``
        -> table: row (metric) -> column (bitrate label) -> value."""
        table: dict[str, dict[str, float]] = {}
        for k in self.eval_n_q[stage]:
            label = self.bitrate_labels[k]
            for name, metric in self.metrics[stage][f"nq{k}"].items():
                if getattr(metric, "unavailable", None):  # no model to score with: a counted skip, no value
                    with metric.sync_context():
                        skipped = float(metric.skipped)
                    metric.reset()
                    table.setdefault(f"skipped/{name}", {})[label] = skipped
                    continue
                value = metric.compute()
                metric.reset()
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise TypeError(f"metric {name} must compute a scalar tensor, got {type(value).__name__}")
                table.setdefault(name, {})[label] = float(value)
        counts = self.codebook_usage[stage].compute()["counts"]  # (n_q, N), summed over ranks
        self.codebook_usage[stage].reset()
        for k in self.eval_n_q[stage]:
            for name, value in self.codebook_rows(counts, k).items():
                table.setdefault(name, {})[self.bitrate_labels[k]] = value
        return table

    def compute_and_log(self, module: LightningModule, stage: str) -> dict[str, dict[str, float]]:
        """:meth:`compute`, then log every cell as ``<stage>/<label>/<name>`` and the full bitrate's as
        ``<stage>/<name>`` through ``module``. Returns the table."""
        table = self.compute(stage)
        full = self.bitrate_labels[self.n_q]
        logs: dict[str, float] = {}
        for name, row in table.items():
            for label, value in row.items():
                logs[f"{stage}/{label}/{name}"] = value
            if full in row:
                logs[f"{stage}/{name}"] = row[full]
        step = evaluation_step(module)
        if step is not None:
            logs["step"] = float(step)  # Lightning logs the epoch's metrics at a logged "step"
        # values are already reduced over ranks (identical everywhere); sync_dist averages equal numbers
        module.log_dict({k: torch.tensor(v) for k, v in logs.items()}, on_step=False, on_epoch=True, sync_dist=True)
        return table

    def codebook_rows(self, counts: Tensor, k: int) -> dict[str, float]:
        """Codebook statistics of the first ``k`` codebooks of ``counts`` (n_q, N): total entropy (bits
        per frame), bitrate efficiency (entropy / allotted bits), mean and least perplexity, dead codes."""
        stats = codebook_statistics(counts[:k])
        allotted = sum(math.log2(size) for size in self.codebook_sizes[:k])
        entropy = float(stats["entropy"].sum())
        return {
            "codebook_entropy": entropy,
            "codebook_efficiency": entropy / allotted if allotted > 0 else 0.0,
            "codebook_perplexity": float(stats["perplexity"].mean()),
            "codebook_min_perplexity": float(stats["perplexity"].min()),
            "codebook_dead_codes": float(stats["dead_codes"].sum()),
        }

    # -- tables ----------------------------------------------------------------------------------
    def table_json(self, stage: str, table: dict[str, dict[str, float]], batches: int) -> dict[str, Any]:
        """The JSON form of a table: columns (label, n_q, kbps) and rows (metric -> values per column);
        ``batches``: training batches so far."""
        columns = [{"label": self.bitrate_labels[k], "n_q": k, "kbps": self.kbps[k]} for k in self.eval_n_q[stage]]
        rows = {name: [row.get(c["label"], float("nan")) for c in columns] for name, row in table.items()}
        return {"stage": stage, "batches": int(batches), "columns": columns, "rows": rows}

    format_table = staticmethod(format_table)

    def write_tables(
        self, module: LightningModule, stage: str, table: dict[str, dict[str, float]], batches: int
    ) -> dict[str, Any] | None:
        """On global rank zero: write the table to every MLflow logger of ``module`` as the artifacts
        ``tables/<stage>_per_bitrate.json`` and ``.md``, and print it for ``test`` and ``validate``
        runs. Returns the JSON form (None on other ranks)."""
        trainer = module.trainer
        if not trainer.is_global_zero:
            return None
        data = self.table_json(stage, table, batches)
        text = format_table(data)
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
                if trainer.state.fn in ("test", "validate"):
                    notice = replaced_figures_notice(logger, stage, evaluation_step(module))
                    if notice:
                        print(notice, flush=True)
                logger.experiment.log_dict(logger.run_id, data, f"tables/{stage}_per_bitrate.json")
                logger.experiment.log_text(logger.run_id, text + "\n", f"tables/{stage}_per_bitrate.md")
        if trainer.state.fn in ("test", "validate"):
            print(f"\n{stage} metrics per bitrate (batch {data['batches']}):\n{text}\n", flush=True)
        return data
