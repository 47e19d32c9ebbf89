"""benchmarks/gpu_suite.py on the CPU, so that the GPU suite cannot rot between GPU runs: --smoke
runs every row of its plan (every config of the table at bf16-mixed, the other modes, inference,
DDP on gloo, DAC against the official package, the data module) and each must give finite numbers;
the worker supervision that keeps a GPU run inside its time (a row past its timeout is killed and
the next worker takes the rest, a dead worker's row is an error, rows after the budget are skipped)
runs on rows that only sleep."""

from __future__ import annotations

import json
import math
import time

import pytest
from benchmark_scripts import load_benchmark


@pytest.mark.slow
def test_smoke_gives_every_row_finite_numbers(tmp_path):
    suite = load_benchmark("gpu_suite")
    report = suite.main(["--smoke", "--in_process", "--threads", "1", "--out", str(tmp_path)])
    planned = suite.plan(suite.parse_args(["--smoke"]))
    ids = {row["id"] for row in planned}
    # every config of the table trains, and every mode, group and search runs at least once
    assert {f"train {family} bf16-mixed" for family in suite.FAMILIES} <= ids
    assert {"train encodec 32-true", "train mucodec_muencoder1 compile"} <= ids
    assert {f"infer {codec}" for codec in suite.CODECS} | {"ddp encodec", "dac_official dac", "data encodec"} <= ids
    assert [row["row"]["id"] for row in report["rows"]] == [row["id"] for row in planned]
    bad = [(r["id"], r["status"], r["lines"][0].get("note")) for r in report["rows"] if r["status"] != "ok"]
    assert not bad
    lines = report["lines"]
    assert len(lines) == len(planned) + len(suite.CODECS) + 1  # inference: encode and decode; DAC: ours and official
    for line in lines:
        assert math.isfinite(line["audio_s_per_s"]) and line["audio_s_per_s"] > 0, line
        assert math.isfinite(line["peak_gb"]) and line["peak_gb"] > 0, line
    by = {(line["id"], line["setting"]): line for line in lines}
    assert by[("train encodec bf16-mixed", "bf16-mixed")]["largest_batch"] == 2  # smoke cap: one doubling
    assert by[("ddp encodec", "bf16-mixed, DDP gloo, world 1")]["vs_single_device"] > 0
    assert 0 <= by[("data encodec", "32-true, data module")]["data_time_fraction"] < 1
    assert by[("dac_official dac", "32-true, ours")]["vs_official"] > 0
    table = (tmp_path / "gpu_suite.md").read_text()
    assert table.count("\n") == len(lines) + 2 and "official dac" in table
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["smoke"] is True


def test_worker_supervision(tmp_path):
    suite = load_benchmark("gpu_suite")
    settings = suite._settings(suite.parse_args(["--smoke"]), "cpu")
    settings.deadline = time.time() + 60

    def sleep(name, seconds, timeout=30.0, **extra):
        row = {"id": name, "group": "sleep", "family": name, "mode": "", "timeout": timeout, "min_s": 0}
        return row | {"seconds": seconds, **extra}

    rows = [sleep("a", 0), sleep("hangs", 30, timeout=1), sleep("b", 0), sleep("dies", 0, exit=3), sleep("c", 0)]
    results = suite.supervise(rows, settings, tmp_path, grace=0.5)
    assert {k: v["status"] for k, v in results.items()} == {
        "a": "ok",
        "hangs": "timeout",
        "b": "ok",
        "dies": "error",
        "c": "ok",
    }
    assert "worker exited with 3" in results["dies"]["lines"][0]["note"]
    assert results["hangs"]["seconds"] < 10  # killed, not waited for
    assert len(list(tmp_path.glob("worker_*.jsonl"))) == 3  # a new worker after the timeout and after the death

    settings.deadline = time.time() - 1  # the budget is spent: nothing starts
    late = suite.supervise([sleep("d", 0)], settings, tmp_path)
    assert late["d"]["status"] == "skipped" and "budget" in late["d"]["lines"][0]["note"]
