"""benchmarks/leaderboard.py at a tiny budget on generated audio: one tiny family trained for 2 s and
tested at every bitrate, Opus and MP3 rows on the same test windows, the comparison and the table."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark
from synthetic_audio import write_tones

ROOT = Path(__file__).resolve().parents[2]


def setup(tmp: Path, empty_store: Path, seconds: float):
    """(the benchmark module, a work folder with an empty MLflow store, a folder of 10 tones)."""
    work = tmp / "work"
    work.mkdir()
    shutil.copyfile(empty_store, work / "mlflow.db")
    write_tones(tmp / "audio", 24000, 1, n_files=10, seconds=seconds)
    return load_benchmark("leaderboard"), work, tmp / "audio"


def leaderboard(benchmark, audio: Path, work: Path, windows: int, *args: str) -> dict:
    """The leaderboard on ``audio`` at test scale: tiny configs, windows of 1 s, no ViSQOL."""
    tiny = str(ROOT / "experiments" / "tiny" / "{family}.yaml")
    return benchmark.main(
        [*args, "--data_dir", str(audio), "--eval_seconds", "1", "--eval_windows", str(windows), "--no_visqol"]
        + ["--test_fraction", "0.3", "--extra_config", tiny, "--work_dir", str(work)]
    )


@pytest.mark.slow
def test_leaderboard_smoke(in_tmp_dir, empty_mlflow_store):
    benchmark, work, audio = setup(in_tmp_dir, empty_mlflow_store, seconds=2.0)
    results = leaderboard(
        benchmark, audio, work, 4, *"--budget 2 --families encodec --opus_kbps 6 24 --mp3_kbps 16".split()
    )
    assert json.loads((work / "leaderboard.json").read_text())["id"] == results["id"]
    encodec = results["families"]["encodec"]
    assert encodec["batches"] >= 1 and encodec["fit_seconds"] < 60
    kbps = [c["kbps"] for c in encodec["table"]["columns"]]
    assert len(kbps) >= 2
    names = {"mel_distance", "stft_distance", "si_sdr", "mel_distance_44k", "stft_distance_44k"}
    assert names <= set(encodec["table"]["rows"])
    opus, mp3 = results["classical"]["opus"], results["classical"]["mp3"]
    assert set(opus["table"]["rows"]) == set(mp3["table"]["rows"]) == names
    assert opus["test_seconds"] == pytest.approx(4.0)  # the same 4 one-second windows as the family's test
    mel = opus["table"]["rows"]["mel_distance_44k"]
    assert mel[1] < mel[0]  # 24 kbps better than 6
    constant = results["baselines"]["constant spectrum"]["table"]["rows"]
    assert set(constant) == names and opus["table"]["rows"]["mel_distance"][1] < constant["mel_distance"][0]
    assert ("constant spectrum", 0.0) in {(row["codec"], row["kbps"]) for row in results["rows"]}
    assert opus["table"]["columns"][1]["true_kbps"] == pytest.approx(24, rel=0.1)
    rows = {(row["codec"], row["kbps"]) for row in results["rows"]}
    assert {("opus", 6), ("opus", 24), ("mp3", 16)} <= rows and ("encodec", kbps[0]) in rows
    compared = json.loads((work / "comparison" / "rate_quality.json").read_text())
    assert compared["families"] == ["encodec", "mp3", "opus"]
    assert "mel_distance_44k" in compared["metrics"]
    table = (work / "leaderboard.md").read_text()
    assert "| opus | 24 | " in table and "- encodec (" in table and "Opus on mel distance" in table
    assert "| constant spectrum | 0 | 0.00 |" in table and "the constant spectrum (" in table
    from mlflow.tracking import MlflowClient

    from codecplatform import compare

    experiment = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_experiment_by_name("leaderboard")
    saved = json.loads(experiment.tags[compare.SAVED_VIEW_PREFIX + compare.LEADERBOARD_VIEW_ID])
    columns = json.loads(saved["state"])["selectedColumns"]  # the UI's "leaderboard" view
    assert {"metrics.`test/6kbps/mel_distance`", "metrics.`test/16kbps/si_sdr`"} <= set(columns)
    assert f"metrics.`test/{encodec['table']['columns'][0]['label']}/mel_distance`" in columns
    # --trained: the same weights tested again (no training) give the same table
    again = leaderboard(
        benchmark,
        audio,
        in_tmp_dir / "again",
        4,
        *f"--trained {work} --families encodec --opus_kbps 6 --mp3_kbps".split(),
    )
    tested = again["families"]["encodec"]
    assert tested["fit_seconds"] == 0.0 and tested["batches"] == encodec["batches"]
    assert tested["table"]["rows"]["mel_distance"] == pytest.approx(encodec["table"]["rows"]["mel_distance"])


@pytest.mark.slow
def test_leaderboard_mucodec_row(in_tmp_dir, empty_mlflow_store):
    """MuCodec's tiny chain trained within the budget (all six stages), scored on the same test windows
    as the Opus row at its one bitrate (25 Hz x 6 bits), logged as a ``family=mucodec`` run."""
    benchmark, work, audio = setup(in_tmp_dir, empty_mlflow_store, seconds=3.0)
    results = leaderboard(
        benchmark, audio, work, 2, "--budget", "6", "--families", "mucodec", "--opus_kbps", "6", "--mp3_kbps"
    )
    mucodec = results["families"]["mucodec"]
    assert set(mucodec["stage_batches"]) == set(benchmark.MUCODEC_SHARES)
    assert min(mucodec["stage_batches"].values()) >= 1
    (column,) = mucodec["table"]["columns"]
    assert column["kbps"] == pytest.approx(0.15) and column["true_kbps"] == pytest.approx(0.15, rel=0.05)
    assert set(mucodec["table"]["rows"]) == set(results["classical"]["opus"]["table"]["rows"])
    assert all(math.isfinite(values[0]) for values in mucodec["table"]["rows"].values())
    assert any(row["codec"] == "mucodec" and row["kbps"] == pytest.approx(0.15) for row in results["rows"])
    assert "- mucodec (" in (work / "leaderboard.md").read_text()
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_run(mucodec["run_id"])
    assert run.data.tags["family"] == "mucodec" and run.data.tags["leaderboard"] == results["id"]
    assert run.data.metrics[f"test/{column['label']}/mel_distance"] == mucodec["table"]["rows"]["mel_distance"][0]
    again = leaderboard(
        benchmark,
        audio,
        in_tmp_dir / "again",
        2,
        *f"--trained {work} --families mucodec --opus_kbps --mp3_kbps".split(),
    )
    tested = again["families"]["mucodec"]
    assert tested["fit_seconds"] == 0.0 and tested["stage_batches"] == mucodec["stage_batches"]
    for name, values in mucodec["table"]["rows"].items():  # a seeded decode: the same audio
        assert tested["table"]["rows"][name] == pytest.approx(values), name


def test_a_failing_family_leaves_the_other_rows(capsys):
    benchmark = load_benchmark("leaderboard")

    def broken():
        raise RuntimeError("out of memory in the flow stage")

    failed = benchmark.guarded("mucodec", broken)
    assert failed == {"failed": "RuntimeError: out of memory in the flow stage"}
    assert "Traceback" in capsys.readouterr().err
    results = {"families": {"mucodec": failed}, "classical": {}, "rows": []}
    assert "- mucodec: failed (RuntimeError: out of memory in the flow stage)" in benchmark.markdown(results, "music")
