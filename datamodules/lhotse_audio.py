"""LhotseAudioDataModule: cut manifests -> DataLoaders of fixed-length audio windows (B, C, T).

Sharding across ranks is done by the lhotse samplers themselves (every rank sees different cuts
and the same number of batches), so the trainer must run with ``use_distributed_sampler: false``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler
from torch.utils.data import DataLoader

from datamodules.dataset import AudioWindowDataset
from datamodules.manifests import load_cuts


class CountedCutSampler(SimpleCutSampler):
    """A ``SimpleCutSampler`` with ``batch_size`` cuts per batch, so its length is known.

    Lhotse samplers have no ``len``; with a fixed number of cuts per batch the number of batches
    each rank yields per epoch follows from the number of cuts, which gives Lightning a finite
    epoch length (progress bar, ``estimated_stepping_batches``).

    Args:
        cuts: the cuts to sample (eager ``CutSet``).
        batch_size: cuts per batch.
        shuffle: reshuffle every epoch (``seed + epoch``).
        drop_last: drop the last incomplete batch (and the batches that cannot be given to
            every rank); without it, the last batches are split so that every rank gets one.
        world_size: number of ranks.
        rank: this rank.
        seed: shuffling seed, the same on every rank.
    """

    def __init__(
        self,
        cuts: CutSet,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        world_size: int,
        rank: int,
        seed: int,
    ) -> None:
        super().__init__(
            cuts,
            max_cuts=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            world_size=world_size,
            rank=rank,
            seed=seed,
        )
        self.batch_size = batch_size
        self.total_cuts = len(cuts)

    def __len__(self) -> int:
        """Batches this rank yields in one full epoch."""
        if self.drop_last:
            return self.total_cuts // self.batch_size // self.world_size
        return math.ceil(math.ceil(self.total_cuts / self.batch_size) / self.world_size)


class LhotseAudioDataModule(pl.LightningDataModule):
    """Fixed-length audio windows from lhotse cut manifests; every batch is (B, C, T) float32.

    Training draws one window of ``segment_seconds`` at a random offset from each cut (cuts
    shorter than a window are zero-padded). Validation and test cut every cut into consecutive
    windows of ``eval_segment_seconds`` beforehand (windows shorter than half a window are
    dropped), so their batches are identical from one pass to the next.

    Samplers shard by rank themselves (world size and global rank are read from the attached
    trainer, see :meth:`_world_size_rank`): run the trainer with ``use_distributed_sampler: false``.
    A batch can hold fewer than ``batch_size`` windows, or none, when files fail to load (see
    :class:`~datamodules.dataset.AudioWindowDataset`): the training module must skip empty batches.

    Args:
        train_cuts: path of the training cut manifest (``cuts_train.jsonl.gz``); needed to fit.
        val_cuts: path of the validation cut manifest; without it, validation is skipped.
        test_cuts: path of the test cut manifest; needed to test.
        sample_rate: sample rate in Hz of the batches (cuts are resampled).
        channels: channels C of the batches: mono files are repeated, extra channels averaged
            (C = 1) or cut to the first C.
        segment_seconds: training window length in seconds;
            T = round(segment_seconds * sample_rate).
        eval_segment_seconds: validation/test window length in seconds; None: segment_seconds.
        batch_size: windows per batch. Set exactly one of batch_size and max_duration.
        max_duration: seconds of audio per batch (windows per batch = floor(max_duration / window
            length)); set ``batch_size: null`` to use it.
        num_workers: DataLoader worker processes (persistent when > 0).
        normalize_db: target RMS level of each window in dBFS (e.g. -24.0), peak limited to 1.0;
            None keeps the recorded levels.
        seed: seed of the shuffling (the same on every rank) and of the window offsets.
        max_eval_windows: at most this many validation/test windows, evenly spread over the
            manifest (deterministic); None keeps all.
        drop_last: drop the last incomplete training batch.
    """

    def __init__(
        self,
        train_cuts: str | None = None,
        val_cuts: str | None = None,
        test_cuts: str | None = None,
        sample_rate: int = 24000,
        channels: int = 1,
        segment_seconds: float = 1.0,
        eval_segment_seconds: float | None = None,
        batch_size: int | None = 8,
        max_duration: float | None = None,
        num_workers: int = 0,
        normalize_db: float | None = None,
        seed: int = 0,
        max_eval_windows: int | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        manifests = {"train_cuts": train_cuts, "val_cuts": val_cuts, "test_cuts": test_cuts}
        for name, path in manifests.items():
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: cut manifest {path} does not exist")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if channels <= 0:
            raise ValueError(f"channels must be > 0, got {channels}")
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
        if eval_segment_seconds is not None and eval_segment_seconds <= 0:
            raise ValueError(f"eval_segment_seconds must be > 0, got {eval_segment_seconds}")
        if (batch_size is None) == (max_duration is None):
            raise ValueError(
                f"set exactly one of batch_size and max_duration (got batch_size={batch_size}, "
                f"max_duration={max_duration}); use batch_size: null to batch by max_duration"
            )
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if max_duration is not None and max_duration < segment_seconds:
            raise ValueError(
                f"max_duration must be >= segment_seconds ({segment_seconds}), got {max_duration}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if max_eval_windows is not None and max_eval_windows <= 0:
            raise ValueError(f"max_eval_windows must be > 0, got {max_eval_windows}")
        self.train_cuts = train_cuts
        self.val_cuts = val_cuts
        self.test_cuts = test_cuts
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_seconds = segment_seconds
        self.eval_segment_seconds = (
            segment_seconds if eval_segment_seconds is None else eval_segment_seconds
        )
        self.batch_size = batch_size
        self.max_duration = max_duration
        self.num_workers = num_workers
        self.normalize_db = normalize_db
        self.seed = seed
        self.max_eval_windows = max_eval_windows
        self.drop_last = drop_last

        self._cuts: dict[str, CutSet] = {}  # "train": draws of full cuts; "val"/"test": windows
        self._train_sampler: CountedCutSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- distributed
    def _world_size_rank(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        if self.trainer is None:
            return 1, 0
        world_size, rank = self.trainer.world_size, self.trainer.global_rank
        # Lightning would wrap the lhotse sampler into a DistributedSampler: sharding twice.
        connector = getattr(self.trainer, "_accelerator_connector", None)
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                "LhotseAudioDataModule shards by rank in its lhotse samplers: "
                "run the trainer with use_distributed_sampler: false"
            )
        return world_size, rank

    def _cuts_per_batch(self, window_seconds: float) -> int:
        if self.batch_size is not None:
            return self.batch_size
        assert self.max_duration is not None  # checked in __init__
        return max(1, math.floor(self.max_duration / window_seconds))

    # ---------------------------------------------------------------- data
    def _load(self, name: str) -> CutSet:
        path = getattr(self, f"{name}_cuts")
        if path is None:
            raise ValueError(f"{name}_cuts is not set: give the path of a {name} cut manifest")
        cuts = load_cuts(path)
        if len(cuts) == 0:
            raise ValueError(f"{name}_cuts: cut manifest {path} holds no cuts")
        return cuts

    def _eval_windows(self, name: str) -> CutSet:
        """Consecutive windows of eval_segment_seconds of the ``name`` cuts (>= half a window)."""
        seconds = self.eval_segment_seconds
        windows = CutSet.from_cuts(
            cut
            for cut in self._load(name).cut_into_windows(duration=seconds)
            if cut.duration >= 0.5 * seconds
        )
        if len(windows) == 0:
            raise ValueError(
                f"{name}_cuts: no cut in {getattr(self, f'{name}_cuts')} is at least half of "
                f"eval_segment_seconds={seconds} long"
            )
        if self.max_eval_windows is not None and len(windows) > self.max_eval_windows:
            all_windows = list(windows)
            k, n = self.max_eval_windows, len(all_windows)
            windows = CutSet.from_cuts(all_windows[i * n // k] for i in range(k))
        return windows

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests the stage needs: ``fit`` train (and val if given), ``validate`` val,
        ``test`` test; any other stage every manifest given."""
        given = [n for n in ("train", "val", "test") if getattr(self, f"{n}_cuts") is not None]
        wanted = {
            "fit": ["train", "val"] if self.val_cuts is not None else ["train"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["test"],
        }
        for name in wanted.get(stage or "", given):
            self._cuts_of(name)

    def _train_draws(self) -> CutSet:
        """Each train cut once per ``segment_seconds`` of its audio (at least once), each draw a
        window at its own random offset: an epoch covers the corpus about once, and a long
        recording weighs in proportion to its duration, not as one example."""
        return CutSet.from_cuts(
            cut.with_id(f"{cut.id}#{i}")
            for cut in self._load("train")
            for i in range(max(1, round(cut.duration / self.segment_seconds)))
        )

    def _cuts_of(self, name: str) -> CutSet:
        """Train draws or val/test windows, read once."""
        if name not in self._cuts:
            self._cuts[name] = self._train_draws() if name == "train" else self._eval_windows(name)
        return self._cuts[name]

    def _loader(self, dataset: AudioWindowDataset, sampler: CountedCutSampler) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches (B, C, T) of random windows (see ``_train_draws``), sharded by rank."""
        cuts = self._cuts_of("train")
        world_size, rank = self._world_size_rank()
        sampler = CountedCutSampler(
            cuts,
            batch_size=self._cuts_per_batch(self.segment_seconds),
            shuffle=True,
            drop_last=self.drop_last,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
        )
        if len(sampler) == 0:
            raise ValueError(
                f"train_cuts: {self.train_cuts} gives {len(cuts)} windows per epoch, fewer than "
                f"{sampler.batch_size} per batch x {world_size} rank(s): lower batch_size "
                "(or max_duration), or set drop_last: false"
            )
        if self._pending_sampler_state is not None:
            self._restore_sampler(sampler, self._pending_sampler_state)
            self._pending_sampler_state = None
        self._train_sampler = sampler
        dataset = AudioWindowDataset(
            sample_rate=self.sample_rate,
            channels=self.channels,
            segment_seconds=self.segment_seconds,
            random_offset=True,
            normalize_db=self.normalize_db,
            seed=self.seed,
            rank=rank,
        )
        return self._loader(dataset, sampler)

    def _eval_dataloader(self, name: str) -> DataLoader:
        windows = self._cuts_of(name)
        world_size, rank = self._world_size_rank()
        sampler = CountedCutSampler(
            windows,
            batch_size=self._cuts_per_batch(self.eval_segment_seconds),
            shuffle=False,
            drop_last=False,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
        )
        dataset = AudioWindowDataset(
            sample_rate=self.sample_rate,
            channels=self.channels,
            segment_seconds=self.eval_segment_seconds,
            random_offset=False,
            normalize_db=self.normalize_db,
            seed=self.seed,
            rank=rank,
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Fixed windows (B, C, T) of the validation cuts; an empty list (no validation)
        when ``val_cuts`` is not set."""
        if self.val_cuts is None:
            return []
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        """Fixed windows (B, C, T) of the test cuts."""
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test windows, in order (``codecplatform predict`` reconstructs them)."""
        return self._eval_dataloader("test")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """``{"train_sampler": ...}``: the train sampler's position (epoch, batches consumed).

        With ``num_workers > 0`` the position is ahead of training by the batches the
        DataLoader had prefetched, so a resumed run skips those few batches.
        """
        if self._train_sampler is not None:
            return {"train_sampler": self._train_sampler.state_dict()}
        if self._pending_sampler_state is not None:
            return {"train_sampler": copy.deepcopy(self._pending_sampler_state)}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the train sampler's position now or when the train DataLoader is built."""
        state = state_dict.get("train_sampler")
        if state is None:
            return
        if self._train_sampler is not None:
            self._restore_sampler(self._train_sampler, state)
        else:
            self._pending_sampler_state = copy.deepcopy(state)

    def _restore_sampler(self, sampler: CountedCutSampler, state: dict[str, Any]) -> None:
        if state["world_size"] != sampler.world_size:
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint ran on {state['world_size']} "
                f"rank(s), this run on {sampler.world_size}"
            )
        if state["seed"] != sampler.seed:
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint used seed={state['seed']}, "
                f"this run seed={sampler.seed}"
            )
        sampler.load_state_dict(copy.deepcopy(state))  # lhotse consumes the dict it gets


__all__ = ["CountedCutSampler", "LhotseAudioDataModule"]
