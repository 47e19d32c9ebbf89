"""Data at scale: formats found by content, group-wise splits, the Ogg header miscount, segment
shards and the sequential shard reader (datamodules/manifests.py, datamodules/shards.py)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.manifests import group_key, load_cuts, prepare_manifests, probe_audio_dir

SR = 16000


def _tone(seconds: float, freq: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.stack([0.3 * np.sin(2 * np.pi * freq * t)] * channels, axis=1).astype(np.float32)


def test_opus_and_files_without_an_audio_extension_are_found_by_content(tmp_path: Path) -> None:
    sf.write(tmp_path / "song.opus", _tone(0.5, 440, 48000, 2), 48000, format="OGG", subtype="OPUS")
    sf.write(tmp_path / "take.data", _tone(0.5, 330), SR, format="WAV")  # audio, unknown extension
    (tmp_path / "COPYRIGHT").write_text("licence text, not audio\n" * 20)
    (tmp_path / "notes.md").write_text("# notes\n")
    probed, problems = probe_audio_dir(tmp_path)
    assert not problems
    found = {Path(p.recording.sources[0].source).name: p.recording for p in probed}
    assert set(found) == {"song.opus", "take.data"}
    assert found["song.opus"].sampling_rate == 48000 and found["song.opus"].num_channels == 2
    assert abs(found["song.opus"].duration - 0.5) < 0.03


def test_group_regex_keeps_every_group_on_one_side_of_the_split(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    pieces = [f"track{i}" for i in range(8)]
    for i, piece in enumerate(pieces):  # every piece in two albums, one version "_enhanced"
        sf.write(audio / f"original__{piece}.wav", _tone(0.2, 200 + 30 * i), SR)
        sf.write(audio / f"remaster__{piece}_enhanced.wav", _tone(0.2, 205 + 30 * i), SR)
    sf.write(audio / "menu.wav", _tone(0.2, 900), SR)  # no album: a group of its own unless paired
    sf.write(audio / "remaster__menu_enhanced.wav", _tone(0.2, 950), SR)
    regex = r"(?:.*__)?(.+?)(?:_enhanced)?\.[^.]+$"
    assert group_key("remaster__track3_enhanced.wav", regex) == group_key("original__track3.wav", regex) == "track3"
    assert group_key("menu.wav", regex) == group_key("remaster__menu_enhanced.wav", regex) == "menu"
    assert group_key("x/y.wav", r"^([^/]+)/") == "x" and group_key("y.wav", r"^([^/]+)/") is None
    for seed in range(4):
        paths = prepare_manifests(audio, tmp_path / f"m{seed}", 0.25, 0.25, seed=seed, group_regex=regex)
        side = {}
        for split, path in paths.items():
            for cut in load_cuts(path):
                assert side.setdefault(cut.custom["group"], split) == split, (seed, cut.id)
        assert len(side) == 9 and all(split in side.values() for split in ("train", "val", "test"))
    with pytest.raises(ValueError, match="not a regular expression"):
        prepare_manifests(audio, tmp_path / "bad", group_regex="(unclosed")


def _ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, no reflection, initial 0)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        crc &= 0xFFFFFFFF
    return crc


def _lower_first_audio_granule(ogg: bytes, frames: int) -> bytes:
    """The third Ogg page (the first audio page of a Vorbis stream) with its granule position
    lowered by ``frames``, as encoders that trim the stream start write it."""
    buf, start = bytearray(ogg), 0
    for _ in range(2):
        start += 27 + buf[start + 26] + sum(buf[start + 27 : start + 27 + buf[start + 26]])
    size = 27 + buf[start + 26] + sum(buf[start + 27 : start + 27 + buf[start + 26]])
    (granule,) = struct.unpack_from("<q", buf, start + 6)
    struct.pack_into("<q", buf, start + 6, granule - frames)
    struct.pack_into("<I", buf, start + 22, 0)
    struct.pack_into("<I", buf, start + 22, _ogg_crc(bytes(buf[start : start + size])))
    return bytes(buf)


def test_ogg_whose_header_counts_more_frames_than_it_decodes(tmp_path: Path) -> None:
    """libsndfile counts a Vorbis stream whose first audio page has a lowered granule position
    (encoder start trimming) as longer than it decodes; prepare records the decoded length."""
    noise = 0.3 * np.random.default_rng(0).standard_normal(3 * SR)
    raw = io.BytesIO()
    sf.write(raw, noise, SR, format="OGG", subtype="VORBIS")
    path = tmp_path / "start_trimmed.ogg"
    path.write_bytes(_lower_first_audio_granule(raw.getvalue(), 104))
    header, decoded = sf.info(str(path)).frames, len(sf.read(str(path))[0])
    assert header - decoded == 104  # the miscount this test is about
    probed, problems = probe_audio_dir(tmp_path)
    assert not problems and probed[0].recording.num_samples == decoded


MUSIC_OGG = Path(__file__).resolve().parents[3] / "shared" / "data" / "music" / "hr-savino-caribbean.ogg"


@pytest.mark.skipif(not MUSIC_OGG.is_file(), reason="needs the project's Ogg Vorbis music track")
def test_lhotse_window_at_the_end_of_a_miscounted_ogg_fails_and_the_probed_length_fixes_it(tmp_path: Path) -> None:
    """The lhotse Ogg window failure: this track's first audio page has granule position -104, so
    libsndfile (and lhotse's manifest) count 104 frames more than it decodes; a window reaching
    into them reads nothing there and lhotse fails padding (or resampling) the short read."""
    from lhotse import Recording

    header_cut = Recording.from_file(MUSIC_OGG).to_cut()
    with pytest.raises(ValueError, match="can't extend empty axis"):
        header_cut.truncate(offset=(header_cut.num_samples - 50) / 44100, duration=40 / 44100).load_audio()
    from datamodules.manifests import ProbeSettings, _probe

    item = _probe(MUSIC_OGG, "caribbean", ProbeSettings())
    assert header_cut.num_samples - item.recording.num_samples == 104
    cut = item.recording.to_cut().resample(24000)
    window = cut.truncate(offset=(cut.num_samples - 15360) / 24000, duration=0.64).load_audio()
    assert window.shape == (2, 15360) and np.abs(window[:, -100:]).max() > 0


# ------------------------------------------------------------------------------------ shards
@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """7 recordings of 1.1-2.3 s (16 kHz stereo tones; one will be deleted before sharding) ->
    manifests (all in train) -> segment shards of 0.5 s at 8 kHz mono, about 4 segments a shard."""
    root = tmp_path_factory.mktemp("shards")
    (root / "audio").mkdir()
    for i in range(7):
        sf.write(root / "audio" / f"r{i}.wav", _tone(1.1 + 0.2 * i, 200 + 50 * i, SR, 2), SR)
    paths = prepare_manifests(root / "audio", root / "manifests", 0.0, 0.0)
    (root / "audio" / "r6.wav").unlink()  # decodes no more: named and left out
    return {"root": root, "train": paths["train"]}


def _export(sharded: dict[str, Path], **kwargs: object):
    from datamodules.shards import export_shar

    args = {"shard_size": 4, "segment_seconds": 0.5, "sample_rate": 8000, "channels": 1, "num_workers": 1}
    return export_shar(load_cuts(sharded["train"]), sharded["root"] / "shar", **{**args, **kwargs})


def test_shards_hold_fixed_length_segments_of_every_readable_recording_and_resume(sharded: dict[str, Path]) -> None:
    from lhotse import CutSet

    report = _export(sharded)
    assert [Path(s).name for s, _ in report.failed] == ["r6.wav"]
    shar = sharded["root"] / "shar"
    manifests = sorted(shar.glob("cuts.*.jsonl.gz"))
    assert len(manifests) == report.written >= 3 and report.skipped == 0
    segments = list(CutSet.from_shar(in_dir=shar))
    assert len(segments) == report.segments
    assert {c.custom["source"] for c in segments} == {f"r{i}" for i in range(6)}
    original = {c.id: c for c in load_cuts(sharded["train"])}
    for cut in segments:
        assert cut.sampling_rate == 8000 and cut.num_samples == 4000  # every segment full length
        audio = cut.load_audio()
        assert audio.shape == (1, 4000)
        source = original[cut.custom["source"]].resample(8000)
        expected = source.truncate(offset=cut.custom["source_start"], duration=0.5).load_audio().mean(axis=0)
        assert np.abs(audio[0] - expected)[16:-16].max() < 2e-3  # FLAC, 16 bit (edges: resampled apart)
    # a second run skips the finished shards; one lost shard (a killed run) is written again
    again = _export(sharded)
    assert (again.written, again.skipped) == (0, len(manifests))
    manifests[1].unlink()
    again = _export(sharded)
    assert (again.written, again.skipped) == (1, len(manifests) - 1) and manifests[1].is_file()
    with pytest.raises(ValueError, match="another corpus or other settings"):
        _export(sharded, segment_seconds=0.25)


def test_shard_assignment_is_disjoint_across_ranks_and_workers() -> None:
    from datamodules.shards import shard_assignment

    seen = [shard_assignment(11, 2, r, 3, w) for r in range(2) for w in range(3)]
    assert sorted(i for s in seen for i in s) == list(range(11)) and all(seen)
    assert set(shard_assignment(11, 2, 0, 3, 0)) == {0, 6}
    with pytest.raises(ValueError, match="fewer|needs at least one"):
        shard_assignment(5, 2, 0, 3, 0)


def _stream(shar: Path, **kwargs: object):
    from datamodules.shards import ShardWindowStream

    args = {"sample_rate": 8000, "channels": 1, "segment_seconds": 0.125, "batch_size": 3, "buffer_mb": 16.1}
    return ShardWindowStream(shar, **{**args, **kwargs})


def _batches(stream, n: int, workers: int = 0) -> list:
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_shard_stream_resumes_exactly_and_bounds_its_buffer(sharded: dict[str, Path]) -> None:
    _export(sharded)
    shar = sharded["root"] / "shar"
    stream = _stream(shar)
    assigned, plan = stream.worker_plan(1, 0)
    capacity = plan.capacity
    # 16.1 MB less the reader's 16, two segments of 4000 float32 and two batches of 3 x 1000: 3 segments
    assert capacity == int((16.1 * 2**20 - 16 * 2**20 - 2 * 4000 * 4 - 2 * 3 * 1000 * 4) // (4000 * 4)) == 3
    for _ in range(200):
        plan.draw()
        assert len(plan.buffer) <= capacity
    uninterrupted = _batches(stream, 12)
    assert all(b.shape == (3, 1, 1000) for b in uninterrupted)
    assert len({b.numpy().tobytes() for b in uninterrupted}) == 12  # windows differ
    resumed = _stream(shar)
    resumed.start_at(5)
    assert all(torch.equal(a, b) for a, b in zip(_batches(resumed, 7), uninterrupted[5:]))
    # two loader workers: worker k % 2 yields batch k; resume after 5 of them
    two = _batches(_stream(shar), 8, workers=2)
    resumed = _stream(shar)
    resumed.start_at(5)
    assert all(torch.equal(a, b) for a, b in zip(_batches(resumed, 3, workers=2), two[5:]))
    assert not any(torch.equal(a, b) for a, b in zip(two[:4], uninterrupted[:4]))  # another split, other batches


def test_two_ranks_read_disjoint_shards(sharded: dict[str, Path]) -> None:
    _export(sharded)
    shar = sharded["root"] / "shar"
    sources = []
    for rank in (0, 1):
        stream = _stream(shar, world_size=2, rank=rank)
        assigned, plan = stream.worker_plan(1, 0)
        refs = [plan.draw()[1] for _ in range(60)]
        sources.append({stream.shards[assigned[ref[1]]].name for ref in refs})
    assert sources[0] and sources[1] and not sources[0] & sources[1]


def test_datamodule_reads_train_shar_sequentially_and_resumes_from_its_state(sharded: dict[str, Path]) -> None:
    from datamodules.lhotse_audio import LhotseAudioDataModule

    _export(sharded)

    def make() -> LhotseAudioDataModule:
        dm = LhotseAudioDataModule(
            train_shar=str(sharded["root"] / "shar"), sample_rate=8000, batch_size=2, segment_seconds=0.125
        )
        return dm

    dm = make()
    loader = dm.train_dataloader()
    it = iter(loader)
    uninterrupted = [next(it) for _ in range(6)]
    state = {"mode": "shards", "epoch": 0, "batches": 4, "world_size": 1, "seed": 0, "num_workers": 0}
    resumed = make()
    resumed.load_state_dict({"train_sampler": state})
    it = iter(resumed.train_dataloader())
    assert torch.equal(next(it), uninterrupted[4]) and torch.equal(next(it), uninterrupted[5])
    assert resumed.state_dict()["train_sampler"]["mode"] == "shards"
    wrong = make()
    wrong.load_state_dict({"train_sampler": {**state, "num_workers": 2}})
    with pytest.raises(ValueError, match="num_workers"):
        wrong.train_dataloader()


def test_lightning_kill_and_resume_on_shards_trains_on_the_uninterrupted_batches(
    sharded: dict[str, Path], tmp_path: Path
) -> None:
    import lightning.pytorch as pl

    from datamodules.lhotse_audio import LhotseAudioDataModule

    _export(sharded)

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.seen: list[bytes] = []

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            self.seen.append(batch.numpy().tobytes())
            return (self.scale * batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def fit(max_steps: int, run: str, ckpt_path: str | None = None) -> Recorder:
        dm = LhotseAudioDataModule(
            train_shar=str(sharded["root"] / "shar"),
            sample_rate=8000,
            batch_size=2,
            segment_seconds=0.125,
            num_workers=1,
        )
        model = Recorder()
        trainer = pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            use_distributed_sampler=False,
            callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / run, save_last=True, every_n_train_steps=3)],
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model

    uninterrupted = fit(7, "whole")
    first = fit(3, "killed")  # the workers prefetch ahead; the checkpoint holds the 3 batches trained on
    assert first.seen == uninterrupted.seen[:3]
    resumed = fit(7, "resumed", ckpt_path=str(tmp_path / "killed" / "last.ckpt"))
    assert resumed.seen == uninterrupted.seen[3:] and len(set(uninterrupted.seen)) == 7


def test_two_rank_ddp_kill_and_resume_on_shards_trains_each_rank_on_its_uninterrupted_batches(ddp_fits) -> None:
    folder = ddp_fits.part("shard_resume")
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for seen in ranks:
        assert len(seen["whole"]) == 7 and len(set(seen["whole"])) == 7
        assert seen["killed"] == seen["whole"][:3]
        assert seen["resumed"] == seen["whole"][3:]
    assert not set(ranks[0]["whole"]) & set(ranks[1]["whole"])  # each rank reads its own shards
