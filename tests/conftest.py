"""Shared fixtures: generated audio folders with lhotse manifests, an isolated working directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic_audio import write_tones


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Tiny models run several times faster on one thread (LSTM and small convs spend their time
    in thread synchronisation on a 2-core machine); subprocesses and notebook kernels inherit it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_manifests(tmp_path):
    """make_manifests(sample_rate, channels) -> {"train"|"val"|"test": cut manifest path}."""

    def make(sample_rate: int = 16000, channels: int = 1, n_files: int = 6) -> dict[str, Path]:
        from datamodules.manifests import prepare_manifests

        root = tmp_path / f"audio_{sample_rate}_{channels}"
        write_tones(root / "wav", sample_rate, channels, n_files)
        return prepare_manifests(root / "wav", root / "manifests", val_fraction=0.2, test_fraction=0.2, seed=0)

    return make


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Run in a fresh directory, so mlflow.db, mlruns/ and outputs/ land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store at the installed MLflow's schema, made once per session, to copy
    per test: creating one runs MLflow's migrations (3-6 s), copying it takes milliseconds."""
    import contextlib

    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow_store_template")
    with contextlib.chdir(folder):  # MLflow's "Default" experiment points at ./mlruns: keep it here
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def mlflow_db(in_tmp_dir, empty_mlflow_store) -> Path:
    """``in_tmp_dir`` holding an empty ``mlflow.db`` (a copy of :func:`empty_mlflow_store`): what the
    experiments' logger (``sqlite:///mlflow.db``) opens, for tests about what is trained and logged
    rather than about MLflow making its store. -> the store's path."""
    import shutil

    return Path(shutil.copyfile(empty_mlflow_store, in_tmp_dir / "mlflow.db"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URI of an ``mlflow server`` on 127.0.0.1 with a sqlite store and proxied artifacts in a tmp
    folder, started once per session (it takes 10-30 s): its users (tests/test_mlflow_server.py,
    tests/test_mlflow_ui_browser.py) each log into an experiment of their own."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--app-name",
            "codecplatform",  # what `make ui` serves (codecplatform/ui_app.py)
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "server_artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server's job consumers (huey) end with it
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        import os
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=20)
                time.sleep(1)  # the group's other members end on the same signal
            except subprocess.TimeoutExpired:
                continue
        log.close()


@pytest.fixture(scope="session")
def ddp_fits(tmp_path_factory):
    """The two-rank fits of the DDP tests, run once in one distributed job (see tests/ddp_fits.py)."""
    from ddp_fits import run

    return run(tmp_path_factory.mktemp("ddp_fits"))


@pytest.fixture
def latest_checkpoint():
    """latest_checkpoint(trainer) -> the path of the newest last.ckpt of a finished fit."""

    def find(trainer) -> str:
        paths = [c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path]
        assert paths, "no ModelCheckpoint with save_last wrote a checkpoint"
        return paths[0]

    return find


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``make test`` runs on two workers (pytest-xdist, ``--dist loadgroup``): each test file stays on
    one worker (its module fixtures are built once), and the users of an expensive session fixture
    (the two-rank fits, the mlflow server) share one worker, so it is built once too."""
    shared = ("ddp_fits", "mlflow_server")
    for item in items:
        used = [name for name in shared if name in getattr(item, "fixturenames", ())]
        item.add_marker(pytest.mark.xdist_group(used[0] if used else item.nodeid.split("::")[0]))
