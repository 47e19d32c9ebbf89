"""Counts the codes of validation batches and logs codebook usage: scalars, a heatmap and the counts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from callbacks.artifacts import artifact_folder, batch_audio, batches_seen, module_codec, validation_folder
from codecplatform.metrics.codebook import CodebookUsage, codebook_statistics

METRIC_PREFIX = "val/codebook"


class CodebookUsageLogger(Callback):
    """Codebook usage of the codec on the validation data, at full bitrate.

    The codes of every validation batch with all K codebooks are counted: those the module's
    ``validation_step`` returns as ``{"codes": (B, K, T')}`` (``GANCodecModule`` does), else the
    batch is encoded here (``pl_module.codec.encode(x, n_q=K)``, an extra encoder pass). They go into a
    :class:`~codecplatform.metrics.codebook.CodebookUsage`, whose counts are summed over DDP ranks
    before the statistics are taken. At the end of every validation (sanity checks excepted) the
    module logs, on every rank (the values are identical), for each codebook ``k``:

    - ``val/codebook/entropy/<k>``: entropy of the code distribution in bits;
    - ``val/codebook/perplexity/<k>``: ``2 ** entropy``, the effective number of entries in use;
    - ``val/codebook/dead_codes/<k>``: entries never chosen;
    - ``val/codebook/utilization/<k>``: used entries / codebook size;

    and ``val/codebook/efficiency``: ``sum_k entropy_k / sum_k log2(size_k)`` (DAC's bitrate
    efficiency). Every ``every_n_validations``-th validation, rank zero also writes
    ``codebooks/val_<batches>/usage.png`` (heatmap: codebook x entry, log counts, never-used
    entries blank) and ``codebooks/val_<batches>/counts.json``::

        {"batches": int, "frames": int, "efficiency": float,
         "codebooks": [{"codebook": k, "size": N_k, "counts": [N_k ints], "entropy_bits": float,
                        "perplexity": float, "dead_codes": int, "utilization": float}, ...]}

    to the MLflow run (or ``<trainer.log_dir>/artifacts/`` without MLflow; see ``callbacks.artifacts``).
    Works with any LightningModule that has a ``codec`` attribute (an ``AudioCodec``: only
    ``codebook_sizes``, ``n_q`` and ``encode`` are used).

    Args:
        every_n_validations: write the heatmap and the counts at validations N, 2N, ...
        log_metrics: log the scalars above (every validation).
        audio_key: the audio's key when batches are mappings.
    """

    def __init__(self, every_n_validations: int = 1, log_metrics: bool = True, audio_key: str = "audio"):
        super().__init__()
        if every_n_validations < 1:
            raise ValueError(f"every_n_validations must be >= 1, got {every_n_validations}")
        self.every_n_validations = every_n_validations
        self.log_metrics = log_metrics
        self.audio_key = audio_key
        self.validations = 0
        self.usage: CodebookUsage | None = None
        self.sizes: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict["validations"])

    # -- hooks ------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        codec = module_codec(pl_module, "CodebookUsageLogger")
        self.sizes = [int(size) for size in codec.codebook_sizes]
        n_q = len(self.sizes)
        self.usage = CodebookUsage(n_q, max(self.sizes), sync_on_compute=True).to(pl_module.device)
        # Zero frames: compute() is then defined (and joins the all-reduce) on a rank without batches.
        self.usage.update(torch.zeros(0, n_q, 0, dtype=torch.long, device=pl_module.device))

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or self.usage is None:
            return
        codes = outputs.get("codes") if isinstance(outputs, Mapping) else None
        if codes is None:  # the module did not return its codes: encode the batch here
            x = batch_audio(batch, self.audio_key)
            if x.shape[0] == 0:
                return
            codec = module_codec(pl_module, "CodebookUsageLogger")
            param = next(codec.parameters(), None)
            if param is not None and param.is_floating_point():
                x = x.to(dtype=param.dtype)
            codes = codec.encode(x, n_q=codec.n_q).codes
        self.usage.update(codes)  # (B, K, T')

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.usage is None:
            return
        self.validations += 1
        counts = self.usage.compute()["counts"]  # (K, N), summed over ranks: the same on all of them
        self.usage = None
        stats = usage_statistics(counts, self.sizes)
        if self.log_metrics:
            for key, value in metric_values(stats).items():
                pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False)
        if self.validations % self.every_n_validations or not trainer.is_global_zero:
            return
        batches = batches_seen(trainer, pl_module)
        with artifact_folder(trainer, validation_folder("codebooks", batches)) as out:
            (out / "counts.json").write_text(json.dumps(usage_json(stats, batches)))
            usage_figure(stats, title=f"codebook usage after {batches} batches").savefig(out / "usage.png", dpi=100)


def usage_statistics(counts: Tensor, sizes: list[int]) -> dict[str, Any]:
    """Per-codebook statistics of (K, N) counts where codebook k has ``sizes[k] <= N`` entries.

    :func:`codebook_statistics` gives entropy and perplexity (padding entries have no counts and
    change neither); dead codes, utilization and efficiency are taken over each codebook's own
    ``sizes[k]`` entries. Returns ``counts`` (K, N) CPU long, ``sizes``, ``entropy``, ``perplexity``,
    ``utilization`` (K,) float, ``dead_codes`` (K,) long, ``efficiency`` float.
    """
    if counts.dim() != 2 or counts.shape[0] != len(sizes) or max(sizes) > counts.shape[1]:
        raise ValueError(f"counts (K, N) {tuple(counts.shape)} do not fit the codebook sizes {sizes}")
    counts = counts.detach().long().cpu()
    stats = codebook_statistics(counts)
    size = torch.tensor(sizes, dtype=torch.long)
    dead = stats["dead_codes"] - (counts.shape[1] - size)
    max_bits = sum(math.log2(s) for s in sizes)
    entropy = stats["entropy"].double()
    return {
        "counts": counts,
        "sizes": list(sizes),
        "entropy": stats["entropy"],
        "perplexity": stats["perplexity"],
        "dead_codes": dead,
        "utilization": (size - dead).double() / size,
        "efficiency": float(entropy.sum() / max_bits) if max_bits > 0 else 0.0,
    }


def metric_values(stats: dict[str, Any]) -> dict[str, float]:
    """The scalar log keys (see :class:`CodebookUsageLogger`) -> values."""
    values = {f"{METRIC_PREFIX}/efficiency": float(stats["efficiency"])}
    for name in ("entropy", "perplexity", "dead_codes", "utilization"):
        for k, value in enumerate(stats[name].tolist()):
            values[f"{METRIC_PREFIX}/{name}/{k}"] = float(value)
    return values


def usage_json(stats: dict[str, Any], batches: int) -> dict[str, Any]:
    counts = stats["counts"]
    return {
        "batches": batches,
        "frames": int(counts[0].sum()),
        "efficiency": float(stats["efficiency"]),
        "codebooks": [
            {
                "codebook": k,
                "size": size,
                "counts": counts[k, :size].tolist(),
                "entropy_bits": abs(float(stats["entropy"][k])),  # abs: no -0.0 for a single used entry
                "perplexity": float(stats["perplexity"][k]),
                "dead_codes": int(stats["dead_codes"][k]),
                "utilization": float(stats["utilization"][k]),
            }
            for k, size in enumerate(stats["sizes"])
        ],
    }


def usage_figure(stats: dict[str, Any], title: str = "") -> Any:
    """A matplotlib Figure (no pyplot state): codebook x entry heatmap of the counts on a log colour
    scale, never-used entries (and entries beyond a smaller codebook's size) blank."""
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    counts = stats["counts"].numpy().astype(float)  # (K, N)
    for k, size in enumerate(stats["sizes"]):
        counts[k, size:] = np.nan
    masked = np.ma.masked_invalid(np.where(counts > 0, counts, np.nan))
    k_count, n_entries = counts.shape
    height = max(2.5, 0.3 * k_count + 1.5)
    fig = Figure(figsize=(10, height))  # a fixed layout: half the drawing time of "constrained"
    ax = fig.subplots()
    fig.subplots_adjust(left=0.08, right=0.94, bottom=0.6 / height, top=1 - 0.4 / height)
    vmax = max(2.0, float(np.nanmax(counts)) if np.isfinite(counts).any() else 2.0)
    image = ax.imshow(
        masked,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        norm=LogNorm(vmin=1, vmax=vmax),
        extent=(-0.5, n_entries - 0.5, k_count - 0.5, -0.5),
    )
    ax.set_xlabel("entry")
    ax.set_ylabel("codebook")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{title} (efficiency {stats['efficiency']:.2f}; blank: never used)".strip())
    fig.colorbar(image, ax=ax, label="count", fraction=0.04, pad=0.02)
    return fig
