"""``codecplatform compare``: rate-quality curves of MLflow runs of two families (metrics logged
directly with MlflowClient), the PNG/Markdown/JSON outputs, the comparison run, filters and errors;
and the experiment set up for the UI (model-training kind, the "codec quality" runs view)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from matplotlib.colors import to_hex
from matplotlib.image import imread
from mlflow.tracking import MlflowClient
from rate_quality_runs import ENTROPY_CODED, NO_PER_BITRATE, RUNS, log_runs

from codecplatform import compare
from codecplatform.cli import cli_main


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_mlflow_store):
    """(sqlite URI, run name -> id) of a store with runs of two families (shared: read-only use,
    except comparison runs, which compare ignores)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    shutil.copyfile(empty_mlflow_store, path)  # an empty store, made once per session (tests/conftest.py)
    uri = f"sqlite:///{path}"
    return uri, log_runs(uri)


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    status = cli_main(["compare", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_filter_strings():
    assert compare.filter_string(["family=dac"]) == "tags.`family` = 'dac'"
    assert compare.filter_string(["sample_rate = 24000", "family=dac"]) == (
        "tags.`sample_rate` = '24000' and tags.`family` = 'dac'"
    )
    assert compare.filter_string(["params.lr=0.001"]) == "params.`lr` = '0.001'"
    assert compare.filter_string(["attributes.status=FINISHED"]) == "attributes.status = 'FINISHED'"
    raw = "tags.family = 'dac' or tags.family = 'encodec'"
    assert compare.filter_string([raw], "metrics.`test/si_sdr` > 3") == f"({raw}) and metrics.`test/si_sdr` > 3"
    assert compare.filter_string([]) == ""


def test_per_bitrate_points_parse_the_evaluation_keys():
    points = compare.per_bitrate_points(
        {
            "test/6kbps/mel_distance": 1.0,
            "test/1.5kbps/mel_distance": 2.0,
            "test/1.5kbps/effective_kbps": 1.1,
            "test/0.861kbps/si_sdr": 3.0,
            "val/6kbps/mel_distance": 9.0,
            "test/mel_distance": 1.0,
            "train/g/mel": 5.0,
        }
    )
    assert [(p.label, p.kbps, p.effective_kbps) for p in points] == [
        ("0.861kbps", 0.861, None),
        ("1.5kbps", 1.5, 1.1),
        ("6kbps", 6.0, None),
    ]
    assert points[1].metrics == {"mel_distance": 2.0}  # effective_kbps is the x, not a quality metric


def test_compare_writes_the_curves_and_logs_a_comparison_run(store, tmp_path, capsys):
    uri, ids = store
    out_dir = tmp_path / "cmp"
    status, out, err = run_compare(capsys, "--tracking_uri", uri, "--out_dir", str(out_dir))
    assert status == 0, err
    # The run without per-bitrate metrics is named and skipped.
    assert f"skipped run {ids[NO_PER_BITRATE]} ({NO_PER_BITRATE}, encodec)" in err
    assert "compared 4 runs (dac: 2, encodec: 2)" in out

    image = imread(out_dir / "rate_quality.png")
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600

    data = json.loads((out_dir / "rate_quality.json").read_text())
    assert {run["run_name"] for run in data["runs"]} == set(RUNS)
    assert data["families"] == ["dac", "encodec"]
    assert data["metrics"] == ["mel_distance", "stft_distance", "si_sdr", "visqol_audio", "codebook_efficiency"]
    assert [s["run_id"] for s in data["skipped"]] == [ids[NO_PER_BITRATE]]
    dac44 = next(run for run in data["runs"] if run["run_name"] == "dac-44khz")
    assert [p["kbps"] for p in dac44["points"]] == [0.861, 2.584, 7.75]
    assert dac44["points"][0]["metrics"]["mel_distance"] == pytest.approx(1.7)

    # The Markdown: a runs table, then per metric a table with one row per run.
    text = (out_dir / "rate_quality.md").read_text()
    for name, run_id in ids.items():
        if name != NO_PER_BITRATE:
            assert f"| {name} | `{run_id}` |" in text
    section = text.split("## mel_distance (lower is better)")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| run", "| ---"))]
    assert len(rows) == len(RUNS)
    assert "| 0.75 kbps | 0.861 kbps | 1.5 kbps |" in section
    row = next(r for r in rows if r.startswith("| encodec-small |"))
    assert row.split(" | ")[2:4] == ["-", "-"] and "| 1.3 |" in row  # no 0.75/0.861 kbps points; 6 kbps
    assert "## effective kbps (entropy-coded bitstream)" in text

    # Logged back: a finished run tagged as a comparison, holding the three files and the table.
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("codecplatform").experiment_id], "tags.`codecplatform.kind` = 'comparison'"
    )
    assert run.info.status == "FINISHED"
    assert set(run.data.tags[compare.COMPARED_RUNS_TAG].split(",")) == {ids[n] for n in RUNS}
    assert run.data.tags["mlflow.note.content"] == text
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "comparison"))
    assert names == ["comparison/rate_quality.json", "comparison/rate_quality.md", "comparison/rate_quality.png"]

    # A comparison run is not compared itself; --no_log logs nothing.
    status, out, _ = run_compare(capsys, "--tracking_uri", uri, "--out_dir", str(tmp_path / "again"), "--no_log")
    assert status == 0 and "compared 4 runs" in out and "logged as run" not in out
    assert len(client.search_runs([run.info.experiment_id], "tags.`codecplatform.kind` = 'comparison'")) == 1


def test_one_line_per_run_coloured_by_family(store):
    uri, ids = store
    comparison = compare.collect(uri)
    figure = compare.plot(comparison)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "mel_distance (lower is better)",
        "stft_distance (lower is better)",
        "si_sdr (higher is better)",
        "visqol_audio (higher is better)",
        "codebook_efficiency (higher is better)",
    ]
    family = {ids[name]: tags["family"] for name, (tags, _) in RUNS.items()}
    for ax in axes:
        nominal = {line.get_gid(): line for line in ax.lines if not line.get_gid().endswith("/effective")}
        assert set(nominal) == set(family)  # one line per run
        colours = {run_id: to_hex(line.get_color()) for run_id, line in nominal.items()}
        for run_id, colour in colours.items():  # the same colour within a family, another across
            assert all((colour == other) == (family[run_id] == family[o]) for o, other in colours.items())
        (effective,) = [line for line in ax.lines if line.get_gid().endswith("/effective")]
        assert effective.get_gid() == f"{ids[ENTROPY_CODED]}/effective" and effective.get_linestyle() == "--"
        kbps = sorted(RUNS[ENTROPY_CODED][1])
        assert list(effective.get_xdata()) == pytest.approx([0.8 * k for k in kbps])
        line = nominal[ids["dac-44khz"]]
        assert list(line.get_xdata()) == pytest.approx([0.861, 2.584, 7.75])


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--filter", "family=dac"], {"dac-24khz", "dac-44khz"}),
        (["--filter", "sample_rate=24000"], {"encodec-small", "encodec-large", "dac-24khz"}),
        (["--filter", "family=dac", "--filter", "sample_rate=24000"], {"dac-24khz"}),
        (["--filter", "tags.family = 'encodec' and metrics.`test/mel_distance` < 0.9"], {"encodec-large"}),
        (["--filter_string", "tags.`max_kbps` = '7.75'"], {"dac-44khz"}),
    ],
)
def test_filters(store, tmp_path, capsys, filters, expected):
    uri, _ = store
    status, _, err = run_compare(capsys, "--tracking_uri", uri, "--out_dir", str(tmp_path), "--no_log", *filters)
    assert status == 0, err
    data = json.loads((tmp_path / "rate_quality.json").read_text())
    assert {run["run_name"] for run in data["runs"]} == expected


def test_metrics_option_and_effective_kbps_only_where_logged(store, tmp_path, capsys):
    uri, _ = store
    args = ["--tracking_uri", uri, "--out_dir", str(tmp_path), "--no_log", "--filter", "family=encodec"]
    status, out, err = run_compare(capsys, *args, "--metrics", "si_sdr", "codebook_efficiency")
    assert status == 0, err
    assert "metrics: si_sdr, codebook_efficiency" in out
    text = (tmp_path / "rate_quality.md").read_text()
    assert "## si_sdr" in text and "## mel_distance" not in text and "effective kbps" not in text


def test_errors(store, tmp_path, capsys):
    uri, ids = store
    common = ["--tracking_uri", uri, "--out_dir", str(tmp_path), "--no_log"]
    status, _, err = run_compare(capsys, *common, "--experiment", "nope")
    assert status == 1 and "unknown experiment 'nope'; this store has: " in err and "codecplatform" in err

    status, _, err = run_compare(capsys, *common, "--filter", "family=muffin")
    assert status == 1
    assert "no runs in experiment 'codecplatform' match \"tags.`family` = 'muffin'\"" in err
    assert "families: dac, encodec" in err

    name = NO_PER_BITRATE
    status, _, err = run_compare(capsys, *common, "--filter", f"attributes.run_name={name}")
    assert status == 1 and "has per-bitrate test metrics" in err and ids[name] in err

    status, _, err = run_compare(capsys, *common, "--filter", "tags.family ~~ 'x'")
    assert status == 1 and "MLflow refused the filter" in err

    status, _, err = run_compare(capsys, *common, "--metrics", "pesq")
    assert status == 1 and "unknown metric 'pesq': the compared runs have " in err and "si_sdr" in err
    # a typo is refused, naming the closest metric, not dropped (it drew the other metrics only)
    status, out, err = run_compare(capsys, *common, "--metrics", "si_sdr", "mel_distanse")
    assert status == 1 and out == ""
    assert [line for line in err.splitlines() if "skipped run" not in line] == [
        "codecplatform compare: error: unknown metric 'mel_distanse' (did you mean 'mel_distance'?): "
        "the compared runs have codebook_efficiency, mel_distance, si_sdr, stft_distance, visqol_audio"
    ]
    assert not (tmp_path / "rate_quality.png").exists()

    missing = tmp_path / "missing.db"
    status, _, err = run_compare(capsys, "--tracking_uri", f"sqlite:///{missing}", "--out_dir", str(tmp_path))
    assert status == 1 and f"no MLflow store at {missing}" in err
    assert not missing.exists()

    assert not list(tmp_path.glob("rate_quality.*"))  # nothing written on an error


def test_compare_needs_neither_lightning_nor_torch():
    code = (
        "import sys, codecplatform.compare as c; c.filter_string(['family=dac']);"
        "bad = [m for m in ('lightning', 'torch', 'matplotlib.pyplot') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_logger_prepares_the_experiment_for_the_ui(mlflow_db, tmp_path):
    """MLflowLogger tags the experiment it opens (in an empty store) as model training and saves the
    runs view; a user's later choice of kind is kept."""
    from codecplatform.tracking import MLflowLogger

    logger = MLflowLogger(experiment_name="codecplatform", tracking_uri="sqlite:///mlflow.db")
    logger.log_metrics({"test/6kbps/mel_distance": 1.0}, step=0)
    logger.finalize("success")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("codecplatform")
    assert experiment.tags[compare.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(experiment.tags[compare.SAVED_VIEW_PREFIX + compare.VIEW_ID])
    assert view["name"] == "codec quality" and isinstance(view["createdAt"], int)
    state = json.loads(view["state"])
    assert "metrics.`test/mel_distance`" in state["selectedColumns"] and "tags.`family`" in state["selectedColumns"]

    client.set_experiment_tag(experiment.experiment_id, compare.EXPERIMENT_KIND_TAG, "genai_development")
    again = MLflowLogger(experiment_name="codecplatform", tracking_uri="sqlite:///mlflow.db")
    again.log_metrics({"value": 1.0}, step=0)
    again.finalize("success")
    tags = client.get_experiment(experiment.experiment_id).tags
    assert tags[compare.EXPERIMENT_KIND_TAG] == "genai_development"
