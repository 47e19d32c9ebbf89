"""Rate-quality comparison across MLflow runs, and the MLflow experiment set up for comparing.

    codecplatform compare [--tracking_uri URI] [--experiment NAME] [--filter family=dac ...]
                          [--metrics mel_distance si_sdr ...] [--out_dir comparison] [--no_log]

reads the runs of an experiment (default ``codecplatform``), keeps those matching the filters and
draws, for each evaluation metric, its value against the bitrate: one line per run, coloured by the
run's ``family`` tag. The points are the per-bitrate metrics that ``codecplatform test`` logs
(:mod:`codecplatform.lightning.evaluation`): ``test/<kbps>kbps/<metric>``, e.g.
``test/6kbps/mel_distance``; x is the nominal bitrate of the label. Where entropy coding ran, the
same run also holds ``test/<kbps>kbps/effective_kbps`` (:data:`EFFECTIVE_KBPS`: the bitrate of the
entropy-coded bitstream at that operating point); those points are drawn a second time at their
effective bitrate, dashed. Written to ``--out_dir``:

  ``rate_quality.png``   the curves (matplotlib, Agg);
  ``rate_quality.md``    the runs (id, family, sample rate, ...) and one table run x bitrate per metric;
  ``rate_quality.json``  the same numbers, for scripts.

Unless ``--no_log``, the three files are logged as artifacts (under ``comparison/``) of a new run in
the (first) experiment, tagged ``codecplatform.kind=comparison`` (such runs are never compared
themselves), with the table as the run's description. ``notebooks/rate_quality.ipynb`` draws the
same with :func:`collect`, :func:`plot` and :func:`markdown`.

Filters: ``--filter KEY=VALUE`` is a tag equality (``family=dac``, ``sample_rate=24000``; a key
may name ``params.``/``attributes.`` instead); anything else given to ``--filter`` (or
``--filter_string``) is an MLflow search filter as is (``"tags.family = 'dac' and metrics.`test/si_sdr` > 3"``).
Several filters must all hold.

The experiment: :func:`prepare_experiment` (used by :class:`codecplatform.tracking.MLflowLogger` when
it opens the experiment) tags it ``mlflow.experimentKind = custom_model_development`` (MLflow 3: a
model-training experiment, whose page is its runs, not the GenAI overview) and saves a runs-table
view, "codec quality" (:func:`runs_view`), that shows the family, bitrate tags and the test metrics
at the full bitrate as columns. This module imports neither Lightning nor torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "codecplatform"
STAGES = ("test", "val")
#: The per-bitrate metric a run logs where entropy coding ran: the effective bitrate (kbps) of the
#: entropy-coded bitstream at that operating point (``test/<kbps>kbps/effective_kbps``); the Opus and MP3
#: rows (:mod:`codecplatform.metrics.classical`) log their true bitrate under the same name.
EFFECTIVE_KBPS = "effective_kbps"
#: Metrics drawn by default, in this order, where at least one run has them.
DEFAULT_METRICS = (
    "mel_distance",
    "stft_distance",
    "mel_distance_44k",
    "stft_distance_44k",
    "si_sdr",
    "visqol_audio",
    "visqol_speech",
    "pesq",
    "stoi",
    "dnsmos_ovrl",
    "dnsmos_sig",
    "dnsmos_bak",
    "dnsmos_p808",
    "codebook_efficiency",
)
HIGHER_IS_BETTER = {
    "si_sdr",
    "visqol_audio",
    "visqol_speech",
    "pesq",
    "stoi",
    "dnsmos_ovrl",
    "dnsmos_sig",
    "dnsmos_bak",
    "dnsmos_p808",
    "codebook_efficiency",
    "codebook_entropy",
}
LOWER_IS_BETTER = {"mel_distance", "stft_distance", "mel_distance_44k", "stft_distance_44k", "codebook_dead_codes"}
#: Run tags shown in the runs table of the Markdown output (``describe()`` of the codec, see
#: :meth:`codecplatform.models.base.AudioCodec.describe`).
DESCRIBE_TAGS = ("family", "sample_rate", "channels", "frame_rate", "max_kbps")
KIND_TAG = "codecplatform.kind"
COMPARISON_KIND = "comparison"
COMPARED_RUNS_TAG = "codecplatform.compared_runs"
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI (Markdown)
#: MLflow 3's experiment-kind tag and its value for model training (``ExperimentKind`` in the UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
#: The UI's saved views of the runs table are experiment tags ``<prefix><view id>``; the view opens at
#: ``#/experiments/<id>/runs?viewStateShareKey=<view id>`` or from the page's **Views** menu.
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_ID = "codecplatform-quality"
VIEW_NAME = "codec quality"
LEADERBOARD_VIEW_ID = "codecplatform-leaderboard"  # benchmarks/leaderboard.py's per-bitrate view
#: The columns of that view: describe() tags, then the test metrics at the full bitrate.
VIEW_TAGS = ("family", "sample_rate", "max_kbps")
VIEW_METRICS = (
    "test/mel_distance",
    "test/stft_distance",
    "test/si_sdr",
    "test/visqol_audio",
    "test/visqol_speech",
    "test/codebook_efficiency",
    "val/mel_distance",
)
_PER_BITRATE = re.compile(r"^(?P<stage>[a-z]+)/(?P<kbps>\d+(?:\.\d+)?)kbps/(?P<name>[^/]+)$")
_SIMPLE_FILTER = re.compile(r"^\s*(?P<key>[A-Za-z_][\w.\-/]*)\s*=\s*(?P<value>[^'\"=<>!`]*?)\s*$")


class CompareError(Exception):
    """A comparison that cannot be made (unknown experiment, no matching runs, ...): the message says why."""


# -- the data ----------------------------------------------------------------------------------
@dataclass
class Point:
    """One bitrate of one run: ``label`` (``"6kbps"``), nominal ``kbps``, ``effective_kbps`` (entropy
    coding; None where it did not run) and ``metrics`` (name -> value)."""

    label: str
    kbps: float
    effective_kbps: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunCurves:
    run_id: str
    run_name: str
    experiment_id: str
    family: str
    tags: dict[str, str]
    points: list[Point]  # ascending nominal kbps

    @property
    def label(self) -> str:
        return f"{self.run_name} ({self.family})" if self.run_name else f"{self.run_id[:8]} ({self.family})"

    def metric_names(self) -> list[str]:
        return sorted({name for p in self.points for name in p.metrics})


@dataclass
class Comparison:
    tracking_uri: str
    experiments: dict[str, str]  # id -> name
    filter_string: str
    stage: str
    runs: list[RunCurves]
    skipped: list[dict[str, str]]  # runs without per-bitrate metrics: run_id, run_name, family, reason

    def families(self) -> list[str]:
        return sorted({run.family for run in self.runs})

    def metrics(self, wanted: list[str] | tuple[str, ...] | None = None) -> list[str]:
        """``wanted`` in that order, each of which some run must have (CompareError naming an unknown
        one and its closest match: a typo is not dropped silently); default: those of
        :data:`DEFAULT_METRICS` that some run has."""
        present = {name for run in self.runs for name in run.metric_names()}
        if not wanted:
            return [name for name in DEFAULT_METRICS if name in present]
        for name in wanted:
            if name not in present:
                close = difflib.get_close_matches(name, sorted(present), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CompareError(
                    f"unknown metric {name!r}{hint}: the compared runs have {', '.join(sorted(present)) or 'none'}"
                )
        return list(dict.fromkeys(wanted))

    def has_effective(self) -> bool:
        return any(p.effective_kbps is not None for run in self.runs for p in run.points)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["families"] = self.families()
        return data


def per_bitrate_points(metrics: dict[str, float], stage: str = "test") -> list[Point]:
    """The per-bitrate points of a run's (latest) metrics ``<stage>/<kbps>kbps/<name>``, ascending kbps."""
    points: dict[str, Point] = {}
    for key, value in metrics.items():
        match = _PER_BITRATE.match(key)
        if match is None or match["stage"] != stage:
            continue
        label = f"{match['kbps']}kbps"
        point = points.setdefault(label, Point(label=label, kbps=float(match["kbps"])))
        if match["name"] == EFFECTIVE_KBPS:
            point.effective_kbps = float(value)
        else:
            point.metrics[match["name"]] = float(value)
    return sorted((p for p in points.values() if p.metrics), key=lambda p: p.kbps)


def filter_string(filters: list[str] | tuple[str, ...] = (), raw: str | None = None) -> str:
    """MLflow search filter of ``--filter`` items (``key=value``: a tag unless the key starts with
    ``tags.``/``params.``/``attributes.``; anything else: a filter as is) and ``raw``, joined by ``and``."""
    parts = []
    for item in filters:
        match = _SIMPLE_FILTER.match(item)
        if match is None:
            parts.append(item.strip())
            continue
        key, value = match["key"], match["value"]
        kind, _, name = key.partition(".")
        if kind not in ("tags", "params", "attributes") or not name:
            kind, name = "tags", key
        column = name if kind == "attributes" else f"`{name}`"
        parts.append(f"{kind}.{column} = '{value}'")
    if raw and raw.strip():
        parts.append(raw.strip())
    return " and ".join(f"({p})" if " or " in p.lower() else p for p in parts)


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a relative sqlite path is
    made absolute, and must exist (MLflow would silently create an empty store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :]).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.is_file():
            raise CompareError(f"no MLflow store at {path} ({uri}): give --tracking_uri")
        uri = prefix + str(path.resolve())
    return uri


def find_experiments(client: Any, names: list[str]) -> dict[str, str]:
    """Experiment id -> name for each of ``names`` (a name, or an id); CompareError for an unknown one."""
    found: dict[str, str] = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None and name.isdigit():
            try:
                experiment = client.get_experiment(name)
            except Exception:  # noqa: BLE001 (MlflowException: no such id)
                experiment = None
        if experiment is None or experiment.lifecycle_stage == "deleted":
            known = sorted(e.name for e in client.search_experiments(max_results=50))
            raise CompareError(f"unknown experiment {name!r}; this store has: {', '.join(known) or 'none'}")
        found[experiment.experiment_id] = experiment.name
    return found


def _search_all(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def collect(
    tracking_uri: str | None = None,
    experiments: list[str] | tuple[str, ...] = (DEFAULT_EXPERIMENT,),
    filters: list[str] | tuple[str, ...] = (),
    raw_filter: str | None = None,
    stage: str = "test",
    client: Any = None,
) -> Comparison:
    """The per-bitrate curves of the matching runs. CompareError: unknown experiment, no run matches,
    or none of those that match has per-bitrate metrics; runs without them are listed in ``skipped``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if stage not in STAGES:
        raise CompareError(f"stage must be one of {STAGES}, got {stage!r}")
    uri = resolve_tracking_uri(tracking_uri) if client is None else (tracking_uri or "")
    client = client or MlflowClient(uri)
    found = find_experiments(client, list(experiments))
    query = filter_string(filters, raw_filter)
    try:
        runs = _search_all(client, list(found), query)
    except MlflowException as error:
        raise CompareError(f"MLflow refused the filter {query!r}: {error.message}") from None
    runs = [run for run in runs if run.data.tags.get(KIND_TAG) != COMPARISON_KIND]
    where = f"experiment {', '.join(repr(n) for n in found.values())}"
    if not runs:
        everything = [r for r in _search_all(client, list(found), "") if r.data.tags.get(KIND_TAG) != COMPARISON_KIND]
        families = sorted({r.data.tags.get("family", "?") for r in everything})
        raise CompareError(
            f"no runs in {where} match {query!r} ({len(everything)} runs there"
            + (f", families: {', '.join(families)})" if everything else ")")
        )
    curves, skipped = [], []
    for run in runs:
        tags = dict(run.data.tags)
        family = tags.get("family", "unknown")
        name = tags.get("mlflow.runName", "")
        points = per_bitrate_points(run.data.metrics, stage)
        if not points:
            reason = f"no {stage}/<kbps>kbps/<metric> metrics (run `codecplatform test` into it)"
            skipped.append({"run_id": run.info.run_id, "run_name": name, "family": family, "reason": reason})
            continue
        curves.append(RunCurves(run.info.run_id, name, run.info.experiment_id, family, tags, points))
    if not curves:
        listed = "; ".join(f"{s['run_id']} ({s['run_name'] or '-'}, {s['family']})" for s in skipped)
        raise CompareError(
            f"none of the {len(runs)} runs matching {query!r} in {where} has per-bitrate {stage} metrics: {listed}"
        )
    return Comparison(uri, found, query, stage, curves, skipped)


# -- the outputs -------------------------------------------------------------------------------
def direction(metric: str) -> str:
    if metric in HIGHER_IS_BETTER:
        return "higher is better"
    if metric in LOWER_IS_BETTER:
        return "lower is better"
    return ""


def family_colours(families: list[str]) -> dict[str, Any]:
    """One colour per family (tab10, in sorted order: the same families get the same colours)."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {family: palette[i % len(palette)] for i, family in enumerate(sorted(families))}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot(comparison: Comparison, metrics: list[str] | None = None, columns: int = 3) -> Any:
    """A matplotlib Figure: one panel per metric, value against kbps (log scale), one line per run
    coloured by family (solid: nominal kbps; dashed, ``x``: effective kbps where entropy coding ran).
    Each panel's lines are in ``ax.lines``; a line's ``gid`` is ``<run id>`` or ``<run id>/effective``."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    names = comparison.metrics(metrics)
    if not names:
        raise CompareError(f"none of the metrics {list(metrics or DEFAULT_METRICS)} is in the compared runs")
    colours = family_colours(comparison.families())
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.4 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    marker_of: dict[str, str] = {}
    per_family: dict[str, int] = {}
    for run in comparison.runs:
        marker_of[run.run_id] = MARKERS[per_family.get(run.family, 0) % len(MARKERS)]
        per_family[run.family] = per_family.get(run.family, 0) + 1
    ticks: list[float] = []
    for kbps in sorted({p.kbps for run in comparison.runs for p in run.points}):
        if not ticks or kbps / ticks[-1] > 1.35:  # labels of close bitrates would overlap on a log axis
            ticks.append(kbps)
    for ax, name in zip(axes, names):
        for run in comparison.runs:
            points = [p for p in run.points if name in p.metrics]
            if not points:
                continue
            style = {"color": colours[run.family], "marker": marker_of[run.run_id]}
            ax.plot([p.kbps for p in points], [p.metrics[name] for p in points], "-", gid=run.run_id, **style)
            effective = [p for p in points if p.effective_kbps is not None]
            if effective:
                ax.plot(
                    [p.effective_kbps for p in effective],
                    [p.metrics[name] for p in effective],
                    "--x",
                    color=style["color"],
                    alpha=0.8,
                    gid=f"{run.run_id}/effective",
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7)
        ax.set_xlabel("kbps")
        hint = direction(name)
        ax.set_title(f"{name} ({hint})" if hint else name, fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=colours[run.family], marker=marker_of[run.run_id], label=run.label)
        for run in comparison.runs
    ]
    if comparison.has_effective():
        handles.append(Line2D([], [], color="grey", linestyle="--", marker="x", label="effective kbps (entropy-coded)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    experiments = ", ".join(comparison.experiments.values())
    figure.suptitle(
        f"rate-quality, {comparison.stage} ({experiments}"
        + (f"; {comparison.filter_string}" if comparison.filter_string else "")
        + ")",
        fontsize=11,
    )
    return figure


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def markdown(comparison: Comparison, metrics: list[str] | None = None) -> str:
    """The runs, then one table run x bitrate per metric (and the effective kbps where entropy coding ran)."""
    names = comparison.metrics(metrics)
    experiments = ", ".join(f"`{n}`" for n in comparison.experiments.values())
    lines = [
        "# Rate-quality comparison",
        "",
        f"{len(comparison.runs)} runs of {experiments}"
        + (f" matching `{comparison.filter_string}`" if comparison.filter_string else "")
        + f"; metrics `{comparison.stage}/<kbps>kbps/<metric>` (x: nominal kbps).",
        "",
        "| run | run id | " + " | ".join(DESCRIBE_TAGS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in DESCRIBE_TAGS) + " |",
    ]
    for run in comparison.runs:
        lines.append(
            f"| {run.run_name or '-'} | `{run.run_id}` | "
            + " | ".join(run.tags.get(t, "-") for t in DESCRIBE_TAGS)
            + " |"
        )
    labels = sorted({(p.kbps, p.label) for run in comparison.runs for p in run.points})
    header = "| run | family | " + " | ".join(f"{kbps:g} kbps" for kbps, _ in labels) + " |"
    rule = "| --- | --- | " + " | ".join("---:" for _ in labels) + " |"

    def table(title: str, value: Any) -> None:
        lines.extend(["", f"## {title}", "", header, rule])
        for run in comparison.runs:
            by_label = {p.label: p for p in run.points}
            cells = [_cell(value(by_label[label])) if label in by_label else "-" for _, label in labels]
            lines.append(f"| {run.run_name or run.run_id[:8]} | {run.family} | " + " | ".join(cells) + " |")

    for name in names:
        hint = direction(name)
        table(f"{name} ({hint})" if hint else name, lambda p, name=name: p.metrics.get(name))
    if comparison.has_effective():
        table("effective kbps (entropy-coded bitstream)", lambda p: p.effective_kbps)
    if comparison.skipped:
        lines.extend(["", "Skipped (no per-bitrate metrics):", ""])
        lines += [
            f"- `{s['run_id']}` {s['run_name'] or '-'} ({s['family']}): {s['reason']}" for s in comparison.skipped
        ]
    return "\n".join(lines) + "\n"


def write(comparison: Comparison, out_dir: str | Path, metrics: list[str] | None = None) -> dict[str, Path]:
    """``rate_quality.png``, ``.md`` and ``.json`` in ``out_dir`` -> their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / "rate_quality.png", "md": out / "rate_quality.md", "json": out / "rate_quality.json"}
    figure = plot(comparison, metrics)
    figure.savefig(paths["png"], dpi=110)  # a Figure without pyplot: Agg, no display needed
    paths["md"].write_text(markdown(comparison, metrics))
    data = comparison.to_json()
    data["metrics"] = comparison.metrics(metrics)
    paths["json"].write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    return paths


def log_comparison(
    comparison: Comparison, paths: dict[str, Path], client: Any = None, run_name: str | None = None
) -> str:
    """A new run in the first compared experiment, tagged ``codecplatform.kind=comparison``, holding the
    files under ``comparison/`` and the table as its description -> its run id."""
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient(comparison.tracking_uri)
    experiment_id = next(iter(comparison.experiments))
    ids = ",".join(run.run_id for run in comparison.runs)
    note = paths["md"].read_text()
    if len(note) > 7000:  # MLflow caps tag values at 8000 characters
        note = note[:7000] + "\n\n(truncated: see the artifact comparison/rate_quality.md)\n"
    tags = {
        KIND_TAG: COMPARISON_KIND,
        COMPARED_RUNS_TAG: ids if len(ids) <= 7000 else ids[:7000] + "...",
        "codecplatform.filter": comparison.filter_string or "(none)",
        "families": ",".join(comparison.families()),
        "stage": comparison.stage,
        NOTE_TAG: note,
    }
    name = run_name or f"rate-quality {' vs '.join(comparison.families())}"
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    try:
        for path in paths.values():
            client.log_artifact(run.info.run_id, str(path), "comparison")
        client.log_metric(run.info.run_id, "compared_runs", len(comparison.runs))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# -- the experiment in the MLflow UI -----------------------------------------------------------
def runs_view() -> dict[str, Any]:
    """The runs-table state of the "codec quality" view: the ``VIEW_TAGS`` and ``VIEW_METRICS`` columns.
    Keys as MLflow's UI stores them (``selectedColumns`` entries ``tags.`family```,
    ``metrics.`test/mel_distance```); unset keys keep the UI's defaults."""
    columns = [f"tags.`{tag}`" for tag in VIEW_TAGS] + [f"metrics.`{key}`" for key in VIEW_METRICS]
    return {"selectedColumns": columns, "orderByKey": "attributes.start_time", "orderByAsc": False}


def leaderboard_view(metric_keys: Iterable[str], names: Sequence[str] = ("mel_distance", "si_sdr")) -> dict[str, Any]:
    """The runs-table state of the "leaderboard" view: the family and bitrate tags, then for each of
    ``names`` its per-bitrate columns ``test/<kbps>kbps/<name>`` found in ``metric_keys``, by bitrate;
    with a run per codec (families and Opus/MP3 alike) the table reads as rate-quality rows."""
    found = [m for m in (_PER_BITRATE.match(k) for k in metric_keys) if m and m["stage"] == "test"]
    columns = [f"tags.`{tag}`" for tag in VIEW_TAGS]
    for name in names:
        labels = sorted({float(m["kbps"]): m.group(0) for m in found if m["name"] == name}.items())
        columns += [f"metrics.`{key}`" for _, key in labels]
    return {"selectedColumns": columns, "orderByKey": "tags.`family`", "orderByAsc": True}


def save_view(client: Any, experiment_id: str, view_id: str, name: str, state: dict[str, Any]) -> None:
    """Save ``state`` as the experiment's runs view ``view_id`` (shown as ``name`` in the UI's Views
    menu), replacing a view of that id."""
    now = int(time.time() * 1000)
    value = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, SAVED_VIEW_PREFIX + view_id, json.dumps(value))


def prepare_experiment(client: Any, experiment_id: str) -> None:
    """Tag the experiment as model training (MLflow 3) and save the "codec quality" runs view, each
    only where the experiment does not have it yet (a user's later choice stays)."""
    tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    if SAVED_VIEW_PREFIX + VIEW_ID not in tags:
        save_view(client, experiment_id, VIEW_ID, VIEW_NAME, runs_view())


def view_url(server: str, experiment_id: str, view_id: str = VIEW_ID) -> str:
    """The UI address of the experiment's runs in a saved view (default "codec quality"; model-training workflow)."""
    query = f"viewStateShareKey={view_id}&{MODEL_TRAINING_QUERY}"
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


#: Where ``make ui`` serves the store; the address the fit summary points to for a local store.
UI_SERVER = "http://127.0.0.1:5000"
#: MLflow 3 keeps the GenAI / model-training switch in the browser's localStorage; this parameter sets it.
MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """The UI address of one run, in the model-training workflow."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_QUERY}"


def ui_server(tracking_uri: str | None) -> str:
    """The UI of a tracking URI: the server itself for ``http(s)://``, else ``make ui``'s address."""
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return UI_SERVER


def ui_url(
    tracking_uri: str = "sqlite:///mlflow.db", experiment: str = DEFAULT_EXPERIMENT, server: str = UI_SERVER
) -> str:
    """What ``make ui`` prints: the address of ``experiment``'s runs in the "codec quality" view in
    model-training mode (:func:`view_url`, the experiment's id looked up in the store); the
    experiment list in that mode while the store or the experiment does not exist yet."""
    fallback = f"{server.rstrip('/')}/#/experiments?{MODEL_TRAINING_QUERY}"
    try:
        uri = resolve_tracking_uri(tracking_uri)  # a missing sqlite file is not created
    except CompareError:
        return fallback
    from mlflow.tracking import MlflowClient

    found = MlflowClient(uri).get_experiment_by_name(experiment)
    return fallback if found is None else view_url(server, found.experiment_id)


# -- command line ------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codecplatform compare",
        description="Rate-quality curves (each test metric against kbps, one line per run, coloured by "
        "family) of MLflow runs: a PNG and a Markdown table in --out_dir, logged as a comparison run.",
    )
    p.add_argument(
        "--tracking_uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument(
        "--experiment",
        action="append",
        default=None,
        help=f"experiment name or id (repeatable; default {DEFAULT_EXPERIMENT})",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE|FILTER",
        help="tag equality (family=dac, sample_rate=24000; params.x=y) or an MLflow filter string; "
        "repeatable, all must hold",
    )
    p.add_argument("--filter_string", default=None, help="an MLflow search filter, e.g. \"tags.family = 'dac'\"")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help=f"per-bitrate metrics to draw (default: those of {', '.join(DEFAULT_METRICS)} present)",
    )
    p.add_argument("--stage", default="test", choices=STAGES, help="test (default) or val metrics")
    p.add_argument(
        "--out_dir", default="comparison", help="folder for rate_quality.{png,md,json} (default: comparison)"
    )
    p.add_argument("--run_name", default=None, help="name of the comparison run")
    p.add_argument("--no_log", action="store_true", help="do not log a comparison run to MLflow")
    return p


def main(argv: list[str] | None = None) -> int:
    """``codecplatform compare``; returns the exit status (0, 1 when no comparison can be made, 2 usage)."""
    p = parser()
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        comparison = collect(
            args.tracking_uri, args.experiment or [DEFAULT_EXPERIMENT], args.filter, args.filter_string, args.stage
        )
        for s in comparison.skipped:
            print(
                f"{p.prog}: skipped run {s['run_id']} ({s['run_name'] or '-'}, {s['family']}): {s['reason']}",
                file=sys.stderr,
            )
        paths = write(comparison, args.out_dir, args.metrics)
        run_id = None if args.no_log else log_comparison(comparison, paths, run_name=args.run_name)
    except CompareError as error:
        print(f"{p.prog}: error: {error}", file=sys.stderr)
        return 1
    families = ", ".join(f"{f}: {sum(r.family == f for r in comparison.runs)}" for f in comparison.families())
    print(f"compared {len(comparison.runs)} runs ({families}); metrics: {', '.join(comparison.metrics(args.metrics))}")
    for path in paths.values():
        print(f"wrote {path}")
    if run_id is not None:
        print(f"logged as run {run_id} (tag {KIND_TAG}={COMPARISON_KIND}), artifacts comparison/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
