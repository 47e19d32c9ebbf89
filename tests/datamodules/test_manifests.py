"""Scanning, probing, splitting and writing manifests (datamodules/manifests.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSet
from lhotse.audio import AudioSource

from datamodules.manifests import (
    ProbeSettings,
    load_cuts,
    prepare_main,
    prepare_manifests,
    probe_audio_dir,
    scan_audio_dir,
    split_recordings,
)

SR = 16000


def _fake_recordings(n: int, start: int = 0) -> RecordingSet:
    """Recordings that need no file: splitting only looks at ids."""
    return RecordingSet.from_recordings(
        Recording(
            id=f"rec_{i:04d}",
            sources=[AudioSource(type="file", channels=[0], source=f"rec_{i:04d}.wav")],
            sampling_rate=SR,
            num_samples=SR,
            duration=1.0,
        )
        for i in range(start, start + n)
    )


def _split_ids(splits: dict[str, RecordingSet]) -> dict[str, set[str]]:
    return {name: {r.id for r in recs} for name, recs in splits.items()}


def _write_good(path: Path, seconds: float = 0.5, channels: int = 1, freq: float = 440.0) -> None:
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([tone] * channels, axis=1), SR)


def _plant_corpus(root: Path) -> tuple[set[str], set[str]]:
    """A folder with good files and planted bad ones; returns (good names, bad names)."""
    (root / "sub dir").mkdir(parents=True)
    _write_good(root / "a.wav")
    _write_good(root / "b.flac", channels=2, freq=330.0)
    _write_good(root / "sub dir" / "c d.wav", freq=550.0)
    _write_good(root / "sub dir" / "e.wav", freq=660.0)
    (root / "notes.txt").write_text("not audio, and not picked up: wrong extension")
    (root / "empty.wav").write_bytes(b"")  # zero-length file
    (root / "text.wav").write_text("hello, I am a text file\n" * 50)  # not audio at all
    sf.write(root / "zeros.wav", np.zeros(SR, dtype=np.float32), SR)  # all silent
    nan = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    nan[1234] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")  # NaN sample
    good = {"a.wav", "b.flac", "c d.wav", "e.wav"}
    bad = {"empty.wav", "text.wav", "zeros.wav", "nan.wav"}
    return good, bad


def test_split_is_deterministic_and_stable_when_files_are_added() -> None:
    recs = _fake_recordings(300)
    first = _split_ids(split_recordings(recs, 0.1, 0.1, seed=3))
    assert first == _split_ids(split_recordings(recs, 0.1, 0.1, seed=3))
    assert set.union(*first.values()) == {r.id for r in recs}
    assert sum(len(ids) for ids in first.values()) == len(recs)  # disjoint
    assert 15 <= len(first["val"]) <= 45 and 15 <= len(first["test"]) <= 45

    grown = _split_ids(split_recordings(_fake_recordings(400), 0.1, 0.1, seed=3))
    for name, ids in first.items():
        assert ids <= grown[name], f"adding files moved recordings out of {name}"

    other_seed = _split_ids(split_recordings(recs, 0.1, 0.1, seed=4))
    assert other_seed["val"] != first["val"]


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_every_split_is_non_empty_from_three_recordings(n: int) -> None:
    for seed in range(20):
        splits = _split_ids(split_recordings(_fake_recordings(n), 0.1, 0.1, seed=seed))
        assert all(splits[name] for name in ("train", "val", "test")), (n, seed, splits)
        assert sum(len(ids) for ids in splits.values()) == n


def test_zero_fractions_keep_everything_in_train() -> None:
    splits = split_recordings(_fake_recordings(10), 0.0, 0.0, seed=0)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (10, 0, 0)


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        split_recordings(_fake_recordings(5), 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_recordings(_fake_recordings(5), 0.1, -0.1, seed=0)


def test_scan_reports_planted_bad_files_without_raising(tmp_path: Path) -> None:
    good, bad = _plant_corpus(tmp_path)
    recordings, problems = scan_audio_dir(tmp_path, num_workers=2)

    assert {Path(p.path).name for p in problems} == bad
    kinds = {Path(p.path).name: p.problem for p in problems}
    assert kinds == {
        "empty.wav": "zero_length",
        "text.wav": "unreadable",
        "zeros.wav": "silent",
        "nan.wav": "non_finite",
    }
    assert all(p.detail for p in problems)

    assert {Path(r.sources[0].source).name for r in recordings} == good
    assert sorted(r.id for r in recordings) == ["a", "b", "sub_dir__c_d", "sub_dir__e"]
    assert all(Path(r.sources[0].source).is_absolute() for r in recordings)
    assert recordings["b"].num_channels == 2


def test_scan_gives_distinct_ids_to_same_named_files(tmp_path: Path) -> None:
    _write_good(tmp_path / "x.wav")
    _write_good(tmp_path / "x.flac")
    recordings, problems = scan_audio_dir(tmp_path)
    assert not problems
    assert sorted(r.id for r in recordings) == ["x", "x_wav"]


def test_scan_reads_a_header_only_wav_as_zero_length(tmp_path: Path) -> None:
    sf.write(tmp_path / "header_only.wav", np.zeros((0,), dtype=np.float32), SR)
    recordings, problems = scan_audio_dir(tmp_path)
    assert len(recordings) == 0
    assert [(Path(p.path).name, p.problem) for p in problems] == [("header_only.wav", "zero_length")]


def test_prepare_manifests_writes_splits_and_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, bad = _plant_corpus(tmp_path / "audio")
    paths = prepare_manifests(tmp_path / "audio", tmp_path / "out", val_fraction=0.2, test_fraction=0.2, seed=1)

    assert set(paths) == {"train", "val", "test"}
    out = tmp_path / "out"
    for name in ("train", "val", "test"):
        assert paths[name] == out / f"cuts_{name}.jsonl.gz"
        assert (out / f"recordings_{name}.jsonl.gz").is_file()
    cuts = {name: load_cuts(path) for name, path in paths.items()}
    assert all(len(c) > 0 for c in cuts.values())
    all_ids = [cut.id for c in cuts.values() for cut in c]
    assert sorted(all_ids) == ["a", "b", "sub_dir__c_d", "sub_dir__e"]  # cut id = recording id
    assert all(cut.id == cut.recording_id for c in cuts.values() for cut in c)

    problems = json.loads((out / "problems.json").read_text())
    assert {Path(p["path"]).name for p in problems} == bad
    assert set(problems[0]) == {"path", "problem", "detail"}
    printed = capsys.readouterr().out
    assert "4 file(s) skipped" in printed and "text.wav" in printed


def test_prepare_takes_a_folder_of_links_to_audio_elsewhere(tmp_path: Path) -> None:
    """Links (a common way to assemble a corpus) keep the names and folders they have."""
    (tmp_path / "store").mkdir()
    _write_good(tmp_path / "store" / "x1.wav")
    _write_good(tmp_path / "store" / "x2.wav", freq=330.0)
    (tmp_path / "audio" / "music").mkdir(parents=True)
    (tmp_path / "audio" / "first.wav").symlink_to(tmp_path / "store" / "x1.wav")
    (tmp_path / "audio" / "music" / "second.wav").symlink_to(tmp_path / "store" / "x2.wav")
    paths = prepare_manifests(tmp_path / "audio", tmp_path / "out", val_fraction=0.0, test_fraction=0.0, seed=1)
    cuts = {cut.id: cut for cut in load_cuts(paths["train"])}
    assert sorted(cuts) == ["first", "music__second"]
    assert cuts["music__second"].custom["domain"] == "music"  # from the link's folder
    assert np.allclose(cuts["first"].load_audio(), sf.read(tmp_path / "store" / "x1.wav", always_2d=True)[0].T)


def test_load_cuts_reads_an_empty_manifest(tmp_path: Path) -> None:
    CutSet().to_file(tmp_path / "empty.jsonl.gz")
    assert len(load_cuts(tmp_path / "empty.jsonl.gz")) == 0
    with pytest.raises(FileNotFoundError, match="missing.jsonl.gz"):
        load_cuts(tmp_path / "missing.jsonl.gz")


def test_prepare_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_dir"
    assert prepare_main(["--audio_dir", str(missing), "--out_dir", str(tmp_path / "m")]) == 2
    assert str(missing) in capsys.readouterr().err

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "broken.wav").write_text("nope")
    assert prepare_main(["--audio_dir", str(only_bad), "--out_dir", str(tmp_path / "m")]) == 2
    assert "no usable audio" in capsys.readouterr().err

    good_dir = tmp_path / "good"
    good_dir.mkdir()
    for i in range(3):
        _write_good(good_dir / f"f{i}.wav", freq=200.0 + 100 * i)
    argv = ["--audio_dir", str(good_dir), "--out_dir", str(tmp_path / "m")]
    argv += ["--seed", "2", "--val_fraction", "0.3"]
    assert prepare_main(argv) == 0
    assert "cuts_train.jsonl.gz" in capsys.readouterr().out
    for name in ("train", "val", "test"):
        assert len(load_cuts(tmp_path / "m" / f"cuts_{name}.jsonl.gz")) == 1


def _noise(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((int(seconds * sr), channels))).astype(np.float32)


def test_probe_reports_truncated_low_rate_and_channel_mismatch(tmp_path: Path) -> None:
    sf.write(tmp_path / "good.wav", _noise(0.5, 44100, 2), 44100)
    sf.write(tmp_path / "good.mp3", _noise(0.5, 44100, 2), 44100, format="MP3")  # libsndfile >= 1.1
    sf.write(tmp_path / "mono.wav", _noise(0.5, 44100, 1), 44100)
    sf.write(tmp_path / "low.wav", _noise(0.5, 16000, 2), 16000)
    full = tmp_path.parent / f"{tmp_path.name}_full.tmp"  # outside the folder: audio is found by content
    for name in ("cut.wav", "cut.flac"):
        sf.write(full, _noise(1.0, 44100, 2), 44100, format=name.split(".")[1].upper())
        data = full.read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])  # the header promises the whole file
    settings = ProbeSettings(min_sample_rate=44100, channels=2)
    probed, problems = probe_audio_dir(tmp_path, settings=settings)
    kinds = {Path(p.path).name: p.problem for p in problems}
    assert kinds == {
        "cut.wav": "truncated",
        "cut.flac": "truncated",
        "mono.wav": "channel_mismatch",
        "low.wav": "low_sample_rate",
    }
    assert sorted(Path(p.recording.sources[0].source).name for p in probed) == ["good.mp3", "good.wav"]
    # without expectations, mono and 16 kHz files are fine
    _, problems = probe_audio_dir(tmp_path)
    assert {Path(p.path).name for p in problems} == {"cut.wav", "cut.flac"}


def test_workers_give_the_same_result_in_path_order(tmp_path: Path) -> None:
    _plant_corpus(tmp_path)
    one = probe_audio_dir(tmp_path, num_workers=1)
    two = probe_audio_dir(tmp_path, num_workers=2)
    assert [p.recording.id for p in one[0]] == [p.recording.id for p in two[0]]
    assert [p.high_band_db for p in one[0]] == [p.high_band_db for p in two[0]]
    assert one[1] == two[1]


def test_domain_full_band_and_sidecar_supervisions(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    (audio / "speech").mkdir(parents=True)
    (audio / "music").mkdir()
    _write_good(audio / "speech" / "talk.wav", seconds=1.0)  # a 440 Hz tone: nothing near Nyquist
    (audio / "speech" / "talk.txt").write_text("hello  world\n")
    sf.write(audio / "music" / "song.wav", _noise(1.0, SR), SR)  # white noise: full-band
    (audio / "music" / "song.lrc").write_text("[ar:someone]\n[00:00.20]first line\n[00:00.60]second\n[00:05.00]late\n")
    sf.write(audio / "other.wav", _noise(1.0, 8000), 8000)  # 8 kHz file for a 16 kHz model
    paths = prepare_manifests(audio, tmp_path / "m", 0.0, 0.0, min_sample_rate=None)
    cuts = {c.id: c for c in load_cuts(paths["train"])}
    assert {k: (c.custom["domain"], c.custom["full_band"]) for k, c in cuts.items()} == {
        "speech__talk": ("speech", False),
        "music__song": ("music", True),
        "other": ("general", True),  # full-band against its own rate without --sample_rate
    }
    assert cuts["speech__talk"].custom["high_band_db"] < -60 < cuts["music__song"].custom["high_band_db"]
    (talk,) = cuts["speech__talk"].supervisions
    assert (talk.start, talk.duration, talk.text, talk.custom["kind"]) == (0.0, 1.0, "hello  world", "transcript")
    lyrics = [(s.start, s.duration, s.text) for s in cuts["music__song"].supervisions]
    assert lyrics == [(0.2, 0.4, "first line"), (0.6, 0.4, "second")]  # the 5 s line is past the end
    assert len(SupervisionSet.from_file(tmp_path / "m" / "supervisions_train.jsonl.gz")) == 3

    at_16k = prepare_manifests(audio, tmp_path / "m16", 0.0, 0.0, min_sample_rate=SR, domain="music")
    cuts16 = {c.id: c for c in load_cuts(at_16k["train"])}
    assert set(cuts16) == {"speech__talk", "music__song"}  # other.wav: low_sample_rate
    assert {c.custom["domain"] for c in cuts16.values()} == {"music"}
    problems = json.loads((tmp_path / "m16" / "problems.json").read_text())
    assert [(Path(p["path"]).name, p["problem"]) for p in problems] == [("other.wav", "low_sample_rate")]


def test_domain_from_a_folder_name_holding_the_word(tmp_path: Path) -> None:
    """A top folder such as ``speech16`` or ``LibriSpeech`` is speech (it was ``general``), and so are
    the files directly in an ``--audio_dir`` named like that; two domain words name none."""
    from datamodules.manifests import domain_of, folder_domain

    assert [folder_domain(n) for n in ("speech16", "LibriSpeech", "Music_48k", "general", "sfx")] == [
        "speech",
        "speech",
        "music",
        "general",
        None,
    ]
    assert folder_domain("speech_and_music") is None
    corpus = tmp_path / "corpus"
    assert domain_of(corpus / "speech16" / "a.wav", corpus, "auto") == "speech"
    assert domain_of(corpus / "musicdb" / "x" / "a.wav", corpus, "auto") == "music"
    assert domain_of(corpus / "a.wav", corpus, "auto") == "general"
    assert domain_of(tmp_path / "speech16" / "a.wav", tmp_path / "speech16", "auto") == "speech"
    assert domain_of(corpus / "speech16" / "a.wav", corpus, "music") == "music"
    # through prepare
    (corpus / "speech16").mkdir(parents=True)
    _write_good(corpus / "speech16" / "talk.wav", seconds=1.0)
    paths = prepare_manifests(corpus, tmp_path / "m", 0.0, 0.0, min_sample_rate=None)
    assert [c.custom["domain"] for c in load_cuts(paths["train"])] == ["speech"]


def test_shar_export_keeps_cuts_and_audio(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for i in range(5):
        _write_good(tmp_path / "a" / f"f{i}.wav", freq=200.0 + 50 * i)
    argv = ["--audio_dir", str(tmp_path / "a"), "--out_dir", str(tmp_path / "m"), "--val_fraction", "0"]
    argv += ["--test_fraction", "0", "--shar_dir", str(tmp_path / "shar"), "--shard_size", "2", "--num_workers", "2"]
    assert prepare_main(argv) == 0
    shards = sorted((tmp_path / "shar" / "train").glob("cuts.*.jsonl.gz"))
    assert len(shards) == 3 and len(list((tmp_path / "shar" / "train").glob("recording.*.tar"))) == 3
    streamed = {c.id: c for c in CutSet.from_shar(in_dir=tmp_path / "shar" / "train")}
    original = {c.id: c for c in load_cuts(tmp_path / "m" / "cuts_train.jsonl.gz")}
    assert set(streamed) == set(original)
    for cut_id, cut in streamed.items():
        assert cut.custom["domain"] == "general"
        assert np.allclose(cut.load_audio(), original[cut_id].load_audio(), atol=1e-4)  # FLAC, 16 bit
