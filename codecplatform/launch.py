"""Multi-node launch: the Trainer's ``num_nodes`` and ``devices`` from the launcher's environment.

Lightning reads ranks and the main address from torchrun or SLURM itself, but takes the number of
nodes and of devices per node from its ``Trainer(num_nodes=..., devices=...)`` arguments; when they
disagree with what the launcher started it stops with an error (or, launched by hand, waits
forever for ranks that never come). :class:`LaunchTrainer` (the trainer of ``codecplatform fit``)
accepts ``auto`` for both:

- ``num_nodes: auto``: the launcher's node count; 1 without a launcher.
- ``devices: auto`` (or ``-1``): the launcher's processes per node; without a launcher Lightning's
  own ``auto`` (every device of the accelerator on this machine).
- An explicit value wins when it agrees with the launcher and is a clear error naming both values
  when it does not.

Launchers, detected as Lightning detects them (torchrun first, as it may run inside SLURM):

- torchrun (``TORCHELASTIC_RUN_ID`` set): nodes = ``WORLD_SIZE / LOCAL_WORLD_SIZE``, devices per
  node = ``LOCAL_WORLD_SIZE`` (``--nnodes``, ``--nproc_per_node``).
- SLURM with srun (``SLURM_NTASKS`` set and the job not named ``bash``/``interactive``): nodes =
  ``SLURM_NNODES``, devices per node = ``SLURM_NTASKS_PER_NODE`` (``--nodes``,
  ``--ntasks-per-node``; one task per GPU).

Example launch scripts: ``experiments/launch/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning.pytorch import Trainer

AUTO = "auto"


@dataclass(frozen=True)
class LaunchEnvironment:
    """What an external launcher started.

    Args:
        launcher: ``"torchrun"`` or ``"slurm"``.
        num_nodes: number of nodes (machines).
        devices_per_node: processes per node, one per device.
        source: the environment variables the numbers came from, for messages.
    """

    launcher: str
    num_nodes: int
    devices_per_node: int
    source: str


def _int_var(environ: Mapping[str, str], name: str, launcher: str) -> int:
    value = environ.get(name)
    if value is None:
        raise ValueError(f"{launcher} launch detected but the environment variable {name} is not set")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{launcher} launch: environment variable {name}={value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{launcher} launch: environment variable {name}={value!r} must be >= 1")
    return number


def detect_launch(environ: Mapping[str, str] | None = None) -> LaunchEnvironment | None:
    """The launcher that started this process (see the module docstring), or None.

    Processes started by Lightning's own DDP launcher (``devices > 1`` without an external
    launcher) set none of these variables and give None.
    """
    env = os.environ if environ is None else environ
    if env.get("TORCHELASTIC_RUN_ID") is not None:
        world = _int_var(env, "WORLD_SIZE", "torchrun")
        local = _int_var(env, "LOCAL_WORLD_SIZE", "torchrun")
        if world % local:
            raise ValueError(
                f"torchrun launch: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}; "
                "Lightning needs the same --nproc_per_node on every node"
            )
        return LaunchEnvironment("torchrun", world // local, local, f"WORLD_SIZE={world}, LOCAL_WORLD_SIZE={local}")
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        nodes_var = "SLURM_NNODES" if "SLURM_NNODES" in env else "SLURM_JOB_NUM_NODES"
        nodes = _int_var(env, nodes_var, "SLURM")
        if "SLURM_NTASKS_PER_NODE" in env:
            per_node = _int_var(env, "SLURM_NTASKS_PER_NODE", "SLURM")
            source = f"{nodes_var}={nodes}, SLURM_NTASKS_PER_NODE={per_node}"
        else:
            tasks = _int_var(env, "SLURM_NTASKS", "SLURM")
            if tasks % nodes:
                raise ValueError(
                    f"SLURM launch: SLURM_NTASKS={tasks} tasks on {nodes_var}={nodes} nodes is uneven; "
                    "use #SBATCH --ntasks-per-node (one task per GPU)"
                )
            per_node = tasks // nodes
            source = f"{nodes_var}={nodes}, SLURM_NTASKS={tasks}"
        return LaunchEnvironment("slurm", nodes, per_node, source)
    return None


def _device_count(devices: int | str | list[int]) -> int | None:
    """How many devices a ``Trainer(devices=...)`` value names; None for ``auto``/``-1`` (all)."""
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int):
        return None if devices == -1 else devices
    text = devices.strip()
    if text in (AUTO, "-1"):
        return None
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"trainer.devices={devices!r}: expected auto, a count, or device ids like '0,1'") from None


def resolve_nodes_and_devices(
    num_nodes: int | str,
    devices: int | str | list[int],
    environ: Mapping[str, str] | None = None,
) -> tuple[int, int | str | list[int]]:
    """``(num_nodes, devices)`` to give Lightning's Trainer, with ``auto`` filled in from the launcher.

    Raises:
        ValueError: an explicit value contradicts the launcher (the message names both), or
            ``num_nodes > 1`` without any launcher and without ``NODE_RANK`` (every process would
            take node rank 0 and wait forever for the others).
    """
    env = os.environ if environ is None else environ
    launch = detect_launch(env)
    if num_nodes != AUTO and (not isinstance(num_nodes, int) or num_nodes < 1):
        raise ValueError(f"trainer.num_nodes must be a positive integer or 'auto', got {num_nodes!r}")
    count = _device_count(devices)
    if launch is None:
        if num_nodes == AUTO:
            return 1, devices
        if num_nodes > 1 and ("NODE_RANK" not in env or "MASTER_ADDR" not in env):
            raise ValueError(
                f"trainer.num_nodes={num_nodes} but no launcher was detected (torchrun, SLURM srun): start one "
                "process group per node with torchrun or srun (see experiments/launch/), or by hand with "
                "MASTER_ADDR, MASTER_PORT and NODE_RANK set on every node"
            )
        return num_nodes, devices
    if num_nodes != AUTO and num_nodes != launch.num_nodes:
        raise ValueError(
            f"trainer.num_nodes={num_nodes} in the config, but {launch.launcher} started {launch.num_nodes} "
            f"node(s) ({launch.source}): set trainer.num_nodes: auto (or {launch.num_nodes})"
        )
    if count is not None and count != launch.devices_per_node:
        raise ValueError(
            f"trainer.devices={devices!r} in the config, but {launch.launcher} started "
            f"{launch.devices_per_node} process(es) per node ({launch.source}): set trainer.devices: auto "
            f"(or {launch.devices_per_node})"
        )
    return launch.num_nodes, (launch.devices_per_node if count is None else devices)


class LaunchTrainer(Trainer):
    """Lightning's Trainer whose ``num_nodes`` and ``devices`` may be ``auto`` (see the module
    docstring); every other argument is Lightning's.

    Args:
        num_nodes: nodes (machines); ``auto``: from torchrun/SLURM, 1 without a launcher.
        devices: devices per node; ``auto``/``-1``: from torchrun/SLURM, without a launcher every
            device of the accelerator; or a count, or a list of device ids.
        **kwargs: the other ``lightning.pytorch.Trainer`` arguments.
    """

    def __init__(
        self,
        *,
        num_nodes: int | Literal["auto"] = AUTO,
        devices: list[int] | str | int = AUTO,
        **kwargs: Any,
    ) -> None:
        num_nodes, devices = resolve_nodes_and_devices(num_nodes, devices)
        super().__init__(num_nodes=num_nodes, devices=devices, **kwargs)


__all__ = ["LaunchEnvironment", "LaunchTrainer", "detect_launch", "resolve_nodes_and_devices"]
