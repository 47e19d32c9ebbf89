"""LhotseAudioDataModule: cut manifests or Shar shards -> DataLoaders of audio windows (B, C, T).

Sharding across ranks is done by the samplers themselves (every rank sees different cuts and the
same number of batches), so the trainer must run with ``use_distributed_sampler: false``. Two
training modes: finite epochs over one manifest (:class:`CountedCutSampler`), or an endless,
step-based stream with domain weights and a full-band quota
(:class:`~datamodules.sampling.BalancedStreamSampler`). Both resume exactly (see
:meth:`LhotseAudioDataModule.state_dict`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler
from torch.utils.data import DataLoader

from datamodules.augment import Augmentation
from datamodules.dataset import AudioWindowDataset, cut_domain
from datamodules.manifests import load_cuts
from datamodules.sampling import BalancedStreamSampler, CutStream, Shard, rank_shards, with_draw_key
from datamodules.shards import ShardWindowStream


class CountedCutSampler(SimpleCutSampler):
    """A ``SimpleCutSampler`` with ``batch_size`` cuts per batch, so its length is known.

    Lhotse samplers have no ``len``; with a fixed number of cuts per batch the number of batches
    each rank yields per epoch follows from the number of cuts, which gives Lightning a finite
    epoch length (progress bar, ``estimated_stepping_batches``).

    With ``draw_keys``, every cut of a batch carries the key ``seed/epoch/cut id`` that seeds its
    window offset and augmentation in the dataset (see ``sampling.with_draw_key``): the windows of
    an epoch are fixed by the seed (a resumed run loads the same audio) and change from one epoch
    to the next.

    Args:
        cuts: the cuts to sample (eager ``CutSet``).
        batch_size: cuts per batch.
        shuffle: reshuffle every epoch (``seed + epoch``).
        drop_last: drop the last incomplete batch (and the batches that cannot be given to
            every rank); without it, the last batches are split so that every rank gets one.
        world_size: number of ranks.
        rank: this rank.
        seed: shuffling seed, the same on every rank.
        draw_keys: give every cut its draw key (else the dataset's generator draws offsets).
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
        draw_keys: bool = False,
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
        self.draw_keys = draw_keys
        self._skip: tuple[int, int] | None = None  # (epoch, batches) to skip at the next iter()
        if draw_keys:
            self.map(self._keyed)

    def _keyed(self, cuts: CutSet) -> CutSet:
        key = f"{self.seed}/{self.epoch}/"
        return CutSet.from_cuts(with_draw_key(c, key + c.id) for c in cuts)

    def skip_next(self, epoch: int, batches: int) -> None:
        """Make the next iteration of ``epoch`` start after its first ``batches`` batches (a
        resumed run); the first batch of another epoch forgets this."""
        self._skip = (epoch, batches)

    def __next__(self) -> CutSet:
        # The skip happens at the first batch, not in iter(): DataLoader calls iter() twice.
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            for _ in range(skip[1]):
                super().__next__()
        return super().__next__()

    def __len__(self) -> int:
        """Batches this rank yields in one full epoch."""
        if self.drop_last:
            return self.total_cuts // self.batch_size // self.world_size
        return math.ceil(math.ceil(self.total_cuts / self.batch_size) / self.world_size)


class LhotseAudioDataModule(pl.LightningDataModule):
    """Fixed-length audio windows from lhotse cut manifests or Shar shards; batches (B, C, T) float32.

    Training, finite mode (one ``train_cuts`` manifest, ``infinite: false``): epochs over the
    manifest, each cut drawn once per ``segment_seconds`` of its audio, each draw a window at its own
    offset (shorter cuts are zero-padded). Stream mode (``infinite: true``, or any of ``train_shar``,
    a dict of manifests, ``domain_weights``, ``min_full_band_per_batch``): an endless shuffled stream
    (:mod:`datamodules.sampling`) with per-batch domain shares and an exact full-band quota; the run
    length is ``max_batches``/``max_steps`` and ``val_check_interval`` must be an int. Domains: the
    keys of a dict given as ``train_cuts``/``train_shar``, else each cut's ``custom["domain"]``.

    Validation and test windows (``eval_segment_seconds``, consecutive, shorter than half a window
    dropped) are cut beforehand, so every pass sees the same batches.

    Samplers shard by rank themselves (every world-size-th cut, or Shar shard: export enough shards):
    run the trainer with ``use_distributed_sampler: false``. A batch can hold fewer windows than
    ``batch_size``, or none, when files fail to load: the training module must skip empty batches.
    Resuming: the batches the training loop consumed are saved in checkpoints, so a resumed run
    trains on exactly the batches (and, with ``stable_windows``, the audio) an uninterrupted run
    would have, on every rank.

    Args:
        train_cuts: training cut manifest (``cuts_train.jsonl.gz``), or ``{domain: manifest}``.
        val_cuts: path of the validation cut manifest; without it, validation is skipped.
        test_cuts: path of the test cut manifest; needed to test.
        sample_rate: sample rate in Hz of the batches (cuts are resampled).
        channels: channels C of the batches: mono files are repeated, extra channels averaged
            (C = 1) or cut to the first C.
        segment_seconds: training window length in seconds;
            T = round(segment_seconds * sample_rate).
        eval_segment_seconds: validation/test window length in seconds; None: segment_seconds.
        batch_size: windows per batch **per rank** (each DDP process loads its own batches): the global
            batch is ``batch_size x devices x num_nodes`` (EnCodec's global 64 on 8 GPUs: 8). Set
            exactly one of batch_size and max_duration.
        max_duration: seconds of audio per batch and rank (windows per batch = floor(max_duration /
            window length)); set ``batch_size: null`` to use it.
        num_workers: DataLoader worker processes (persistent when > 0).
        normalize_db: target RMS level of each window in dBFS (e.g. -24.0), peak limited to 1.0;
            None keeps the recorded levels.
        seed: seed of the shuffling (the same on every rank) and of the window offsets.
        max_eval_windows: at most this many validation/test windows, evenly spread over the
            manifest (deterministic); None keeps all.
        drop_last: drop the last incomplete training batch (finite mode).
        train_shar: Shar folder (``codecplatform prepare --shar_dir``: ``DIR/train``), or
            ``{domain: folder}``; instead of ``train_cuts``. Always stream mode. One folder without
            ``domain_weights`` and full-band quota is read sequentially by every loader worker
            (:class:`~datamodules.shards.ShardWindowStream`: shards split across ranks and workers,
            a shuffle buffer of ``shard_buffer_mb``); otherwise the balanced sampler loads a whole
            shard per source in the main process.
        infinite: stream mode for a single ``train_cuts`` manifest too.
        domain_weights: ``{domain: weight}`` (e.g. ``{speech: 1, music: 1, general: 1}``, DAC's
            equal shares); the domains must be those of the data. None: one pool, natural shares.
        min_full_band_per_batch: full-band cuts in every training batch (0: no quota).
        stable_windows: seed each draw's window offset and augmentation from its draw id (exact
            resume); false: the dataset's per-rank, per-worker generator draws them.
        augmentation: on-the-fly augmentation of training batches (not validation/test).
        normalize_lufs: target integrated loudness of each window in LUFS (ITU-R BS.1770-4; DAC
            normalizes to -24.0), peak limited to 1.0, for every split; at most one of it and
            ``normalize_db``.
        return_text: batches are ``{"audio": (B, C, T), "text": [B x str | None]}`` with each
            window's supervision text (``codecplatform prepare`` makes supervisions from ``.lrc`` /
            ``.txt`` sidecars; see ``datamodules.dataset.window_text``), for models trained on
            transcripts (MuCodec's lyrics CTC). Default false: plain (B, C, T) tensors. Not with an
            augmentation.
        decode_cache_mb: MB of whole decoded recordings each loading process keeps in memory
            (``datamodules.dataset.DecodedAudioCache``): a compressed file (Ogg, MP3) is decoded once
            instead of once per window. Worth it when the data fits (1 hour of 48 kHz stereo: 1.3 GB
            per process); 0: off.
        shard_buffer_mb: MB of audio data each loading process may hold when reading ``train_shar``
            sequentially: its shuffle buffer of decoded segments, the shard reader and the batch
            being built (bounds its memory, whatever the corpus size; ``ShardWindowStream.capacity``).
    """

    def __init__(
        self,
        train_cuts: str | dict[str, str] | None = None,
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
        train_shar: str | dict[str, str] | None = None,
        infinite: bool = False,
        domain_weights: dict[str, float] | None = None,
        min_full_band_per_batch: int = 0,
        stable_windows: bool = True,
        augmentation: Augmentation | None = None,
        normalize_lufs: float | None = None,
        return_text: bool = False,
        decode_cache_mb: float = 0.0,
        shard_buffer_mb: float = 256.0,
    ) -> None:
        super().__init__()
        if shard_buffer_mb <= 0:
            raise ValueError(f"shard_buffer_mb must be > 0, got {shard_buffer_mb}")
        self.shard_buffer_mb = shard_buffer_mb
        if return_text and augmentation is not None:
            raise ValueError("return_text cannot be combined with an augmentation (it mixes and refills windows)")
        if decode_cache_mb < 0:
            raise ValueError(f"decode_cache_mb must be >= 0 (MB; 0: no cache), got {decode_cache_mb}")
        self.decode_cache_mb = decode_cache_mb
        self.return_text = return_text
        manifests = {"val_cuts": val_cuts, "test_cuts": test_cuts}
        if isinstance(train_cuts, Mapping):
            manifests.update({f"train_cuts[{k}]": v for k, v in train_cuts.items()})
        else:
            manifests["train_cuts"] = train_cuts
        for name, path in manifests.items():
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"{name}: cut manifest {path} does not exist")
        shar = train_shar if isinstance(train_shar, Mapping) else {"train_shar": train_shar}
        for name, path in shar.items():
            if path is not None and not Path(path).is_dir():
                raise FileNotFoundError(f"train_shar: Shar folder {path} ({name}) does not exist")
        if train_cuts is not None and train_shar is not None:
            raise ValueError("set train_cuts or train_shar, not both")
        if isinstance(train_cuts, Mapping) and not train_cuts or isinstance(train_shar, Mapping) and not train_shar:
            raise ValueError("train_cuts/train_shar: an empty dict names no data")
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
            raise ValueError(f"max_duration must be >= segment_seconds ({segment_seconds}), got {max_duration}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if max_eval_windows is not None and max_eval_windows <= 0:
            raise ValueError(f"max_eval_windows must be > 0, got {max_eval_windows}")
        if domain_weights is not None:
            if not domain_weights or any(w <= 0 for w in domain_weights.values()):
                raise ValueError(f"domain_weights must name domains with weights > 0, got {domain_weights}")
            keyed = train_cuts if isinstance(train_cuts, Mapping) else train_shar
            if isinstance(keyed, Mapping) and set(keyed) != set(domain_weights):
                raise ValueError(f"domain_weights names {sorted(domain_weights)}, the training data {sorted(keyed)}")
        if min_full_band_per_batch < 0:
            raise ValueError(f"min_full_band_per_batch must be >= 0, got {min_full_band_per_batch}")
        self.train_cuts = train_cuts
        self.val_cuts = val_cuts
        self.test_cuts = test_cuts
        self.sample_rate = sample_rate
        self.channels = channels
        self.segment_seconds = segment_seconds
        self.eval_segment_seconds = segment_seconds if eval_segment_seconds is None else eval_segment_seconds
        self.batch_size = batch_size
        self.max_duration = max_duration
        self.num_workers = num_workers
        self.normalize_db = normalize_db
        self.seed = seed
        self.max_eval_windows = max_eval_windows
        self.drop_last = drop_last
        self.train_shar = train_shar
        self.domain_weights = domain_weights
        self.min_full_band_per_batch = min_full_band_per_batch
        self.stable_windows = stable_windows
        self.augmentation = augmentation
        if normalize_db is not None and normalize_lufs is not None:
            raise ValueError("set at most one of normalize_db and normalize_lufs")
        self.normalize_lufs = normalize_lufs
        self.infinite = bool(
            infinite
            or train_shar is not None
            or isinstance(train_cuts, Mapping)
            or domain_weights is not None
            or min_full_band_per_batch > 0
        )

        # one Shar folder, no per-batch composition: every worker reads its shards sequentially
        self.sequential_shards = isinstance(train_shar, str) and domain_weights is None and min_full_band_per_batch == 0
        if self.sequential_shards and return_text:
            raise ValueError("return_text needs supervisions, which train_shar segments do not carry: use train_cuts")
        self._train_stream: ShardWindowStream | None = None
        self._cuts: dict[str, CutSet] = {}  # "train": draws of full cuts; "val"/"test": windows
        self._train_sampler: CountedCutSampler | BalancedStreamSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None
        self._position: dict[str, int] = {"epoch": 0, "batches": 0}  # consumed by training

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
            cut for cut in self._load(name).cut_into_windows(duration=seconds) if cut.duration >= 0.5 * seconds
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
        ``test`` test; any other stage every manifest given. Stream-mode training data is read
        when the train DataLoader is built (it depends on the rank)."""
        given = [n for n in ("train", "val", "test") if getattr(self, f"{n}_cuts") is not None]
        wanted = {
            "fit": ["train", "val"] if self.val_cuts is not None else ["train"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["test"],
        }
        for name in wanted.get(stage or "", given):
            if name == "train" and self.infinite:
                continue
            self._cuts_of(name)

    def _train_draws(self) -> CutSet:
        """Each train cut once per ``segment_seconds`` of its audio (at least once), each draw a
        window at its own offset: an epoch covers the corpus about once, and a long recording
        weighs in proportion to its duration, not as one example."""
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

    def _loader(self, dataset: AudioWindowDataset, sampler: CountedCutSampler | BalancedStreamSampler) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # the workers' base seed from a generator of its own, not the global one: a new iterator
            # (each epoch) then leaves the global random state alone, which a resume restores
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _stream_sampler(self, world_size: int, rank: int) -> BalancedStreamSampler:
        """This rank's endless sampler: its share of every source, domain streams, full-band stream."""
        if self.train_cuts is None and self.train_shar is None:
            raise ValueError("train_cuts is not set: give a training cut manifest (or train_shar)")
        sources: dict[str, list[Shard]] = {}
        if self.train_shar is not None:
            dirs = self.train_shar if isinstance(self.train_shar, Mapping) else {"train": self.train_shar}
            for name, path in dirs.items():
                sources[name] = rank_shards(f"train_shar[{name}]", None, path, world_size, rank)
        else:
            assert self.train_cuts is not None
            paths = self.train_cuts if isinstance(self.train_cuts, Mapping) else {"train": self.train_cuts}
            for name, path in paths.items():
                cuts = load_cuts(path)
                if len(cuts) < world_size:
                    raise ValueError(
                        f"train_cuts[{name}]: {path} holds {len(cuts)} cut(s), fewer than the {world_size} ranks"
                    )
                sources[name] = rank_shards(f"train_cuts[{name}]", cuts, None, world_size, rank)
        every = [shard for shards in sources.values() for shard in shards]
        stream_seed = self.seed * 100_003 + rank  # every rank its own shuffling
        where = f"rank {rank} of {world_size}" if world_size > 1 else "the training data"

        def stream(name: str, shards: list[Shard], predicate: Any = None, what: str = "") -> CutStream:
            try:
                return CutStream(name, shards, self.segment_seconds, stream_seed, predicate, self.stable_windows)
            except ValueError as err:
                raise ValueError(f"{where} holds no {what or name} cut: {err}") from err

        keyed = isinstance(self.train_cuts, Mapping) or isinstance(self.train_shar, Mapping)
        if self.domain_weights is None:
            streams, weights = {"train": stream("train", every)}, {"train": 1.0}
        elif keyed:
            streams = {d: stream(d, sources[d], what=f"{d!r}") for d in self.domain_weights}
            weights = dict(self.domain_weights)
        else:
            streams = {
                d: stream(d, every, lambda c, d=d: cut_domain(c) == d, f"domain {d!r}") for d in self.domain_weights
            }
            weights = dict(self.domain_weights)
        full_band = None
        if self.min_full_band_per_batch > 0:
            full_band = stream(
                "full_band", every, lambda c: bool((c.custom or {}).get("full_band", False)), "full-band"
            )
        batch_size = self._cuts_per_batch(self.segment_seconds)
        if self.min_full_band_per_batch >= batch_size:
            raise ValueError(
                f"min_full_band_per_batch ({self.min_full_band_per_batch}) must be < the batch size ({batch_size})"
            )
        return BalancedStreamSampler(streams, weights, batch_size, full_band, self.min_full_band_per_batch)

    def _epoch_sampler(self, world_size: int, rank: int) -> CountedCutSampler:
        cuts = self._cuts_of("train")
        sampler = CountedCutSampler(
            cuts,
            batch_size=self._cuts_per_batch(self.segment_seconds),
            shuffle=True,
            drop_last=self.drop_last,
            world_size=world_size,
            rank=rank,
            seed=self.seed,
            draw_keys=self.stable_windows,
        )
        if len(sampler) == 0:
            raise ValueError(
                f"train_cuts: {self.train_cuts} gives {len(cuts)} windows per epoch, fewer than "
                f"{sampler.batch_size} per batch x {world_size} rank(s): lower batch_size "
                "(or max_duration), or set drop_last: false"
            )
        return sampler

    def _shard_loader(self, world_size: int, rank: int) -> DataLoader:
        """The sequential shard reader's DataLoader (each worker yields whole batches)."""
        assert isinstance(self.train_shar, str)
        finisher = AudioWindowDataset(
            sample_rate=self.sample_rate,
            channels=self.channels,
            segment_seconds=self.segment_seconds,
            random_offset=False,
            normalize_db=self.normalize_db,
            normalize_lufs=self.normalize_lufs,
        )
        stream = ShardWindowStream(
            self.train_shar,
            sample_rate=self.sample_rate,
            channels=self.channels,
            segment_seconds=self.segment_seconds,
            batch_size=self._cuts_per_batch(self.segment_seconds),
            buffer_mb=self.shard_buffer_mb,
            seed=self.seed,
            world_size=world_size,
            rank=rank,
            finish=finisher.finish_window,
            augmentation=self.augmentation,
        )
        stream.worker_plan(max(1, self.num_workers), 0)  # refuses too few shards before any worker starts
        if self._pending_sampler_state is not None:
            self._restore_stream(stream, self._pending_sampler_state, world_size)
            self._pending_sampler_state = None
        self._train_stream = stream
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _restore_stream(self, stream: ShardWindowStream, state: dict[str, Any], world_size: int) -> None:
        if state["mode"] != "shards":
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint ran in {state['mode']} mode, this run reads "
                "train_shar sequentially (shards mode)"
            )
        for key, now in (("world_size", world_size), ("seed", self.seed), ("num_workers", self.num_workers)):
            if state.get(key) != now:
                raise ValueError(
                    f"cannot resume the train sampler: the checkpoint ran with {key}={state.get(key)}, this run "
                    f"with {key}={now} (the shard order depends on it)"
                )
        self._position = {"epoch": state["epoch"], "batches": state["batches"]}
        stream.start_at(state["batches"])

    def train_dataloader(self) -> DataLoader:
        """Batches (B, C, T) of training windows, sharded by rank: finite epochs of shuffled draws
        (see ``_train_draws``), an endless stream (stream mode, no ``len``), or sequential shards."""
        world_size, rank = self._world_size_rank()
        if self.sequential_shards:
            return self._shard_loader(world_size, rank)
        if self.infinite:
            sampler: CountedCutSampler | BalancedStreamSampler = self._stream_sampler(world_size, rank)
        else:
            sampler = self._epoch_sampler(world_size, rank)
        if self._pending_sampler_state is not None:
            self._restore_sampler(sampler, self._pending_sampler_state, world_size)
            self._pending_sampler_state = None
        self._train_sampler = sampler
        dataset = AudioWindowDataset(
            sample_rate=self.sample_rate,
            channels=self.channels,
            segment_seconds=self.segment_seconds,
            random_offset=True,
            normalize_db=self.normalize_db,
            normalize_lufs=self.normalize_lufs,
            seed=self.seed,
            rank=rank,
            augmentation=self.augmentation,
            return_text=self.return_text,
            decode_cache_mb=self.decode_cache_mb,
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
            normalize_lufs=self.normalize_lufs,
            seed=self.seed,
            rank=rank,
            return_text=self.return_text,
            decode_cache_mb=self.decode_cache_mb,
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
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches consumed (in the main process, after any prefetching)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch = 0 if self.infinite else trainer.current_epoch
            if epoch != self._position["epoch"]:
                self._position = {"epoch": epoch, "batches": 0}
            self._position["batches"] += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"train_sampler": {"mode", "epoch", "batches", "world_size", "seed"}}``: the batches
        the training loop consumed (in this epoch; stream mode: in all), the same on every rank.
        A resumed run skips exactly those (each rank recomputes its own position from them)."""
        built = self._train_sampler is not None or self._train_stream is not None
        if not built and self._pending_sampler_state is not None:
            return {"train_sampler": copy.deepcopy(self._pending_sampler_state)}
        if not built:
            return {}
        world_size = self._world_size_rank()[0]
        mode = "shards" if self.sequential_shards else ("stream" if self.infinite else "epoch")
        extra = {"num_workers": self.num_workers} if self.sequential_shards else {}
        return {"train_sampler": {"mode": mode, **self._position, "world_size": world_size, "seed": self.seed, **extra}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the train sampler's position now or when the train DataLoader is built."""
        state = state_dict.get("train_sampler")
        if state is None:
            return
        if "mode" not in state:
            raise ValueError(
                "cannot resume the train sampler: the checkpoint holds the sampler state of an older "
                f"version (keys {sorted(state)}); resume without it or start a new run"
            )
        self._pending_sampler_state = copy.deepcopy(state)
        if self._train_stream is not None:
            self._restore_stream(self._train_stream, self._pending_sampler_state, self._world_size_rank()[0])
            self._pending_sampler_state = None
        elif self._train_sampler is not None:
            self._restore_sampler(self._train_sampler, self._pending_sampler_state, self._world_size_rank()[0])
            self._pending_sampler_state = None

    def _restore_sampler(
        self, sampler: CountedCutSampler | BalancedStreamSampler, state: dict[str, Any], world_size: int
    ) -> None:
        mode = "stream" if self.infinite else "epoch"
        if state["mode"] == "shards" or state["mode"] != mode:
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint ran in {state['mode']} mode, this run in "
                f"{mode} mode (infinite/train_shar/domain_weights/min_full_band_per_batch changed)"
            )
        if state["world_size"] != world_size:
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint ran on {state['world_size']} "
                f"rank(s), this run on {world_size}"
            )
        if state["seed"] != self.seed:
            raise ValueError(
                f"cannot resume the train sampler: the checkpoint used seed={state['seed']}, this run seed={self.seed}"
            )
        self._position = {"epoch": state["epoch"], "batches": state["batches"]}
        if isinstance(sampler, BalancedStreamSampler):
            sampler.seek(state["batches"])
        else:
            sampler.set_epoch(state["epoch"])
            sampler.skip_next(state["epoch"], state["batches"])


__all__ = ["CountedCutSampler", "LhotseAudioDataModule"]
