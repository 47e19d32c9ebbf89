"""num_nodes and devices from torchrun / SLURM (codecplatform/launch.py): detection as Lightning
detects the launchers, `auto` filled in, explicit values checked against the launcher with errors
naming both, and the values given to Lightning pass its own launcher checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from codecplatform.cli import CodecCLI, expand_args
from codecplatform.launch import LaunchEnvironment, LaunchTrainer, detect_launch, resolve_nodes_and_devices

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# what `torchrun --nnodes=2 --nproc_per_node=4` sets for the worker of global rank 5
TORCHRUN = {
    "TORCHELASTIC_RUN_ID": "none",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_WORLD_SIZE": "2",
    "RANK": "5",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}
# what `srun` sets under `sbatch --nodes=2 --ntasks-per-node=4` for task 5
SLURM = {
    "SLURM_NTASKS": "8",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NAME": "codecplatform",
    "SLURM_JOB_ID": "1234",
    "SLURM_NODELIST": "gpu[01-02]",
}
# what Lightning's own launcher sets in the processes it starts for `devices=2` (no external launcher)
LIGHTNING_CHILD = {"WORLD_SIZE": "2", "LOCAL_RANK": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1"}


def test_detects_torchrun_and_slurm():
    assert detect_launch(TORCHRUN) == LaunchEnvironment("torchrun", 2, 4, "WORLD_SIZE=8, LOCAL_WORLD_SIZE=4")
    assert detect_launch(SLURM) == LaunchEnvironment("slurm", 2, 4, "SLURM_NNODES=2, SLURM_NTASKS_PER_NODE=4")
    without_per_node = {k: v for k, v in SLURM.items() if k != "SLURM_NTASKS_PER_NODE"}
    assert detect_launch(without_per_node).devices_per_node == 4  # SLURM_NTASKS / SLURM_NNODES
    # torchrun inside a SLURM allocation: torchrun decides, as in Lightning
    assert detect_launch({**SLURM, **TORCHRUN}).launcher == "torchrun"


@pytest.mark.parametrize(
    "environ",
    [{}, LIGHTNING_CHILD, {**SLURM, "SLURM_JOB_NAME": "interactive"}, {**SLURM, "SLURM_JOB_NAME": "bash"}],
    ids=["plain", "lightning-child", "slurm-interactive", "slurm-bash"],
)
def test_no_launcher(environ):
    assert detect_launch(environ) is None


def test_broken_launcher_environments_are_named():
    with pytest.raises(ValueError, match="WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4"):
        detect_launch({**TORCHRUN, "WORLD_SIZE": "6"})
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE is not set"):
        detect_launch({k: v for k, v in TORCHRUN.items() if k != "LOCAL_WORLD_SIZE"})
    uneven = {k: v for k, v in SLURM.items() if k != "SLURM_NTASKS_PER_NODE"} | {"SLURM_NTASKS": "7"}
    with pytest.raises(ValueError, match="SLURM_NTASKS=7 tasks on SLURM_NNODES=2 nodes is uneven"):
        detect_launch(uneven)
    with pytest.raises(ValueError, match="SLURM_NNODES='two' is not an integer"):
        detect_launch({**SLURM, "SLURM_NNODES": "two"})


@pytest.mark.parametrize("environ", [TORCHRUN, SLURM], ids=["torchrun", "slurm"])
def test_auto_takes_the_launchers_numbers(environ):
    assert resolve_nodes_and_devices("auto", "auto", environ) == (2, 4)
    assert resolve_nodes_and_devices("auto", -1, environ) == (2, 4)
    # explicit values that agree are kept as given (GPU ids stay ids)
    assert resolve_nodes_and_devices(2, 4, environ) == (2, 4)
    assert resolve_nodes_and_devices(2, [0, 1, 2, 3], environ) == (2, [0, 1, 2, 3])
    assert resolve_nodes_and_devices("auto", "0,1,2,3", environ) == (2, "0,1,2,3")


def test_contradictions_name_both_values():
    with pytest.raises(ValueError, match=r"trainer.num_nodes=1 in the config, but torchrun started 2 node\(s\)"):
        resolve_nodes_and_devices(1, "auto", TORCHRUN)
    with pytest.raises(ValueError, match=r"trainer.devices=2 in the config, but slurm started 4 process\(es\)"):
        resolve_nodes_and_devices("auto", 2, SLURM)
    with pytest.raises(ValueError, match=r"trainer.devices=\[0, 1\] in the config, but torchrun started 4"):
        resolve_nodes_and_devices(2, [0, 1], TORCHRUN)


def test_without_a_launcher():
    assert resolve_nodes_and_devices("auto", "auto", {}) == (1, "auto")  # Lightning's own auto
    assert resolve_nodes_and_devices(1, 2, LIGHTNING_CHILD) == (1, 2)
    # several nodes by hand: fine with NODE_RANK and MASTER_ADDR, else every node would be node 0
    assert resolve_nodes_and_devices(2, 1, {"NODE_RANK": "1", "MASTER_ADDR": "node0"}) == (2, 1)
    with pytest.raises(ValueError, match="trainer.num_nodes=2 but no launcher was detected"):
        resolve_nodes_and_devices(2, 1, {})
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        resolve_nodes_and_devices(0, 1, {})
    with pytest.raises(ValueError, match="trainer.devices='many'"):
        resolve_nodes_and_devices(1, "many", TORCHRUN)


@pytest.fixture(autouse=True)
def keep_rank_zero():
    """A Trainer made under a fake launcher environment sets the process-wide rank of
    ``rank_zero_only`` (to 5, 3, ...): restore it, or later tests' loggers stay silent."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    rank = getattr(rank_zero_only, "rank", 0)
    yield
    rank_zero_only.rank = rank


def cpu_trainer(trainer_class: type[Trainer], **kwargs) -> Trainer:
    return trainer_class(accelerator="cpu", strategy="ddp", logger=False, enable_checkpointing=False, **kwargs)


@pytest.mark.parametrize(
    ("environ", "environment_class"),
    [(TORCHRUN, TorchElasticEnvironment), (SLURM, SLURMEnvironment)],
    ids=["torchrun", "slurm"],
)
def test_lightning_accepts_what_launch_trainer_resolves(monkeypatch, environ, environment_class):
    """Lightning checks num_nodes x devices against the launcher only when it starts the run; the
    check is called here directly. A plain Trainer with its defaults fails it: that is the hang or
    error that LaunchTrainer's ``auto`` prevents."""
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    trainer = cpu_trainer(LaunchTrainer, num_nodes="auto", devices="auto")
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, environment_class)
    assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank) == (5, 1, 1)
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)

    plain = cpu_trainer(Trainer, devices=1)
    with pytest.raises(ValueError, match="does not match"):
        environment.validate_settings(num_devices=plain.num_devices, num_nodes=plain.num_nodes)


def cli_args(manifests: dict[str, Path], *overrides: str) -> list[str]:
    """CodecCLI arguments (run=False: no subcommand) for the tiny EnCodec on ``manifests``."""
    return expand_args(
        [
            "--config",
            str(EXPERIMENTS / "encodec" / "24khz_mono.yaml"),
            "--config",
            str(EXPERIMENTS / "tiny" / "encodec.yaml"),
            *[f"--data.init_args.{split}_cuts={path}" for split, path in manifests.items()],
            "--trainer.logger=false",
            *overrides,
        ]
    )


def test_cli_trainer_takes_nodes_from_torchrun(monkeypatch, make_manifests, in_tmp_dir):
    manifests = make_manifests(24000, 1)
    for key, value in {**TORCHRUN, "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    cli = CodecCLI(args=cli_args(manifests, "--trainer.num_nodes=auto", "--trainer.devices=auto"), run=False)
    assert isinstance(cli.trainer, LaunchTrainer)
    assert (cli.trainer.num_nodes, cli.trainer.num_devices, cli.trainer.global_rank) == (2, 2, 3)
    with pytest.raises(ValueError, match=r"trainer.num_nodes=3 in the config, but torchrun started 2 node\(s\)"):
        CodecCLI(args=cli_args(manifests, "--trainer.num_nodes=3", "--trainer.devices=auto"), run=False)


def test_ddp_config_leaves_nodes_and_devices_to_the_launcher():
    trainer = yaml.safe_load((EXPERIMENTS / "launch" / "ddp.yaml").read_text())["trainer"]
    assert trainer["num_nodes"] == "auto" and trainer["devices"] == "auto"
    assert trainer["strategy"] == "ddp_find_unused_parameters_true"  # what GANCodecModule needs


def fake_command(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_slurm_script_starts_one_fit_per_task_with_the_first_node_as_master(tmp_path):
    """Runs experiments/launch/slurm.sbatch as the batch step would, with stand-ins for `scontrol`
    (the node list) and `srun` (records what it would start)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    fake_command(fake, "scontrol", 'test "$*" = "show hostnames gpu[07-08]" && printf "gpu07\\ngpu08\\n"\n')
    fake_command(fake, "srun", f'printf "%s\\n" "$@" > {tmp_path}/srun_args\nenv > {tmp_path}/srun_env\n')
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "81234",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_CPUS_PER_TASK": "6",
    }
    script = EXPERIMENTS / "launch" / "slurm.sbatch"
    result = subprocess.run(["bash", str(script), "exp.yaml", "--trainer.max_steps=5"], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "srun_args").read_text().split("\n")[:-1]
    assert args == [
        "--kill-on-bad-exit=1",
        "codecplatform",
        "fit",
        "--config",
        "exp.yaml",
        "--config",
        "experiments/launch/ddp.yaml",
        "--trainer.max_steps=5",
    ]
    srun_env = dict(line.split("=", 1) for line in (tmp_path / "srun_env").read_text().splitlines() if "=" in line)
    assert srun_env["MASTER_ADDR"] == "gpu07"
    assert srun_env["MASTER_PORT"] == str(15000 + 81234 % 20000)
    assert srun_env["OMP_NUM_THREADS"] == "6"
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8"):  # one task per GPU
        assert line in lines
    no_config = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert no_config.returncode == 2 and "usage: sbatch experiments/launch/slurm.sbatch CONFIG" in no_config.stderr


def test_torchrun_script_passes_the_node_layout(tmp_path):
    """experiments/launch/torchrun.sh with a stand-in for torchrun that records its arguments."""
    fake_command(tmp_path, "torchrun", f'printf "%s\\n" "$@" > {tmp_path}/args\n')
    env = dict(os.environ, TORCHRUN=str(tmp_path / "torchrun"), NNODES="3", NODE_RANK="2", NPROC_PER_NODE="4")
    env.update(MASTER_ADDR="10.1.1.1", MASTER_PORT="29999")
    script = EXPERIMENTS / "launch" / "torchrun.sh"
    result = subprocess.run(["bash", str(script), "exp.yaml", "--seed_everything=3"], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().split("\n")[:-1] == [
        "--nnodes=3",
        "--node_rank=2",
        "--nproc_per_node=4",
        "--master_addr=10.1.1.1",
        "--master_port=29999",
        "-m",
        "codecplatform.cli",
        "fit",
        "--config",
        "exp.yaml",
        "--config",
        str(EXPERIMENTS / "launch" / "ddp.yaml"),
        "--seed_everything=3",
    ]
