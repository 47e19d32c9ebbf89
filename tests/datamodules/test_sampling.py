"""Endless training streams: domain weights, full-band quota, rank partitions, Shar, exact resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.lhotse_audio import LhotseAudioDataModule
from datamodules.manifests import prepare_manifests
from datamodules.sampling import batch_counts, total_counts

SR = 16000


class FakeTrainer:
    """What the datamodule reads from a trainer: rank layout, training flag, epoch."""

    def __init__(self, world_size: int = 1, rank: int = 0) -> None:
        self.world_size, self.global_rank = world_size, rank
        self.training, self.current_epoch = True, 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """speech/ (8 tones: not full-band) and music/ (4 noise clips, 2 of them full-band) -> manifests
    (all in train) and Shar shards of 3 cuts."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    (root / "audio" / "speech").mkdir(parents=True)
    (root / "audio" / "music").mkdir(parents=True)
    for i in range(8):
        sf.write(root / "audio" / "speech" / f"s{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), SR)
    for i in range(4):
        noise = 0.1 * rng.standard_normal(SR)
        if i >= 2:  # low-passed at 4 kHz: nothing in the top band
            spectrum = np.fft.rfft(noise)
            spectrum[np.fft.rfftfreq(SR, 1 / SR) > 4000] = 0
            noise = np.fft.irfft(spectrum, SR)
        sf.write(root / "audio" / "music" / f"m{i}.wav", noise, SR)
    paths = prepare_manifests(root / "audio", root / "manifests", 0.0, 0.0, shar_dir=root / "shar", shard_size=3)
    return {"train": paths["train"], "shar": root / "shar" / "train"}


def _ids(batches) -> list[list[str]]:
    return [[c.id for c in cuts] for cuts in batches]


def _take(sampler, n: int) -> list:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_batch_counts_follow_the_weights_within_one_slot() -> None:
    weights = {"speech": 0.5, "music": 0.3, "general": 0.2}
    counts = batch_counts(weights, slots=7, first_batch=0, num_batches=1000)
    stacked = np.stack([counts[d] for d in weights])  # (D, N)
    assert (stacked.sum(axis=0) == 7).all()
    for d, w in weights.items():
        assert np.abs(counts[d] - 7 * w).max() < 1  # every batch within one slot
        cumulative = np.cumsum(counts[d])
        assert np.abs(cumulative - 7 * w * np.arange(1, 1001)).max() <= 1.5  # and over any prefix
    assert total_counts(weights, 7, 1000, chunk=128) == {d: int(c.sum()) for d, c in counts.items()}
    equal = batch_counts({"a": 1, "b": 1, "c": 1}, slots=6, first_batch=5, num_batches=10)
    assert all((c == 2).all() for c in equal.values())  # DAC: equal numbers per domain


def test_every_batch_holds_the_full_band_quota_and_the_domain_shares(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(
        train_cuts=str(corpus["train"]),
        sample_rate=SR,
        batch_size=4,
        segment_seconds=0.5,
        domain_weights={"speech": 1.0, "music": 1.0},
        min_full_band_per_batch=1,
    )
    assert dm.infinite
    loader = dm.train_dataloader()
    batches = _take(loader.sampler, 30)
    for cuts in batches:
        cuts = list(cuts)
        assert len(cuts) == 4 and cuts[0].custom["full_band"]  # only 2 of 12 cuts are full-band
        assert [c.custom["domain"] for c in cuts[1:]].count("speech") in (1, 2)  # 3 slots, 1:1
        assert all("draw_key" in c.custom for c in cuts)  # keys seed the windows in the dataset
    full_band = [c.custom["full_band"] for cuts in batches for c in cuts]
    assert 30 <= sum(full_band) < 60
    batch = next(iter(loader))
    assert batch.shape == (4, 1, 8000) and torch.isfinite(batch).all()


def test_ranks_read_disjoint_data_and_resume_exactly(corpus: dict[str, Path]) -> None:
    def make(rank: int) -> LhotseAudioDataModule:
        dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=3, segment_seconds=0.5, infinite=True)
        dm.trainer = FakeTrainer(world_size=2, rank=rank)
        return dm

    recordings = {}
    for rank in (0, 1):
        uninterrupted = _ids(_take(make(rank).train_dataloader().sampler, 12))
        recordings[rank] = {i.split("#")[0] for batch in uninterrupted for i in batch}
        dm = make(rank)
        loader = dm.train_dataloader()
        it = iter(loader)
        for _ in range(5):
            dm.on_before_batch_transfer(next(it), 0)
        state = dm.state_dict()
        assert state["train_sampler"]["batches"] == 5 and state["train_sampler"]["mode"] == "stream"
        resumed = make(rank)
        resumed.load_state_dict(state)
        assert _ids(_take(resumed.train_dataloader().sampler, 7)) == uninterrupted[5:]
    assert not recordings[0] & recordings[1] and len(recordings[0] | recordings[1]) == 12
    # 6 cuts of 1 s per rank, 2 draws each: a pass is 12 draws = 4 batches; 12 batches = 3 passes
    assert len(recordings[0]) == 6


def test_training_from_shar_shards(corpus: dict[str, Path]) -> None:
    def make(rank: int, seed: int = 0) -> LhotseAudioDataModule:
        dm = LhotseAudioDataModule(
            train_shar=str(corpus["shar"]),
            sample_rate=SR,
            batch_size=2,
            segment_seconds=0.5,
            seed=seed,
            domain_weights={"speech": 1.0, "music": 1.0},
        )
        dm.trainer = FakeTrainer(world_size=2, rank=rank)
        return dm

    seen = {}
    for rank in (0, 1):
        loader = make(rank).train_dataloader()
        batches = _take(loader.sampler, 10)
        audio = [loader.dataset[cuts] for cuts in batches]
        assert all(a.shape == (2, 1, 8000) for a in audio)
        assert all(sorted(c.custom["domain"] for c in cuts) == ["music", "speech"] for cuts in batches)
        seen[rank] = {c.custom["shard_origin"] for cuts in batches for c in cuts}
        resumed = make(rank)
        state = {"mode": "stream", "epoch": 0, "batches": 6, "world_size": 2, "seed": 0}
        resumed.load_state_dict({"train_sampler": state})
        again = resumed.train_dataloader()
        rest = _take(again.sampler, 4)
        assert _ids(rest) == _ids(batches[6:])
        assert all(torch.equal(again.dataset[c], a) for c, a in zip(rest, audio[6:]))  # same windows
    assert not seen[0] & seen[1]  # 4 shards: 0 and 2 on rank 0, 1 and 3 on rank 1
    with pytest.raises(ValueError, match="fewer than the 5 ranks"):
        dm = make(0)
        dm.trainer = FakeTrainer(world_size=5, rank=0)
        dm.train_dataloader()


def test_stream_arguments_are_checked(corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), train_shar=str(corpus["shar"]))
    with pytest.raises(FileNotFoundError, match="Shar folder"):
        LhotseAudioDataModule(train_shar=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="domain_weights names"):
        LhotseAudioDataModule(train_cuts={"speech": str(corpus["train"])}, domain_weights={"music": 1.0})
    with pytest.raises(ValueError, match="no domain 'general' cut"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), domain_weights={"general": 1.0}).train_dataloader()
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=2, min_full_band_per_batch=2)
    with pytest.raises(ValueError, match="must be < the batch size"):
        dm.train_dataloader()
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=2, infinite=True)
    dm.load_state_dict({"train_sampler": {"mode": "epoch", "epoch": 0, "batches": 1, "world_size": 1, "seed": 0}})
    with pytest.raises(ValueError, match="epoch mode"):
        dm.train_dataloader()


class _Recorder(pl.LightningModule):
    """Trains a scale on the batch mean and records a hash of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(float(batch.double().abs().sum()))
        return (self.scale * batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_resume_trains_on_the_uninterrupted_batches(corpus: dict[str, Path], tmp_path: Path) -> None:
    def fit(max_steps: int, ckpt_path: str | None = None) -> tuple[_Recorder, pl.Trainer]:
        dm = LhotseAudioDataModule(
            train_cuts=str(corpus["train"]), batch_size=2, segment_seconds=0.25, infinite=True, num_workers=1
        )
        model = _Recorder()
        trainer = pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            use_distributed_sampler=False,
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)],
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model, trainer

    uninterrupted, _ = fit(7)
    first, _ = fit(4)  # a worker prefetches ahead; the checkpoint holds the 4 batches trained on
    assert first.seen == uninterrupted.seen[:4]
    resumed, trainer = fit(7, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.seen == uninterrupted.seen[4:]
    assert trainer.datamodule.state_dict()["train_sampler"]["batches"] == 7
