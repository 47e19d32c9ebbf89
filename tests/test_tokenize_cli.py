"""`codecplatform tokenize` on tiny checkpoints: codes equal per-file ``Codec.encode`` (batched and
chunked items too), stored as lhotse arrays beside the cuts; resume skips finished items; a corrupt
file is named in one line while the others are tokenized; bad arguments fail before any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet
from test_encode_decode_cli import save_tiny_checkpoint, write_audio

from codecplatform import tokenize_corpus
from codecplatform.cli import cli_main
from codecplatform.models.codec import Codec
from codecplatform.tokenize_corpus import CUTS_FILE, Item, plan_batches


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {name: _saved(name, folder) for name in ("encodec24", "encodec48", "dac")}


def _saved(name: str, folder: Path) -> Path:
    save_tiny_checkpoint(name, folder / f"{name}.ckpt")
    return folder / f"{name}.ckpt"


def corpus(folder: Path, codec: Codec, seconds: list[float]) -> dict[str, np.ndarray]:
    """FLOAT wavs at the codec's rate (read back exactly): id -> (T, C) audio."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        f"item{i}": write_audio(folder / f"item{i}.wav", codec.sample_rate, codec.channels, s, seed=i)
        for i, s in enumerate(seconds)
    }


def alone(codec: Codec, audio: np.ndarray, n_q: int | None = None) -> np.ndarray:
    """Codes (frames, K) of ``Codec.encode`` on the whole item alone."""
    return codec.encode(torch.from_numpy(audio.T.copy())[None], n_q=n_q).codes[0].numpy().T


def _ids(decoded) -> list[str]:
    return sorted(d.item.id for d in (decoded if isinstance(decoded, list) else [decoded]))


def run(*args: object) -> int:
    return cli_main(["tokenize", *(str(a) for a in args)])


def tokenized(out: Path) -> dict[str, np.ndarray]:
    cuts = CutSet.from_file(out / CUTS_FILE)
    return {cut.id: cut.codes.load() for cut in cuts}


@pytest.mark.parametrize("name", ["encodec24", "encodec48", "dac"])
def test_codes_equal_codec_encode_of_each_file(name, checkpoints, tmp_path, capsys, monkeypatch):
    codec = Codec.from_checkpoint(checkpoints[name]).eval()
    # 3 short items share one call (lengths differ, partial last frames); two longer than a chunk
    # (chunked: as concurrent streams by a codec that streams, else one by one)
    audio = corpus(tmp_path / "audio", codec, [0.06, 0.05, 0.04, 0.3, 0.25])
    calls = []
    for what in ("_code_together", "_code_one", "_code_streams"):
        real = getattr(tokenize_corpus, what)
        spy = lambda codec, d, plan, real=real, what=what: calls.append((what, _ids(d))) or real(codec, d, plan)  # noqa: E731
        monkeypatch.setattr(tokenize_corpus, what, spy)
    args = ["--checkpoint", checkpoints[name], "--audio_dir", tmp_path / "audio", "--out", tmp_path / "out"]
    options = ["--chunk_seconds", 0.2, "--batch_seconds", 0.2, "--max_batch", 8]  # DAC: the encoder's reach
    assert run(*args, *options, "--num_workers", 0) == 0
    assert "tokenized 5 items" in capsys.readouterr().out
    long = [("_code_one", ["item3"]), ("_code_one", ["item4"])]
    if codec.can_stream:
        long = [("_code_streams", ["item3", "item4"])]
    assert sorted(calls) == sorted(long + [("_code_together", ["item0", "item1", "item2"])])
    codes = tokenized(tmp_path / "out")
    assert sorted(codes) == sorted(audio)
    for item_id, x in audio.items():
        expected = alone(codec, x)
        assert codes[item_id].dtype == np.int16 and codes[item_id].shape == expected.shape
        if name == "encodec24" and item_id in ("item3", "item4"):  # streamed: a partial last frame may differ
            np.testing.assert_array_equal(codes[item_id][:-1], expected[:-1])
        else:
            np.testing.assert_array_equal(codes[item_id], expected, err_msg=item_id)
    cuts = CutSet.from_file(tmp_path / "out" / CUTS_FILE)
    for cut in cuts:
        assert cut.codes_samples == audio[cut.id].shape[0]
        assert (cut.custom.get("codes_scale") is not None) == codec.normalize
        # lhotse's own loader: round(duration x frame rate) frames, the partial last one dropped
        assert np.array_equal(cut.load_codes(), codes[cut.id][: cut.load_codes().shape[0]])
    settings = json.loads((tmp_path / "out" / "tokenize.json").read_text())
    assert settings["n_q"] == codec.n_q and settings["sample_rate"] == codec.sample_rate


def test_batches_are_packed_by_length():
    items = [Item(f"i{k}", None, f"i{k}", s) for k, s in enumerate([1.0, 9.0, 2.0, 2.5, 30.0, 1.0, 3.0])]
    batches = plan_batches(items, chunk_seconds=10.0, batch_seconds=8.0, max_batch=3)
    assert [[i.seconds for i in b] for b in batches] == [[30.0], [9.0], [3.0, 2.5], [2.0, 1.0, 1.0]]
    batches = plan_batches(items, chunk_seconds=5.0, batch_seconds=8.0, max_batch=3)  # 9 s: chunked, alone
    assert [[i.seconds for i in b] for b in batches] == [[30.0], [9.0], [3.0, 2.5], [2.0, 1.0, 1.0]]
    batches = plan_batches(items, chunk_seconds=10.0, batch_seconds=100.0, max_batch=8)
    assert [[i.seconds for i in b] for b in batches] == [[30.0], [9.0, 3.0, 2.5, 2.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    "streams, workers, expected",
    [
        (4, 2, [[30.0, 25.0, 20.0], [15.0, 12.0, 11.0]]),  # 2 groups (a round of 2 workers), equal sizes
        (8, 1, [[30.0, 25.0, 20.0, 15.0, 12.0, 11.0]]),
        (2, 2, [[30.0, 25.0], [20.0, 15.0], [12.0], [11.0]]),  # 2 rounds of 2 workers
        (1, 2, [[30.0], [25.0], [20.0], [15.0], [12.0], [11.0]]),
        (4, 1, [[30.0, 25.0, 20.0], [15.0, 12.0, 11.0]]),  # 2 groups of 3 rather than 4 + 2
        (5, 2, [[30.0, 25.0, 20.0], [15.0, 12.0, 11.0]]),
    ],
)
def test_long_items_are_grouped_into_streams_that_keep_the_workers_busy(streams, workers, expected):
    items = [Item(f"i{k}", None, f"i{k}", s) for k, s in enumerate([11.0, 30.0, 2.0, 25.0, 12.0, 20.0, 15.0])]
    batches = plan_batches(items, chunk_seconds=10.0, batch_seconds=8.0, max_batch=1, streams=streams, workers=workers)
    assert [[i.seconds for i in b] for b in batches] == expected + [[2.0]]


def test_a_group_of_streams_holds_at_most_an_hour_of_audio():
    items = [Item(f"i{k}", None, f"i{k}", s) for k, s in enumerate([2000.0, 1500.0, 1000.0, 900.0])]
    batches = plan_batches(items, chunk_seconds=10.0, batch_seconds=8.0, max_batch=1, streams=8, workers=1)
    assert [[i.seconds for i in b] for b in batches] == [[2000.0, 1500.0], [1000.0, 900.0]]


def test_worker_processes_keep_freed_memory_instead_of_faulting_it_in_again():
    """glibc returns freed blocks over 32 MB to the system; a worker keeps them (no page faults)."""
    code = """
import resource, sys, torch
from codecplatform.inference import keep_freed_memory
if sys.argv[1] == "1":
    assert keep_freed_memory()
x = torch.ones(16 << 20)  # 64 MB
(x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    (x * 2 + 1).sum()  # two 64 MB temporaries a pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    default, kept = (
        int(subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, check=True).stdout)
        for flag in "01"
    )
    assert kept * 4 < default, (default, kept)


def test_worker_processes_give_the_same_codes_and_bandwidth_is_honoured(checkpoints, tmp_path):
    codec = Codec.from_checkpoint(checkpoints["encodec24"]).eval()
    audio = corpus(tmp_path / "audio", codec, [0.1, 0.2, 0.15])
    n_q = codec.n_q_for_bandwidth(24.0)
    assert n_q < codec.n_q
    args = ["--checkpoint", checkpoints["encodec24"], "--audio_dir", tmp_path / "audio", "--bandwidth", 24]
    assert run(*args, "--out", tmp_path / "out", "--num_workers", 1) == 0  # a spawned worker codes
    codes = tokenized(tmp_path / "out")
    for item_id, x in audio.items():
        np.testing.assert_array_equal(codes[item_id], alone(codec, x, n_q))


def test_a_folder_of_links_to_audio_elsewhere_is_tokenized_under_the_links_names(checkpoints, tmp_path):
    codec = Codec.from_checkpoint(checkpoints["encodec24"]).eval()
    audio = corpus(tmp_path / "elsewhere", codec, [0.1, 0.12])
    (tmp_path / "links" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere" / "item0.wav", tmp_path / "links" / "first.wav")
    os.symlink(tmp_path / "elsewhere" / "item1.wav", tmp_path / "links" / "sub" / "second.wav")
    args = ["--checkpoint", checkpoints["encodec24"], "--audio_dir", tmp_path / "links", "--out", tmp_path / "out"]
    assert run(*args, "--num_workers", 0) == 0
    codes = tokenized(tmp_path / "out")
    assert sorted(codes) == ["first", "sub__second"]
    np.testing.assert_array_equal(codes["sub__second"], alone(codec, audio["item1"]))


def test_a_second_run_skips_finished_items(checkpoints, tmp_path, capsys):
    codec = Codec.from_checkpoint(checkpoints["encodec24"]).eval()
    corpus(tmp_path / "audio", codec, [0.1, 0.2, 0.15])
    args = ["--checkpoint", checkpoints["encodec24"], "--audio_dir", tmp_path / "audio", "--out", tmp_path / "out"]
    assert run(*args, "--num_workers", 0) == 0
    out = tmp_path / "out"
    arrays = sorted((out / "codes").rglob("*.npy"))
    assert len(arrays) == 3
    for path in arrays:
        os.utime(path, (1, 1))  # mark: a rewritten array gets a new mtime
    # a run stopped while writing: the last cut line half-written; and the first line's array removed
    lines = (out / CUTS_FILE).read_text().splitlines()
    (out / CUTS_FILE).write_text(f"{lines[0]}\n{lines[1]}\n{lines[2][:40]}")
    first = out / "codes" / json.loads(lines[0])["custom"]["codes"]["array"]["storage_key"]
    first.unlink()
    capsys.readouterr()
    assert run(*args, "--num_workers", 0) == 0
    printed = capsys.readouterr().out
    assert "tokenized 2 items" in printed and "1 skipped" in printed
    kept = out / "codes" / json.loads(lines[1])["custom"]["codes"]["array"]["storage_key"]
    assert kept.stat().st_mtime == 1 and first.is_file()  # the finished item was not coded again
    assert sorted(c.id for c in CutSet.from_file(out / CUTS_FILE)) == ["item0", "item1", "item2"]
    assert not [p for p in out.rglob(".*")]  # no temporary files left
    assert run(*args, "--num_workers", 0) == 0
    assert "tokenized 0 items" in capsys.readouterr().out and kept.stat().st_mtime == 1


def test_a_resumed_run_must_use_the_same_settings(checkpoints, tmp_path, capsys):
    codec = Codec.from_checkpoint(checkpoints["encodec24"]).eval()
    corpus(tmp_path / "audio", codec, [0.1])
    args = ["--checkpoint", checkpoints["encodec24"], "--audio_dir", tmp_path / "audio", "--out", tmp_path / "out"]
    assert run(*args, "--num_workers", 0) == 0
    capsys.readouterr()
    assert run(*args, "--num_workers", 0, "--bandwidth", 24) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_q=" in err[0] and "choose another --out" in err[0]


def test_a_corrupt_file_is_named_and_the_others_are_tokenized(checkpoints, tmp_path, capsys):
    codec = Codec.from_checkpoint(checkpoints["dac"]).eval()
    audio = corpus(tmp_path / "audio", codec, [0.1, 0.2])
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    # a manifest item whose header reads but whose audio fails to decode (the file is gone)
    recordings = [Recording.from_file(tmp_path / "audio" / f"{i}.wav") for i in audio]
    gone = tmp_path / "gone.wav"
    sf.write(gone, np.zeros((4410, 1), np.float32), codec.sample_rate)
    recordings.append(Recording.from_file(gone))
    gone.unlink()
    RecordingSet.from_recordings(recordings).to_file(tmp_path / "recordings.jsonl.gz")
    for source, out, missing in (
        ("--audio_dir", tmp_path / "audio", "broken.wav"),
        ("--manifest", tmp_path / "recordings.jsonl.gz", "gone.wav"),
    ):
        capsys.readouterr()
        status = run(
            "--checkpoint", checkpoints["dac"], source, out, "--out", tmp_path / source[2:], "--num_workers", 0
        )
        assert status == 1
        captured = capsys.readouterr()
        failures = [line for line in captured.err.splitlines() if line.strip()]
        assert (
            len(failures) == 1 and missing in failures[0] and failures[0].startswith("codecplatform tokenize: failed:")
        )
        assert "tokenized 2 items" in captured.out and "1 failed" in captured.out
        assert sorted(tokenized(tmp_path / source[2:])) == sorted(audio)
        assert missing in (tmp_path / source[2:] / "failed.txt").read_text()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--n_q", "99"], "n_q"),
        (["--bandwidth", "7"], "--bandwidth 7"),
        (["--batch_seconds", "0"], "--batch_seconds"),
        (["--chunk_seconds", "-1"], "--chunk_seconds"),
        (["--max_batch", "0"], "--max_batch"),
        (["--num_workers", "-1"], "--num_workers"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_any_output(extra, words, checkpoints, tmp_path, capsys):
    codec = Codec.from_checkpoint(checkpoints["encodec24"]).eval()
    corpus(tmp_path / "audio", codec, [0.1])
    out = tmp_path / "out"
    assert run("--checkpoint", checkpoints["encodec24"], "--audio_dir", tmp_path / "audio", "--out", out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not out.exists()


def test_missing_inputs_fail_in_one_line_before_any_output(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "notes.jsonl").write_text('{"hello": 1}\n')
    cases = [
        (["--checkpoint", tmp_path / "none.ckpt", "--audio_dir", tmp_path], "none.ckpt"),
        (["--checkpoint", checkpoints["dac"], "--audio_dir", tmp_path / "nothing"], "nothing"),
        (["--checkpoint", checkpoints["dac"], "--manifest", tmp_path / "none.jsonl.gz"], "none.jsonl.gz"),
        (["--checkpoint", checkpoints["dac"], "--manifest", tmp_path / "notes.jsonl"], "notes.jsonl"),
        (["--checkpoint", checkpoints["dac"], "--audio_dir", tmp_path / "empty"], "no audio items"),
    ]
    (tmp_path / "empty").mkdir()
    for args, words in cases:
        capsys.readouterr()
        assert run(*args, "--out", out) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
        assert not out.exists()


def test_tokenize_starts_without_lightning():
    import subprocess
    import sys

    code = (
        "import sys\nfrom codecplatform.cli import cli_main\n"
        "try:\n    cli_main(['tokenize', '--help'])\nexcept SystemExit:\n    pass\n"
        "import codecplatform.tokenize_corpus, datamodules.shards\n"
        "print('HEAVY', sorted(m for m in ('lightning', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--batch_seconds" in result.stdout and "HEAVY []" in result.stdout


def test_the_default_context_covers_what_reaches_a_frame_and_no_more(checkpoints):
    """DAC 44.1 kHz (real config): one input sample changes the latent frames within the computed
    context, and the context is at most 2 frames wider than what the sample reaches."""
    from codecplatform.config import compose_config

    config = compose_config(Path(__file__).resolve().parents[1] / "experiments" / "dac" / "44khz.yaml")
    torch.manual_seed(0)
    codec = Codec.from_config(config["model"]["init_args"]["codec"]).eval()
    hop, frames = codec.hop_length, tokenize_corpus.default_context_frames(codec)
    assert frames is not None
    x = 0.1 * torch.randn(1, 1, 48 * hop)
    at = 24 * hop + 7
    bumped = x.clone()
    bumped[..., at] += 1.0
    with torch.no_grad():
        changed = torch.nonzero((codec.encoder(bumped) - codec.encoder(x)).abs().amax(dim=1)[0] > 0).flatten()
    reach = max(at // hop - int(changed.min()), int(changed.max()) - at // hop)
    assert reach <= frames <= reach + 2, (reach, frames)
    # an encoder with a layer of unbounded reach (EnCodec's LSTM) gets no computed context
    assert tokenize_corpus.default_context_frames(Codec.from_checkpoint(checkpoints["encodec24"])) is None
