"""``codecplatform`` command line: LightningCLI subcommands plus data preparation.

    codecplatform fit|validate|test|predict --config experiments/encodec/24khz_mono.yaml [--key value ...]
    codecplatform prepare --audio_dir DIR --out_dir DIR
    codecplatform encode in.wav out.cpc --checkpoint model.ckpt [--bandwidth KBPS]   (codecplatform.inference)
    codecplatform decode out.cpc out.wav [--checkpoint model.ckpt]
    codecplatform compare [--experiment NAME] [--filter family=dac] --out_dir DIR   (codecplatform.compare)

Experiment YAMLs hold changes only. A YAML may start with ``_base_: [paths]`` (relative to the
file); those are applied first, in order, then the file itself. Lists are replaced whole by a
later file, so each list (discriminators, callbacks) lives in exactly one file. The composition
is :mod:`codecplatform.config`; here each ``--config FILE`` is expanded into its chain.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from codecplatform.config import expand_config

# Fast start: this module imports neither Lightning nor torch at import time. The light subcommands
# (prepare, compare, import-checkpoint, encode, decode, export) are dispatched by `cli_main` before
# anything of Lightning is imported (importing it takes seconds); `CodecCLI` (a LightningCLI subclass)
# is built on first use, through the module's __getattr__. tests/test_export_and_cli_start.py checks
# that the light subcommands never import Lightning.
USAGE = """usage: codecplatform SUBCOMMAND [options]   (codecplatform SUBCOMMAND --help for its options)

training (LightningCLI; --config experiments/<family>/<variant>.yaml):
  fit, validate, test, predict
light (no Lightning import):
  prepare             audio folder -> lhotse manifests
  encode / decode     audio file <-> .cpc bitstream with a codec checkpoint
  import-checkpoint   official EnCodec / DAC weights -> codec checkpoint
  export              codec checkpoint -> ONNX encoder and decoder (checked with onnxruntime)
  compare             MLflow runs -> rate/quality tables"""
LIGHT_SUBCOMMANDS = ("prepare", "compare", "import-checkpoint", "encode", "decode", "export")

CONFIG_FLAGS = ("--config", "-c")


def _is_config_file(value: str) -> bool:
    if "\n" in value:
        return False
    return value.endswith((".yaml", ".yml")) or Path(value).is_file()


def expand_args(args: list[str]) -> list[str]:
    """Replace each ``--config FILE`` whose file has ``_base_`` by the expanded chain."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        value = None
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        if _is_config_file(value):
            for item in expand_config(value):
                out += ["--config", item]
        else:  # inline YAML (e.g. re-executed by Lightning's DDP launcher after expansion)
            out += ["--config", value]
    return out


_CODEC_CLI: type | None = None


def _codec_cli_class() -> type:
    """Build :class:`CodecCLI` on first use: defining it imports Lightning."""
    global _CODEC_CLI
    if _CODEC_CLI is not None:
        return _CODEC_CLI
    from lightning.pytorch.cli import LightningCLI

    from codecplatform.launch import LaunchTrainer
    from codecplatform.tracking import MLflowSaveConfigCallback

    class CodecCLI(LightningCLI):
        """LightningCLI with manual-optimization modules, MLflow config logging and YAML bases.

        The trainer is :class:`~codecplatform.launch.LaunchTrainer`: ``trainer.num_nodes`` and
        ``trainer.devices`` may be ``auto`` (taken from torchrun or SLURM).
        """

        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("trainer_class", LaunchTrainer)
            kwargs.setdefault("auto_configure_optimizers", False)
            kwargs.setdefault("save_config_callback", MLflowSaveConfigCallback)
            kwargs.setdefault("save_config_kwargs", {"overwrite": True, "save_to_log_dir": False})
            kwargs.setdefault("parser_kwargs", {"default_env": False})
            super().__init__(*args, **kwargs)

        def _parse_ckpt_path(self) -> None:
            """Keep the config as given when ``--ckpt_path`` is set.

            LightningCLI would replace the model's config by the checkpoint's hyperparameters, silently
            dropping command-line changes such as a larger ``max_batches`` when resuming. Here the
            config must describe the checkpoint's model; a mismatch fails when the weights load, naming
            the differing keys.
            """

        def before_instantiate_classes(self) -> None:
            drop_disabled_progress_bars(self.config[self.subcommand] if self.subcommand else self.config)

    CodecCLI.__module__, CodecCLI.__qualname__ = __name__, "CodecCLI"
    _CODEC_CLI = CodecCLI
    return CodecCLI


def __getattr__(name: str) -> Any:
    """``CodecCLI`` is created (and Lightning imported) only when someone asks for it."""
    if name == "CodecCLI":
        return _codec_cli_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def drop_disabled_progress_bars(config: Any) -> None:
    """With ``trainer.enable_progress_bar: false``, remove progress bars from ``trainer.callbacks``
    (the experiments' base list holds one), which Lightning would refuse alongside the flag."""
    from importlib import import_module

    from lightning.pytorch.callbacks import ProgressBar

    trainer = config.get("trainer")
    if trainer is None or trainer.get("enable_progress_bar") is not False or not trainer.get("callbacks"):
        return

    def is_progress_bar(callback: Any) -> bool:
        if isinstance(callback, ProgressBar):
            return True
        module, _, name = str(getattr(callback, "class_path", "")).rpartition(".")
        cls = getattr(import_module(module), name, None) if module else None
        return isinstance(cls, type) and issubclass(cls, ProgressBar)

    trainer["callbacks"] = [c for c in trainer["callbacks"] if not is_progress_bar(c)]


def cli_main(args: list[str] | None = None) -> Any:
    """Entry point used by the console script and by tests (``cli_main(args=[...])``)."""
    from_command_line = args is None
    args = list(sys.argv[1:] if from_command_line else args)
    if args in (["-h"], ["--help"]):  # the overview, without importing Lightning
        print(USAGE)
        return 0
    if args and args[0] == "prepare":
        from datamodules.manifests import prepare_main

        return prepare_main(args[1:])
    if args and args[0] == "compare":
        from codecplatform.compare import main as compare_main

        return compare_main(args[1:])
    if args and args[0] == "import-checkpoint":
        from codecplatform.checkpoints.cli import main as import_checkpoint_main

        return import_checkpoint_main(args[1:])
    if args and args[0] in ("encode", "decode"):
        from codecplatform.inference import decode_main, encode_main

        return (encode_main if args[0] == "encode" else decode_main)(args[1:])
    if args and args[0] == "export":
        from codecplatform.export import main as export_main

        return export_main(args[1:])
    CodecCLI = _codec_cli_class()
    args = expand_args(args)
    if from_command_line:  # LightningCLI reads sys.argv itself (and warns if given both)
        sys.argv = [sys.argv[0], *args]
        return CodecCLI()
    return CodecCLI(args=args)


def main() -> None:
    result = cli_main()
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
