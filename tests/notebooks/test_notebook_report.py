"""``make notebook``: notebooks/codebook_usage.ipynb run headless (the command ``make -n notebook``
prints, run here without ``make``'s install step) writes an HTML report with its figures embedded;
a run's best checkpoint is taken by default; a bad run id ends it with one line, no traceback and no
terminal colour codes. The HTML writer on its own, and the documentation of every input."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import torch
import yaml
from mlflow.tracking import MlflowClient

from codecplatform.notebook import cell_error, notebook_html

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "codebook_usage.ipynb"
sys.path.insert(0, str(ROOT / "tests"))
from synthetic_audio import write_tones  # noqa: E402
from test_export_and_cli_start import tiny_checkpoint  # noqa: E402

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def make_command(out_dir: Path) -> list[str]:
    """The command ``make notebook`` runs (its last line; the install step before it is skipped)."""
    printed = (
        subprocess.run(
            ["make", "--no-print-directory", "-n", "notebook", f"NOTEBOOK_OUT={out_dir}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    assert "codecplatform.notebook" in printed[-1] and "codebook_usage.ipynb" in printed[-1], printed
    return shlex.split(printed[-1])


def log_checkpoint(client: MlflowClient, run_id: str, path: Path, monitor: str | None, score: float | None) -> None:
    """As Lightning's MLFlowLogger logs a checkpoint: ``<stem>/<name>.ckpt``, ``metadata.yaml``, ``aliases.txt``."""
    client.log_artifact(run_id, str(path), path.stem)
    meta = path.parent / f"meta_{path.stem}"
    meta.mkdir()
    settings = {"monitor": monitor, "mode": "min", "save_last": None if monitor else "link", "save_top_k": 1}
    (meta / "metadata.yaml").write_text(
        yaml.dump({"score": score, "original_filename": path.name, "Checkpoint": settings})
    )
    (meta / "aliases.txt").write_text(str(["latest", "best"]))
    client.log_artifacts(run_id, str(meta), path.stem)


def test_html_report_embeds_figures_and_shows_text_without_colour_codes():
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("plot()")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="codebook  size\n0  16\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={"text/html": '<audio controls="controls"></audio>'}),
        nbformat.v4.new_output(
            "error",
            ename="LookupError",
            evalue="CODEC_RUN_ID='x': no such run\nmore",
            traceback=["\x1b[0;31mLookupError\x1b[0m: no such run"],
        ),
    ]
    markdown = "# Codebook usage\n\nSome **bold** `code`.\n\n```bash\nmake notebook\n```"
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), code]
    page = notebook_html(nb, "codebook_usage")
    assert "<h1>Codebook usage</h1>" in page and "<b>bold</b> <code>code</code>" in page
    assert "<pre>make notebook</pre>" in page and "codebook  size" in page
    assert f'<img src="data:image/png;base64,{PNG}">' in page and "<audio" in page
    assert "\x1b" not in page and "LookupError: no such run" in page
    assert cell_error(nb) == "LookupError: CODEC_RUN_ID='x': no such run"


def test_make_notebook_writes_the_report_from_the_best_checkpoint_and_a_bad_run_id_is_one_line(
    tmp_path, empty_mlflow_store
):
    store = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_store, store)
    uri = f"sqlite:///{store}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("notebook")).info.run_id
    folder = tmp_path / "ckpt"
    folder.mkdir()
    paths = {}
    for seed, name in enumerate(("best-1", "best-3", "last")):
        path = tiny_checkpoint(folder / f"{name}.ckpt")
        data = torch.load(path, weights_only=False)
        for value in data["state_dict"].values():  # each checkpoint its own weights
            if value.is_floating_point():
                value.add_(0.01 * seed)
        torch.save(data, path)
        paths[name] = path
    log_checkpoint(client, run_id, paths["best-1"], "val/mel_distance", 0.55)
    log_checkpoint(client, run_id, paths["best-3"], "val/mel_distance", 0.40)  # the best score
    log_checkpoint(client, run_id, paths["last"], None, None)
    for step, value in ((1, 0.55), (3, 0.40)):
        client.log_metric(run_id, "val/mel_distance", value, step=step)
    client.set_terminated(run_id)
    audio = tmp_path / "wav"
    write_tones(audio, 24000, 1, 3)

    env = {key: value for key, value in os.environ.items() if not key.startswith("CODEC_")}
    env.update(MLFLOW_TRACKING_URI=uri, CODEC_AUDIO=str(audio))
    good, bad = tmp_path / "good", tmp_path / "bad"
    runs = {
        "good": subprocess.Popen(
            make_command(good),
            cwd=ROOT,
            env={**env, "CODEC_RUN_ID": run_id},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "bad": subprocess.Popen(
            make_command(bad),
            cwd=ROOT,
            env={**env, "CODEC_RUN_ID": "0123nosuchrun"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    done = {name: (*run.communicate(timeout=600), run.returncode) for name, run in runs.items()}

    out, err, code = done["good"]
    assert code == 0, err[-3000:]
    page = (good / "codebook_usage.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 3 and all(len(image) > 1000 for image in images)  # statistics, quality, history
    assert "<h1>Codebook usage of a trained codec</h1>" in page and page.count("<audio") >= 4
    executed = nbformat.read(good / "codebook_usage.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    result = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT_JSON "))[12:])
    assert result["checkpoint_source"] == "mlflow" and Path(result["checkpoint"]).name == "best-3.ckpt"
    assert Path(result["checkpoint"]).read_bytes() == paths["best-3"].read_bytes()
    assert result["history_points"]["val/mel_distance"] == 2

    out, err, code = done["bad"]
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "\x1b" not in err, err[-3000:]
    assert "CODEC_RUN_ID='0123nosuchrun': no such run" in lines[0] and "LookupError" in lines[0]


def test_every_input_is_documented():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    names = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', nb.cells[1].source))
    assert {"CODEC_RUN_ID", "CODEC_AUDIO", "CODEC_CHECKPOINT", "CODEC_WHICH", "MLFLOW_TRACKING_URI"} <= names
    docs = (ROOT / "docs" / "notebooks.md").read_text()
    for name in names:
        assert f"`{name}`" in docs, name
    assert "make notebook" in docs
    text = "".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    assert "jupyter lab" not in text.replace("(`jupyter lab`) is not installed", "")


def test_readme_names_make_notebook_and_every_input():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    names = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', nb.cells[1].source))
    readme = (ROOT / "README.md").read_text().splitlines()
    line = next(line for line in readme if "docs/notebooks.md" in line and "make notebook" in line)
    assert all(name in line for name in names), sorted(name for name in names if name not in line)
