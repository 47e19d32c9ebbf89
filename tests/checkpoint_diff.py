"""Compare two training checkpoints (or any nest of dicts, lists and tensors) recursively, for the
resume tests: a run stopped and resumed must end in the state of the run that was never stopped.

:func:`differences` walks both nests and returns one :class:`Difference` per leaf that differs
(``path`` like ``state_dict/codec.quantizer.layers.0.embed`` or ``optimizer_states[1]/state/3/exp_avg``,
with the max absolute difference for tensors); :func:`assert_same_training_state` compares what a
resume must restore and fails naming the first differing key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

#: the parts of a Lightning checkpoint a resume must restore: module state (weights, codebooks, EMA,
#: counters, the balancer's extra state), both optimizers, the schedulers, the loops' progress, the
#: data module's sampler state, the global random states, Lightning's counters
TRAINING_STATE = (
    "state_dict",
    "optimizer_states",
    "lr_schedulers",
    "loops",
    "LhotseAudioDataModule",
    "rng_states",
    "epoch",
    "global_step",
)


@dataclass
class Difference:
    path: str
    what: str  # "max abs diff 1.2e-07", "shape (3,) vs (4,)", "missing in b", "1 vs 2"
    max_abs: float | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def _tensor_difference(path: str, a: torch.Tensor, b: torch.Tensor, atol: float) -> Difference | None:
    if a.shape != b.shape or a.dtype != b.dtype:
        return Difference(path, f"{tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
    if a.numel() == 0 or torch.equal(a, b):
        return None
    if a.is_floating_point() or a.is_complex():
        delta = (a.detach().double() - b.detach().double()).abs()
        both_nan = torch.isnan(a) & torch.isnan(b)
        delta = torch.where(both_nan, torch.zeros_like(delta), delta).nan_to_num(nan=math.inf)
    else:
        delta = (a.detach().long() - b.detach().long()).abs().double()
    worst = float(delta.max())
    if worst <= atol:
        return None
    return Difference(path, f"max abs diff {worst:.3g}", worst)


def differences(a: Any, b: Any, path: str = "", atol: float = 0.0) -> list[Difference]:
    """Every leaf where ``a`` and ``b`` differ, depth first in ``a``'s key order. Tensors and numpy
    arrays differ when their shapes or dtypes differ or any element differs by more than ``atol``
    (0: bitwise equal, NaN equal to NaN); other leaves by ``!=``."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    if isinstance(b, np.ndarray):
        b = torch.from_numpy(b)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        found = _tensor_difference(path, a, b, atol)
        return [found] if found else []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [Difference(f"{path}/{k}", "missing in b") for k in a if k not in b]
        out += [Difference(f"{path}/{k}", "missing in a") for k in b if k not in a]
        for k in a:
            if k in b:
                out += differences(a[k], b[k], f"{path}/{k}" if path else str(k), atol)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [Difference(path, f"length {len(a)} vs {len(b)}")]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]", atol)]
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return [Difference(path, f"{type(a).__name__} vs {type(b).__name__}")]
    return [] if a == b else [Difference(path, f"{a!r} vs {b!r}")]


def load(checkpoint: str | Path | dict) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def assert_same_training_state(
    resumed: str | Path | dict,
    reference: str | Path | dict,
    parts: Iterable[str] = TRAINING_STATE,
    atol: float = 0.0,
    expect: Iterable[str] = (),
) -> dict:
    """Assert that the checkpoints agree on every part in ``parts`` (those missing from both are
    skipped; missing from one is a difference) within ``atol``; ``expect`` lists state-dict key
    prefixes that must be there (e.g. ``codec_ema.``), so that a part the run should have trained is
    not silently absent from both. Fails with the first difference, the count and the worst ones.
    Returns the loaded resumed checkpoint."""
    ours, theirs = load(resumed), load(reference)
    found: list[Difference] = []
    for part in parts:
        if part in ours or part in theirs:
            if part not in ours or part not in theirs:
                found.append(Difference(part, "missing in " + ("resumed" if part not in ours else "reference")))
            else:
                found += differences(ours[part], theirs[part], part, atol)
    if found:
        worst = sorted((d for d in found if d.max_abs is not None), key=lambda d: -d.max_abs)[:5]
        raise AssertionError(
            f"resumed run differs from the uninterrupted one at {len(found)} leaves; first: {found[0]}\n"
            + "largest: "
            + "; ".join(map(str, worst))
            + "\nothers: "
            + "; ".join(map(str, found[1:8]))
        )
    for prefix in expect:
        assert any(k.startswith(prefix) for k in ours["state_dict"]), f"no state-dict key starts with {prefix!r}"
    return ours


class StepRecorder(Callback):
    """Appends, per trained batch, ``{"batch": index, <log key>: value, ...}`` (the scalar values
    ``training_step`` returned: losses, ``train/n_q``, ``train/d/n_q``, ``train/d/loss`` only when
    the discriminator stepped) as one JSON line to ``path``: what a resumed run drew and trained,
    batch by batch (for the CLI: ``class_path: checkpoint_diff.StepRecorder``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        logs = outputs if isinstance(outputs, dict) else {}
        record = {"batch": int(pl_module.batch_counter) - 1}
        record.update({k: float(v) for k, v in logs.items() if isinstance(v, torch.Tensor) and v.numel() == 1})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_steps(path: str | Path) -> dict[int, dict]:
    """The records of a :class:`StepRecorder` file by batch index."""
    return {r["batch"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


def fit_with_records(configs: list[Path], manifests: dict[str, Path], root: Path, *overrides: str):
    """``codecplatform fit`` of ``configs`` on ``manifests`` into ``root``, no logger, ModelCheckpoint
    with ``last.ckpt`` and a :class:`StepRecorder` writing ``root/steps.jsonl``; -> the LightningCLI."""
    from codecplatform.cli import cli_main

    root.mkdir(parents=True, exist_ok=True)
    recorder = {"class_path": "checkpoint_diff.StepRecorder", "init_args": {"path": str(root / "steps.jsonl")}}
    return cli_main(
        [
            "fit",
            *[arg for config in configs for arg in ("--config", str(config))],
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.save_last=true",
            f"--trainer.callbacks+={json.dumps(recorder)}",
            f"--trainer.default_root_dir={root}",
            *overrides,
        ]
    )
