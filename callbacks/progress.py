"""A tqdm progress bar that shows the current losses."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

DEFAULT_KEYS = ["batches", "train/g/*", "train/d/loss", "val/mel_distance"]
DEFAULT_EXCLUDE = ["*/grad_norm"]
DROPPED_PREFIX = "train/"


class LossProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, plus every logged metric whose key matches one of ``keys`` (shell
    patterns) and none of ``exclude``, with the ``train/`` prefix dropped:
    ``batches=12, g/mel=1.23, g/time=0.0412, g/adv=2.01, d/loss=1.98, ...``.

    The values are the latest logged ones (``trainer.callback_metrics``: every ``self.log`` call,
    ``prog_bar`` or not). Whole numbers (``batches``) are shown as integers. Keys are shown in the
    order of ``keys``, then alphabetically within a pattern.

    A trainer with ``enable_progress_bar: false`` refuses a progress bar in its callbacks list;
    ``codecplatform`` drops this one from the experiment's list when it is set (see
    ``codecplatform.cli.CodecCLI``).

    Args:
        refresh_rate: update the bar every this many batches (0: disabled).
        process_position, leave: as in ``TQDMProgressBar``.
        keys: shell patterns of the metric keys to show.
        exclude: shell patterns of keys not to show even when ``keys`` match them.
        show_version: keep Lightning's ``v_num`` (the logger's version) in the bar.
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        keys: list[str] | None = None,
        exclude: list[str] | None = None,
        show_version: bool = False,
    ):
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.keys = list(DEFAULT_KEYS if keys is None else keys)
        self.exclude = list(DEFAULT_EXCLUDE if exclude is None else exclude)
        self.show_version = show_version

    def selected(self, metrics: dict[str, Any]) -> dict[str, int | float]:
        """The shown subset of ``metrics`` (key -> tensor or number), short names -> numbers."""
        out: dict[str, int | float] = {}
        for pattern in self.keys:
            for key in sorted(k for k in metrics if fnmatchcase(k, pattern)):
                if any(fnmatchcase(key, skip) for skip in self.exclude):
                    continue
                value = metrics[key]
                value = float(value.item() if hasattr(value, "item") else value)
                short = key[len(DROPPED_PREFIX) :] if key.startswith(DROPPED_PREFIX) else key
                out.setdefault(short, int(value) if value.is_integer() else value)
        return out

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, int | str | float | dict]:
        items = super().get_metrics(trainer, pl_module)
        if not self.show_version:
            items.pop("v_num", None)
        for key in list(items):  # prog_bar metrics the patterns select are shown once, shortened
            if any(fnmatchcase(key, pattern) for pattern in self.keys):
                del items[key]
        items.update(self.selected(dict(trainer.callback_metrics)))
        return items
