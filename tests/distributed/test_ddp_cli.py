"""DDP on CPU with gloo through the real command line, as subprocesses:

- `codecplatform fit` with ``trainer.devices=2`` (Lightning re-launches the command per rank);
- two `experiments/launch/torchrun.sh` processes on 127.0.0.1 as two "nodes" (``--nnodes=2``);
- a run killed (SIGKILL) after its last.ckpt was written, resumed with ``--ckpt_path``.

The tiny EnCodec trains with its family's generator EMA, discriminator per bandwidth and balancer,
plus schedulers on both optimizers and every codebook entry replaced at every step (global random
draws, broadcast from rank zero).

Each rank records the cut ids and content hash of every training batch (``ddp_helpers``): ranks
see disjoint cuts within an epoch and the same number of batches, end with identical weights and
codebooks, only rank zero logs to MLflow, and a resumed run trains on exactly the batches the
uninterrupted run trained on, rank by rank, and ends in its checkpoint (tests/checkpoint_diff.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_diff import assert_same_training_state
from ddp_helpers import read_batches
from mlflow.tracking import MlflowClient
from synthetic_audio import write_tones

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
BIN = Path(sys.executable).parent
MAX_BATCHES = 4  # 7 train files x 2 windows / (2 per batch x 2 ranks) = 3 batches per epoch: crosses one epoch end
HANG_AT = 2  # the killed run stops (and is killed) at the start of this batch: last.ckpt holds batch 1's end
SCHEDULER = json.dumps({"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.9}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def fit_args(manifests: dict[str, Path], out: Path, hang_at: int | None = None, mlflow: bool = False) -> list[str]:
    """Arguments after `fit --config <experiment>`: the tiny EnCodec on ``manifests``, recorded into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    recorder = {"class_path": "ddp_helpers.BatchRecorder", "init_args": {"out_dir": str(out), "hang_at": hang_at}}
    return [
        "--config",
        str(EXPERIMENTS / "tiny" / "encodec.yaml"),
        "--data.class_path=ddp_helpers.RecordingDataModule",
        f"--data.init_args.train_cuts={manifests['train']}",
        f"--data.init_args.val_cuts={manifests['val']}",
        "--data.init_args.test_cuts=null",
        f"--model.init_args.max_batches={MAX_BATCHES}",
        "--trainer.strategy=ddp_find_unused_parameters_true",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=2",  # validation (and last.ckpt) after batches 2 and 4
        f"--model.init_args.generator_scheduler={SCHEDULER}",
        f"--model.init_args.discriminator_scheduler={SCHEDULER}",
        "--model.init_args.codec.init_args.quantizer.init_args.threshold_ema_dead_code=1000",
        f"--trainer.callbacks+={json.dumps(recorder)}",
        *([] if mlflow else ["--trainer.logger=false"]),
    ]


def start(command: list[str], workdir: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in ``workdir`` in a new session (process group), output to ``log`` (a file, not
    a pipe: an unread pipe fills up and blocks a rank in the middle of a collective)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env or environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    process.log_path = log
    return process


def ddp_fit(workdir: Path, args: list[str], log_name: str = "fit.log") -> subprocess.Popen:
    """`codecplatform fit` with two CPU processes, started in ``workdir``."""
    command = [str(BIN / "codecplatform"), "fit", "--config", str(EXPERIMENTS / "encodec" / "24khz_mono.yaml")]
    command += [*args, "--trainer.devices=2", "--trainer.accelerator=cpu"]
    return start(command, workdir, workdir / log_name)


def stop(process: subprocess.Popen) -> None:
    """End ``process`` and its process group: SIGTERM (torchrun passes it on to its workers), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def finish(*processes: subprocess.Popen, timeout: float = 240) -> None:
    """Wait for all ``processes``; all must exit with 0. On a failure or after ``timeout`` s the others are
    stopped (a rank whose peer died would wait forever) and the logs' ends are shown."""
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in processes:
            stop(p)
    logs = "\n".join(f"--- {p.log_path}\n" + p.log_path.read_text()[-3000:] for p in processes)
    assert all(p.returncode == 0 for p in processes), f"return codes {[p.returncode for p in processes]}:\n{logs}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """8 one-second tones at 24 kHz: 7 train files (14 windows of 0.5 s per epoch), 1 val."""
    from datamodules.manifests import load_cuts, prepare_manifests

    root = tmp_path_factory.mktemp("corpus")
    write_tones(root / "wav", 24000, 1, n_files=8)
    manifests = prepare_manifests(root / "wav", root / "manifests", val_fraction=0.2, test_fraction=0.0, seed=0)
    assert len(load_cuts(manifests["train"])) == 7  # the batch counts below assume it
    return manifests


@pytest.fixture(scope="module")
def killed_run(corpus, tmp_path_factory):
    """(work folder, process) of a 2-process fit that stops at the start of batch HANG_AT, where
    test_killed_run_resumes_with_the_same_batches kills it; started beside the reference run."""
    workdir = tmp_path_factory.mktemp("killed")
    process = ddp_fit(workdir, fit_args(corpus, workdir / "killed", hang_at=HANG_AT), "killed.log")
    yield workdir, process
    stop(process)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, empty_mlflow_store, killed_run) -> Path:
    """An uninterrupted 2-process fit of MAX_BATCHES batches, logging to MLflow; its work folder. It runs
    beside ``killed_run`` (started first): Lightning starts the second rank once the first has imported
    everything and read its config, each leaving a core idle, so two runs side by side take not much
    longer than one."""
    workdir = tmp_path_factory.mktemp("reference")
    shutil.copyfile(empty_mlflow_store, workdir / "mlflow.db")  # the logger's store, empty (tests/conftest.py)
    finish(ddp_fit(workdir, fit_args(corpus, workdir / "record", mlflow=True)))
    return workdir


def per_rank(record: Path) -> list[list[dict]]:
    return [read_batches(record / f"rank{rank}.jsonl") for rank in (0, 1)]


def assert_disjoint_equal_counts(batches: list[list[dict]]) -> None:
    """Both ranks trained MAX_BATCHES batches, epochs ending at the same batch (one epoch end is
    crossed); within an epoch no cut went to both ranks."""
    for rank, records in enumerate(batches):
        assert [r["index"] for r in records] == list(range(MAX_BATCHES)), f"rank {rank}: {records}"
        assert all(len(r["ids"]) == len(r["hashes"]) == 2 for r in records)
    epochs = [[r["epoch"] for r in records] for records in batches]
    assert epochs[0] == epochs[1] and epochs[0][-1] == 1, epochs  # same batches per epoch on both ranks
    for epoch in set(epochs[0]):
        ids = [{i for r in records if r["epoch"] == epoch for i in r["ids"]} for records in batches]
        assert ids[0] and ids[1] and not ids[0] & ids[1], f"epoch {epoch}: ranks share {ids[0] & ids[1]}"


def same(a: object, b: object) -> bool:
    """Equal tensors (bitwise) or equal plain values (e.g. the balancer's ``_extra_state``)."""
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def assert_identical_state(record: Path) -> dict[str, torch.Tensor]:
    rank0, rank1 = (torch.load(record / f"rank{rank}.pt") for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    codebooks = [k for k in rank0 if k.endswith(".embed") or "cluster_size" in k]
    assert codebooks, "expected EMA codebook buffers in the state dict"
    differ = [k for k in rank0 if not same(rank0[k], rank1[k])]
    assert not differ, f"differ between ranks: {differ}"
    assert int(rank0["batch_counter"]) == MAX_BATCHES
    assert bool(rank0["codec.quantizer.layers.0.initialized"])  # k-means init ran (synchronized)
    return rank0


@pytest.mark.slow
def test_two_process_fit_through_the_cli(reference):
    record = reference / "record"
    assert_disjoint_equal_counts(per_rank(record))
    assert_identical_state(record)
    client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, "only rank zero may create an MLflow run"
    history = client.get_metric_history(runs[0].info.run_id, "train/g/mel")
    assert len(history) == MAX_BATCHES  # logged once per batch: by one rank


@pytest.mark.slow
def test_two_node_torchrun_launch(corpus, reference, tmp_path):
    """Two node ranks of one process each on 127.0.0.1, through experiments/launch/torchrun.sh:
    the same per-rank batches as the 2-device run, identical weights, num_nodes=2 taken from torchrun."""
    record = tmp_path / "record"
    env = environment()
    env.update(
        NNODES="2",
        NPROC_PER_NODE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        TORCHRUN=str(BIN / "torchrun"),
    )
    config = str(EXPERIMENTS / "encodec" / "24khz_mono.yaml")
    args = [*fit_args(corpus, record), "--trainer.precision=32-true"]  # tiny override: accelerator cpu
    script = str(EXPERIMENTS / "launch" / "torchrun.sh")
    nodes = [
        start(["bash", script, config, *args], tmp_path, tmp_path / f"node{node}.log", dict(env, NODE_RANK=str(node)))
        for node in (0, 1)
    ]
    finish(*nodes)
    batches = per_rank(record)
    assert_disjoint_equal_counts(batches)
    assert batches == per_rank(reference / "record")  # same sharding as 2 devices on one node
    assert_identical_state(record)
    layouts = [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert layouts == [{"world_size": 2, "num_nodes": 2, "node_rank": r, "devices": 1} for r in (0, 1)]


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_batches(corpus, reference, killed_run):
    """SIGKILL both ranks at the start of batch 2 (last.ckpt holds batch 1's end), resume from
    last.ckpt: every rank trains on the batches 2.. the uninterrupted run trained on."""
    hang_at = HANG_AT
    workdir, process = killed_run
    killed = workdir / "killed"
    deadline = time.monotonic() + 240
    try:
        while not all((killed / f"ready{rank}").exists() for rank in (0, 1)):
            if process.poll() is not None:
                pytest.fail("the run ended before it was killed:\n" + process.log_path.read_text()[-4000:])
            assert time.monotonic() < deadline, "the run did not reach the batch to kill it at"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its rank-1 child (one process group)
        process.wait(timeout=60)
    finally:
        stop(process)
    (checkpoint,) = workdir.glob("outputs/**/last.ckpt")
    assert int(torch.load(checkpoint, weights_only=False)["state_dict"]["batch_counter"]) == hang_at

    resumed = workdir / "resumed"
    finish(ddp_fit(workdir, [*fit_args(corpus, resumed), f"--ckpt_path={checkpoint}"], "resumed.log"))
    expected = per_rank(reference / "record")
    for rank, (before, after) in enumerate(zip(per_rank(killed), per_rank(resumed), strict=True)):
        assert before == expected[rank][:hang_at]
        assert after == expected[rank][hang_at:], f"rank {rank} resumed at another sampler position"
    assert_identical_state(resumed)
    # the whole training state (rank zero's checkpoint: weights, EMA, D copies, both optimizers and
    # schedulers, loops, sampler, random states) equals the uninterrupted run's, bit for bit
    state = assert_same_training_state(
        final_checkpoint(workdir), final_checkpoint(reference), expect=["codec_ema.", "gan.discriminator.nq1."]
    )
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [MAX_BATCHES] * 2


def final_checkpoint(workdir: Path) -> Path:
    """The checkpoint of the end of the fit (batch MAX_BATCHES) under ``workdir``."""
    ends = [
        path
        for path in workdir.glob("**/*.ckpt")
        if int(torch.load(path, weights_only=True)["state_dict"]["batch_counter"]) == MAX_BATCHES
    ]
    assert ends, f"no checkpoint of batch {MAX_BATCHES} under {workdir}"
    return ends[0]
