"""A folder with planted bad files among good ones, end to end through the command line:
`codecplatform prepare` reports exactly the bad files (table and problems.json) and skips them,
`codecplatform fit` trains on the result, and files that break after prepare (deleted, overwritten
with garbage) are dropped with a warning naming them instead of stopping training."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from synthetic_audio import write_tones

from codecplatform.cli import cli_main
from datamodules.manifests import load_cuts

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
RATE = 48000  # the stereo EnCodec's rate and channels: what `prepare` checks against


def plant_bad_files(folder: Path) -> dict[str, str]:
    """Write one file per problem kind into ``folder``: {file name: expected problem}."""
    rng = np.random.default_rng(1)
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE).astype(np.float32)  # 1 s
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    (folder / "garbage.wav").write_bytes(rng.bytes(5000))
    sf.write(folder / "cut_short.wav", stereo, RATE, subtype="PCM_16")
    data = (folder / "cut_short.wav").read_bytes()
    (folder / "cut_short.wav").write_bytes(data[: len(data) // 2])  # header promises twice the audio
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "silence.wav", np.zeros((RATE, 2), np.float32), RATE)
    nan = stereo.copy()
    nan[1000:1010] = np.nan
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(folder / "low_rate.wav", stereo[::6], RATE // 6)
    sf.write(folder / "mono.wav", tone, RATE)
    return {
        "garbage.wav": "unreadable",
        "cut_short.wav": "truncated",
        "empty.wav": "zero_length",
        "silence.wav": "silent",
        "nan.wav": "non_finite",
        "low_rate.wav": "low_sample_rate",
        "mono.wav": "channel_mismatch",
    }


@pytest.mark.slow
def test_bad_files_are_reported_exactly_and_training_goes_on(in_tmp_dir, capsys):
    audio = in_tmp_dir / "audio"
    write_tones(audio, RATE, 2, n_files=8)  # good: clip0..clip7.wav
    planted = plant_bad_files(audio)
    out = in_tmp_dir / "manifests"

    args = ["--audio_dir", str(audio), "--out_dir", str(out), "--sample_rate", str(RATE), "--channels", "2"]
    assert cli_main(["prepare", *args, "--num_workers", "2", "--val_fraction", "0.2", "--test_fraction", "0"]) == 0
    table = capsys.readouterr().out
    report = json.loads((out / "problems.json").read_text())
    assert {Path(p["path"]).name: p["problem"] for p in report} == planted
    assert len(report) == len(planted)
    for name, problem in planted.items():  # the printed table: one line per skipped file
        assert any(name in line and problem in line for line in table.splitlines()), (name, table)
    used = {
        Path(cut.recording.sources[0].source).name
        for split in ("train", "val")
        for cut in load_cuts(out / f"cuts_{split}.jsonl.gz")
    }
    assert used == {f"clip{i}.wav" for i in range(8)}

    # two training files break after prepare: one deleted, one overwritten with garbage
    train_files = sorted(Path(cut.recording.sources[0].source) for cut in load_cuts(out / "cuts_train.jsonl.gz"))
    deleted, corrupted = train_files[0], train_files[1]
    deleted.unlink()
    corrupted.write_bytes(np.random.default_rng(2).bytes(4000))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = cli_main(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / "encodec" / "48khz_stereo.yaml"),
                "--config",
                str(EXPERIMENTS / "tiny" / "encodec.yaml"),
                f"--data.init_args.train_cuts={out / 'cuts_train.jsonl.gz'}",
                f"--data.init_args.val_cuts={out / 'cuts_val.jsonl.gz'}",
                "--data.init_args.test_cuts=null",
                "--model.init_args.max_batches=null",
                "--trainer.max_epochs=1",  # every training window once: the broken files are drawn
                "--trainer.logger=false",
                "--trainer.limit_val_batches=0",
            ]
        )
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for broken in (deleted, corrupted):
        assert any("skipping cut" in m and str(broken) in m for m in messages), (broken, messages)
    assert fit.trainer.state.finished
    assert int(fit.model.batch_counter) >= 1
