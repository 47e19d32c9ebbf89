"""AudioWindowDataset and LhotseAudioDataModule: shapes, channels, determinism, ranks, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet

from datamodules.dataset import AudioWindowDataset, normalize_rms
from datamodules.lhotse_audio import LhotseAudioDataModule
from datamodules.manifests import load_cuts, prepare_manifests

SR = 24000
SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


def _write_cuts(paths: list[Path], out: Path) -> Path:
    """A cut manifest with one cut per file (cut id = file stem)."""
    recordings = RecordingSet.from_recordings(Recording.from_file(p, recording_id=p.stem) for p in paths)
    cuts = CutSet.from_manifests(recordings=recordings)
    CutSet.from_cuts(cut.with_id(cut.recording_id) for cut in cuts).to_file(out)
    return out


def _tone(seconds: float, sr: int, freq: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 mono 24 kHz files of 2 s (chirps: every window differs) and one 44.1 kHz stereo file."""
    root = tmp_path_factory.mktemp("corpus")
    mono = []
    for i in range(12):
        t = np.arange(2 * SR) / SR
        chirp = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t * (1 + t))
        path = root / f"mono_{i:02d}.wav"
        sf.write(path, chirp.astype(np.float32), SR)
        mono.append(path)
    stereo = root / "stereo.wav"
    left, right = _tone(1.5, 44100, 440.0, 0.4), _tone(1.5, 44100, 880.0, 0.2)
    sf.write(stereo, np.stack([left, right], axis=1), 44100)
    return {
        "train": _write_cuts(mono[:8], root / "cuts_train.jsonl.gz"),
        "val": _write_cuts(mono[8:], root / "cuts_val.jsonl.gz"),
        "stereo": _write_cuts([stereo], root / "cuts_stereo.jsonl.gz"),
        "root": root,
    }


def _batches(loader: torch.utils.data.DataLoader) -> list[torch.Tensor]:
    return [batch for batch in loader]


def _sampled_ids(loader: torch.utils.data.DataLoader) -> list[list[str]]:
    return [[cut.id for cut in cuts] for cuts in loader.sampler]


def test_train_and_val_batches_have_the_right_shape(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(
        train_cuts=str(corpus["train"]),
        val_cuts=str(corpus["val"]),
        batch_size=3,
        segment_seconds=0.5,
        eval_segment_seconds=0.75,
    )
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = _batches(train)
    assert len(batches) == len(train) == (8 * 4) // 3  # 8 cuts x 4 draws (2 s / 0.5 s), drop_last
    for batch in batches:
        assert batch.shape == (3, 1, 12000) and batch.dtype == torch.float32
    val = dm.val_dataloader()
    val_batches = _batches(val)
    # 4 cuts x 2 s -> windows of 0.75 s: 0.75, 0.75, 0.5 (kept: >= half a window) -> 12 windows
    assert sum(b.shape[0] for b in val_batches) == 12 and len(val_batches) == len(val) == 4
    assert all(b.shape[1:] == (1, 18000) for b in val_batches)


def test_max_duration_sets_windows_per_batch(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=None, max_duration=2.0, segment_seconds=0.5)
    # 8 cuts x 4 draws (2 s / 0.5 s) = 32 windows, 4 (2 s / 0.5 s) per batch
    assert [b.shape[0] for b in _batches(dm.train_dataloader())] == [4] * 8


def test_stereo_44k_becomes_24k_mono_or_stereo(corpus: dict[str, Path]) -> None:
    cuts = load_cuts(corpus["stereo"])
    mono = AudioWindowDataset(SR, channels=1, segment_seconds=1.0, random_offset=False)[cuts]
    stereo = AudioWindowDataset(SR, channels=2, segment_seconds=1.0, random_offset=False)[cuts]
    assert mono.shape == (1, 1, SR) and stereo.shape == (1, 2, SR)
    expected_left, expected_right = _tone(1.0, SR, 440.0, 0.4), _tone(1.0, SR, 880.0, 0.2)
    middle = slice(1000, SR - 1000)  # away from resampling edge effects
    assert np.allclose(stereo[0, 0, middle].numpy(), expected_left[middle], atol=2e-3)
    assert np.allclose(stereo[0, 1, middle].numpy(), expected_right[middle], atol=2e-3)
    assert np.allclose(mono[0, 0].numpy(), stereo[0].mean(0).numpy(), atol=1e-5)

    with pytest.raises(ValueError, match="stereo.wav has 2 channels"):
        AudioWindowDataset(SR, channels=3, segment_seconds=1.0, random_offset=False)[cuts]


def test_mono_is_repeated_and_short_cuts_are_zero_padded(corpus: dict[str, Path]) -> None:
    cuts = load_cuts(corpus["train"]).subset(first=1)
    batch = AudioWindowDataset(SR, channels=2, segment_seconds=3.0, random_offset=True)[cuts]
    assert batch.shape == (1, 2, 3 * SR)
    assert torch.equal(batch[0, 0], batch[0, 1])
    assert batch[0, :, 2 * SR :].abs().max() == 0 and batch[0, :, : 2 * SR].abs().max() > 0.1


def test_val_batches_are_identical_across_passes(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), val_cuts=str(corpus["val"]), batch_size=4)
    dm.setup("fit")
    first, second = _batches(dm.val_dataloader()), _batches(dm.val_dataloader())
    assert len(first) == len(second) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, second))

    capped = LhotseAudioDataModule(val_cuts=str(corpus["val"]), batch_size=4, max_eval_windows=3)
    capped.setup("validate")
    windows = [cut.id for cuts in capped.val_dataloader().sampler for cut in cuts]
    assert windows == ["mono_08-0", "mono_09-0", "mono_10-1"]  # 8 windows, evenly spread


def test_train_windows_change_across_epochs_and_calls(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=4, segment_seconds=0.5)
    loader = dm.train_dataloader()
    epoch0 = torch.cat(_batches(loader))
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat(_batches(loader))
    assert epoch0.shape == epoch1.shape == (32, 1, 12000)  # 8 cuts x 4 draws
    assert not torch.equal(epoch0, epoch1)

    one_cut = load_cuts(corpus["train"]).subset(first=1)
    dataset = AudioWindowDataset(SR, channels=1, segment_seconds=0.5, random_offset=True, seed=0)
    assert not torch.equal(dataset[one_cut], dataset[one_cut])  # a fresh random offset each time
    again = AudioWindowDataset(SR, channels=1, segment_seconds=0.5, random_offset=True, seed=0)
    same_seed = AudioWindowDataset(SR, 1, 0.5, random_offset=True, seed=0)
    assert torch.equal(again[one_cut], same_seed[one_cut])  # seeded


def test_two_ranks_see_disjoint_cuts_and_equal_batch_counts(
    corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[int, list[list[str]]] = {}
    val_counts: dict[int, int] = {}
    for rank in (0, 1):
        dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), val_cuts=str(corpus["val"]), batch_size=2)
        monkeypatch.setattr(dm, "_world_size_rank", lambda rank=rank: (2, rank))
        dm.setup("fit")
        train = dm.train_dataloader()
        assert (train.sampler.world_size, train.sampler.rank) == (2, rank)
        seen[rank] = _sampled_ids(train)
        assert len(seen[rank]) == len(train) == 4  # 8 cuts x 2 draws (2 s / 1 s), 2 per batch, 2 ranks
        val = dm.val_dataloader()
        val_counts[rank] = len(_sampled_ids(val))
        assert val_counts[rank] == len(val)
    ids0 = {i for batch in seen[0] for i in batch}
    ids1 = {i for batch in seen[1] for i in batch}
    assert not ids0 & ids1 and len(ids0) == len(ids1) == 8
    assert val_counts[0] == val_counts[1] == 2  # 8 windows, 2 per batch, 2 ranks


def test_normalize_db_reaches_the_target_rms(corpus: dict[str, Path], tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, _tone(1.0, SR, 300.0, amplitude=0.01), SR, subtype="FLOAT")
    cuts = load_cuts(_write_cuts([quiet], tmp_path / "quiet.jsonl.gz"))
    dataset = AudioWindowDataset(SR, 1, 1.0, random_offset=False, normalize_db=-24.0)
    batch = dataset[cuts]
    rms_db = 20 * np.log10(float(batch.pow(2).mean().sqrt()))
    assert abs(rms_db - (-24.0)) < 0.5

    spiky = np.zeros((1, 1000), dtype=np.float32)
    spiky[0, 10] = 0.5  # reaching -6 dBFS RMS would need a peak far above 1
    limited = normalize_rms(spiky, -6.0)
    assert np.isclose(np.abs(limited).max(), 1.0)
    silent = np.zeros((1, 1000), dtype=np.float32)
    assert np.array_equal(normalize_rms(silent, -24.0), silent)


def test_normalize_lufs_levels_every_split_to_the_target_loudness(corpus: dict[str, Path], tmp_path: Path) -> None:
    from codecplatform.dsp.loudness import integrated_loudness

    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, _tone(1.0, SR, 300.0, amplitude=0.01), SR, subtype="FLOAT")
    cuts = load_cuts(_write_cuts([quiet], tmp_path / "quiet.jsonl.gz"))
    dataset = AudioWindowDataset(SR, 1, 1.0, random_offset=False, normalize_lufs=-24.0)
    assert abs(integrated_loudness(dataset[cuts][0].numpy(), SR) - (-24.0)) < 0.05
    dm = LhotseAudioDataModule(
        train_cuts=str(corpus["train"]), val_cuts=str(corpus["val"]), batch_size=2, normalize_lufs=-20.0
    )
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        window = next(iter(loader))[0].numpy()
        assert abs(integrated_loudness(window, SR) - (-20.0)) < 0.05
    with pytest.raises(ValueError, match="at most one of normalize_db and normalize_lufs"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), normalize_db=-24.0, normalize_lufs=-24.0)


def test_bad_files_are_dropped_with_a_warning(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"ok_{i}.wav")
        sf.write(paths[-1], _tone(1.0, SR, 300.0 + 100 * i), SR, subtype="FLOAT")
    manifest = _write_cuts(paths, tmp_path / "cuts.jsonl.gz")
    paths[1].write_text("this file was overwritten after the manifest was made")
    nan = _tone(1.0, SR, 500.0)
    nan[::1000] = np.nan  # in every window
    sf.write(paths[2], nan, SR, subtype="FLOAT")

    dataset = AudioWindowDataset(SR, 1, segment_seconds=0.5, random_offset=True)
    cuts = load_cuts(manifest)
    with pytest.warns(RuntimeWarning) as record:
        batch = dataset[cuts]
    assert batch.shape == (1, 1, 12000)
    messages = " ".join(str(w.message) for w in record)
    assert str(paths[1]) in messages and str(paths[2]) in messages

    with pytest.warns(RuntimeWarning, match="ok_1.wav"):
        empty = dataset[cuts.subset(cut_ids=["ok_1"])]
    assert empty.shape == (0, 1, 12000) and empty.dtype == torch.float32


class FakeTrainer:
    """What the datamodule reads from a trainer: rank layout, training flag, epoch."""

    def __init__(self, world_size: int = 1, rank: int = 0) -> None:
        self.world_size, self.global_rank = world_size, rank
        self.training, self.current_epoch = True, 0


def _consume(dm: LhotseAudioDataModule, batches) -> list[torch.Tensor]:
    """Hand batches to the datamodule's batch hook, as Lightning's training loop does."""
    return [dm.on_before_batch_transfer(batch, 0) for batch in batches]


def test_resumed_sampler_continues_where_it_stopped(corpus: dict[str, Path]) -> None:
    def make(seed: int = 7) -> LhotseAudioDataModule:
        dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=2, seed=seed, num_workers=1)
        dm.trainer = FakeTrainer()
        return dm

    full = [b.clone() for b in make().train_dataloader()]
    assert len(full) == 8  # 8 cuts x 2 draws (2 s / 1 s), 2 per batch

    dm = make()
    it = iter(dm.train_dataloader())  # a worker process prefetches batches ahead of training
    _consume(dm, [next(it) for _ in range(3)])
    state = dm.state_dict()
    assert state["train_sampler"] == {"mode": "epoch", "epoch": 0, "batches": 3, "world_size": 1, "seed": 7}

    resumed = make()
    resumed.load_state_dict(state)  # before the DataLoader exists, as in Lightning
    rest = list(resumed.train_dataloader())
    assert len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))  # same audio
    assert state["train_sampler"]["batches"] == 3  # loading left the checkpoint dict intact

    next_epoch = make()  # a checkpoint from the end of epoch 0 resumes at the start of epoch 1
    next_epoch.load_state_dict({"train_sampler": {**state["train_sampler"], "batches": 8}})
    loader = next_epoch.train_dataloader()
    loader.sampler.set_epoch(1)
    assert len(list(loader)) == 8

    other_seed = make(seed=8)
    other_seed.load_state_dict(state)
    with pytest.raises(ValueError, match="seed=7"):
        other_seed.train_dataloader()
    with pytest.raises(ValueError, match="older version"):
        make().load_state_dict({"train_sampler": {"epoch": 0, "diagnostics": {}}})


def test_train_windows_are_fixed_by_seed_epoch_and_id(corpus: dict[str, Path]) -> None:
    def epoch_audio(seed: int, epoch: int) -> dict[str, torch.Tensor]:
        dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=4, segment_seconds=0.5, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        out = {}
        for cuts in loader.sampler:
            for cut, audio in zip(cuts, loader.dataset[cuts]):
                assert cut.custom["draw_key"] == f"{seed}/{epoch}/{cut.id}"  # seeds the window offset
                out[cut.id] = audio
        return out

    first, again = epoch_audio(0, 0), epoch_audio(0, 0)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    other_epoch = epoch_audio(0, 1)
    assert sum(not torch.equal(first[k], other_epoch[k]) for k in first) >= len(first) - 2


def test_worker_processes_load_batches(corpus: dict[str, Path]) -> None:
    dm = LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=2, num_workers=2, segment_seconds=0.25)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batches = _batches(loader)
    assert len(batches) == 32 and all(b.shape == (2, 1, 6000) for b in batches)  # 8 cuts x 8 draws


def test_arguments_are_checked(corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_seconds must be > 0"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), segment_seconds=0.0)
    with pytest.raises(ValueError, match="exactly one of batch_size and max_duration"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), max_duration=4.0)
    with pytest.raises(ValueError, match="max_duration must be >= segment_seconds"):
        LhotseAudioDataModule(batch_size=None, max_duration=0.5, segment_seconds=1.0)
    missing = tmp_path / "nope.jsonl.gz"
    with pytest.raises(FileNotFoundError, match=f"val_cuts: cut manifest {missing}"):
        LhotseAudioDataModule(val_cuts=str(missing))
    with pytest.raises(ValueError, match="test_cuts is not set"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"])).setup("test")
    with pytest.raises(ValueError, match="fewer than 64 per batch"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), batch_size=64).train_dataloader()
    assert LhotseAudioDataModule(train_cuts=str(corpus["train"])).val_dataloader() == []


def test_real_speech_recordings(tmp_path: Path) -> None:
    speech = SHARED_DATA / "speech"
    if not speech.is_dir():
        pytest.skip("../shared/data is absent (real recordings are optional)")
    paths = prepare_manifests(speech, tmp_path / "manifests", seed=0)
    dm = LhotseAudioDataModule(train_cuts=str(paths["train"]), val_cuts=str(paths["val"]), batch_size=4)
    dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no file of the corpus may be dropped
        batch = next(iter(dm.train_dataloader()))
        val = next(iter(dm.val_dataloader()))
    assert batch.shape == (4, 1, SR) and val.shape[1:] == (1, SR)
    assert torch.isfinite(batch).all() and batch.abs().amax(dim=(1, 2)).min() > 0


def test_train_draws_are_proportional_to_duration(tmp_path: Path) -> None:
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    sf.write(short, _tone(1.0, SR, 300.0), SR)
    sf.write(long, _tone(6.0, SR, 500.0), SR)
    cuts = _write_cuts([short, long], tmp_path / "cuts.jsonl.gz")
    dm = LhotseAudioDataModule(train_cuts=str(cuts), segment_seconds=1.0, batch_size=1, drop_last=False)
    dm.setup("fit")
    ids = [i for batch in _sampled_ids(dm.train_dataloader()) for i in batch]
    recordings = [i.split("#")[0] for i in ids]
    assert recordings.count("short") == 1 and recordings.count("long") == 6
    assert len(set(ids)) == 7  # each draw is its own example (own random offset)


def test_decode_cache_gives_the_windows_of_the_files(corpus: dict[str, Path], tmp_path: Path) -> None:
    """At the file's own rate a cached window is the file's samples exactly; resampled, it matches the
    window lhotse resamples on its own (up to the resampler's phase at the window's start); an Ogg
    file is decoded once, however many windows are drawn."""
    import random

    from datamodules.dataset import DecodedAudioCache

    plain = AudioWindowDataset(SR, 1, 0.25, random_offset=True, seed=5)
    cached = AudioWindowDataset(SR, 1, 0.25, random_offset=True, seed=5, decode_cache_mb=16)
    cuts = list(load_cuts(corpus["train"]))
    for i, cut in enumerate(cuts[:4]):
        a, b = plain._load_raw(cut, random.Random(i)), cached._load_raw(cut, random.Random(i))
        np.testing.assert_array_equal(a, b)
    assert len(cached.cache) == 4

    # 44.1 kHz stereo -> 24 kHz stereo, channels kept in order (L 440 Hz louder than R 880 Hz)
    stereo = list(load_cuts(corpus["stereo"]))[0]
    plain2 = AudioWindowDataset(SR, 2, 0.5, random_offset=True, seed=1)
    cached2 = AudioWindowDataset(SR, 2, 0.5, random_offset=True, seed=1, decode_cache_mb=16)
    a, b = plain2._load_raw(stereo, random.Random(0)), cached2._load_raw(stereo, random.Random(0))
    assert a.shape == b.shape == (2, 12000)
    mid = slice(600, -600)  # away from the window edges, where the two resamplings differ most
    assert np.abs(a[:, mid] - b[:, mid]).max() < 0.02
    assert np.sqrt((b[0] ** 2).mean()) > 1.5 * np.sqrt((b[1] ** 2).mean())

    # a compressed file: decoded once for all its windows
    ogg = tmp_path / "tone.ogg"
    sf.write(ogg, _tone(3.0, SR, 330.0), SR, format="OGG", subtype="VORBIS")
    cut = list(load_cuts(_write_cuts([ogg], tmp_path / "ogg.jsonl.gz")))[0]
    dataset = AudioWindowDataset(SR, 1, 0.25, random_offset=True, decode_cache_mb=16)
    calls = []
    original = DecodedAudioCache.recording

    def counting(self, window, sample_rate):
        calls.append(self._items.get((window.recording.id, sample_rate)) is None)
        return original(self, window, sample_rate)

    DecodedAudioCache.recording = counting
    try:
        windows = [dataset._load_raw(cut, random.Random(i)) for i in range(5)]
    finally:
        DecodedAudioCache.recording = original
    assert calls == [True, False, False, False, False]  # one decode, four hits
    reference = AudioWindowDataset(SR, 1, 0.25, random_offset=True)._load_raw(cut, random.Random(3))
    np.testing.assert_allclose(windows[3], reference, atol=1e-6)


def test_decode_cache_evicts_the_oldest_and_skips_what_does_not_fit(corpus: dict[str, Path]) -> None:
    from datamodules.dataset import DecodedAudioCache

    cuts = [cut.resample(SR) for cut in load_cuts(corpus["train"])]
    one = 2 * SR * 4  # bytes of one decoded 2 s mono file
    cache = DecodedAudioCache(max_bytes=2 * one)
    for cut in cuts[:3]:
        assert cache.recording(cut, SR) is not None
    assert [key[0] for key in cache._items] == [cuts[1].recording.id, cuts[2].recording.id]
    tiny = DecodedAudioCache(max_bytes=one // 2)
    assert tiny.recording(cuts[0], SR) is None and len(tiny) == 0  # loaded window by window instead
    dataset = AudioWindowDataset(SR, 1, 0.25, random_offset=True, decode_cache_mb=0.01)  # 10 kB < one file
    assert dataset._load_raw(cuts[0]).shape == (1, 6000)
    with pytest.raises(ValueError, match="decode_cache_mb"):
        AudioWindowDataset(SR, 1, 0.25, random_offset=True, decode_cache_mb=-1)
    with pytest.raises(ValueError, match="decode_cache_mb"):
        LhotseAudioDataModule(train_cuts=str(corpus["train"]), decode_cache_mb=-1)
    dm = LhotseAudioDataModule(
        train_cuts=str(corpus["train"]),
        val_cuts=str(corpus["val"]),
        batch_size=3,
        segment_seconds=0.5,
        decode_cache_mb=8,
    )
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.dataset.cache.max_bytes == val.dataset.cache.max_bytes == 8 * 2**20
    assert next(iter(train)).shape == (3, 1, 12000) and len(train.dataset.cache) == 3


def test_decode_cache_drops_unreadable_files_with_a_warning(tmp_path: Path) -> None:
    paths = [tmp_path / f"ok_{i}.wav" for i in range(2)]
    for i, path in enumerate(paths):
        sf.write(path, _tone(1.0, SR, 300.0 + 100 * i), SR, subtype="FLOAT")
    manifest = _write_cuts(paths, tmp_path / "cuts.jsonl.gz")
    paths[1].write_text("this file was overwritten after the manifest was made")
    dataset = AudioWindowDataset(SR, 1, segment_seconds=0.5, random_offset=True, decode_cache_mb=16)
    with pytest.warns(RuntimeWarning, match="ok_1.wav"):
        batch = dataset[load_cuts(manifest)]
    assert batch.shape == (1, 1, 12000)
