"""``codecplatform`` command line: LightningCLI subcommands plus data preparation.

    codecplatform fit|validate|test|predict --config experiments/encodec/24khz_mono.yaml [--key value ...]
    codecplatform prepare --audio_dir DIR --out_dir DIR
    codecplatform encode in.wav out.cpc --checkpoint model.ckpt [--bandwidth KBPS]   (codecplatform.inference)
    codecplatform decode out.cpc out.wav [--checkpoint model.ckpt]
    codecplatform tokenize --checkpoint model.ckpt --audio_dir DIR --out DIR   (codecplatform.tokenize_corpus)
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

from codecplatform.config import ConfigError, check_config_args, compose_args, expand_config, split_cli_args

# Fast start: this module imports neither Lightning nor torch at import time. The light subcommands
# (prepare, compare, import-checkpoint, encode, decode, tokenize, export) are dispatched by `cli_main` before
# anything of Lightning is imported (importing it takes seconds); `CodecCLI` (a LightningCLI subclass)
# is built on first use, through the module's __getattr__. tests/test_export_and_cli_start.py checks
# that the light subcommands never import Lightning.
USAGE = """usage: codecplatform SUBCOMMAND [options]   (codecplatform SUBCOMMAND --help for its options)

training (LightningCLI; --config experiments/<family>/<variant>.yaml):
  fit, validate, test, predict
light (no Lightning import):
  prepare             audio folder -> lhotse manifests
  encode / decode     audio file <-> .cpc bitstream with a codec checkpoint
  tokenize            a corpus (manifest or folder) -> codes beside its lhotse cuts (resumable)
  import-checkpoint   official EnCodec / DAC weights -> codec checkpoint
  export              codec checkpoint -> ONNX encoder and decoder (checked with onnxruntime)
  compare             MLflow runs -> rate/quality tables"""
LIGHT_SUBCOMMANDS = ("prepare", "compare", "import-checkpoint", "encode", "decode", "tokenize", "export")

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

        #: with ``run=False`` (no subcommand): build the config as this subcommand would (its manifests)
        checked_subcommand: str | None = None

        def parse_arguments(self, parser: Any, args: Any) -> None:
            """Parse; a parser error (jsonargparse prints the usage and exits) becomes a
            :class:`ConfigError` of one line naming the key (see :func:`condense_parser_error`)."""
            import contextlib
            import io

            self._raw_args = list(args) if isinstance(args, list) else list(sys.argv[1:] if args is None else [])
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured):
                    super().parse_arguments(parser, args)
            except SystemExit as exit_:
                text = captured.getvalue()
                if exit_.code not in (0, None) and "error: " in text:
                    raise ConfigError(condense_parser_error(text.rsplit("error: ", 1)[1])) from None
                sys.stderr.write(text)
                raise
            sys.stderr.write(captured.getvalue())

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            drop_disabled_progress_bars(config)
            raw = getattr(self, "_raw_args", [])
            configs, options = split_cli_args(raw[1:] if raw and not raw[0].startswith("-") else raw)
            retarget_sample_rate(config, compose_args(configs)[0], {key for key, _ in options})
            subcommand = self.subcommand or self.checked_subcommand
            if subcommand in ("fit", "validate", "test", "predict"):
                check_manifests(config, subcommand)
            ckpt_path = config.get("ckpt_path") if hasattr(config, "get") else None
            if ckpt_path and str(ckpt_path) not in ("best", "last", "hpc", "registry") and "://" not in str(ckpt_path):
                if not Path(str(ckpt_path)).is_file():
                    raise ConfigError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
            if subcommand in ("validate", "test", "predict") and config.get("ckpt_path"):
                check_checkpoint_codec(config, str(config.get("ckpt_path")))

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


def condense_parser_error(message: str) -> str:
    """jsonargparse's nested error report -> one line: the key (dotted, from the command-line
    override when there is one), the innermost complaint and the given value."""
    import re

    skip = ("Does not validate against", "Subtypes:", "Errors:", "Given value type:", "- Expected a <class 'NoneType'>")
    keys, problems, values = [], [], []
    for line in message.splitlines():
        text = line.strip()
        if not text or text.startswith(skip) or text == "Expected a <class 'NoneType'>":
            continue
        key = re.match(r'^-?\s*Parser key "([^"]+)":?$', text)
        if key:
            keys.append(key.group(1))
        elif text.startswith("Given value:"):
            values.append(text[len("Given value:") :].strip())
        elif not text.startswith(("Problem with given class_path", "- Problem with given class_path")):
            problems.append(text.lstrip("- "))
    nested = re.search(r"NestedArg\(key='([^']+)'", message)
    if keys and nested:
        where = f"{keys[0]}.init_args.{nested.group(1)}"
    else:
        where = ".".join(keys)
    problem = problems[-1] if problems else message.strip().splitlines()[-1]
    value = next((v for v in values if not v.startswith(("NestedArg(", "{", "Namespace("))), None)
    given = f" (given: {value})" if value and value not in problem else ""
    return f"{where}: {problem}{given}" if where else f"{problem}{given}"


CODEC_ARGS = "model.init_args.codec.init_args"
RATE_PARTS = ("model.init_args.reconstruction_losses", "model.init_args.metrics", "model.init_args.test_metrics")


def _dig(data: Any, key: str) -> Any:
    """``data[k1][k2]...`` for the dotted ``key`` over dicts and jsonargparse Namespaces; None if absent."""
    for part in key.split("."):
        if data is None:
            return None
        data = data.get(part) if hasattr(data, "get") else None
    return data


def _rate_keys(config: Any) -> list[str]:
    """Dotted keys of every ``sample_rate`` the codec's rate must equal: the data module's, and each
    reconstruction loss's and metric's that has one."""
    keys = ["data.init_args.sample_rate"] if _dig(config, "data.init_args.sample_rate") is not None else []
    for parts in RATE_PARTS:
        for name, part in (_dig(config, parts) or {}).items():
            if _dig(part, "init_args.sample_rate") is not None:
                keys.append(f"{parts}.{name}.init_args.sample_rate")
    return keys


def _set(config: Any, key: str, value: Any) -> None:
    head, _, last = key.rpartition(".")
    node = _dig(config, head)
    if isinstance(node, dict):
        node[last] = value
    else:
        setattr(node, last, value)


def retarget_sample_rate(config: Any, files: dict[str, Any], given: set[str]) -> None:
    """One setting for the sample rate: ``model.init_args.codec.init_args.sample_rate``.

    When the command line gives the codec another rate than its config files (``files``, composed),
    the data module's, the reconstruction losses' and the metrics' ``sample_rate`` that equal the
    files' rate follow it, unless the command line set them too (``given``: its keys), and the codec's
    ``bandwidths`` are scaled by the same ratio (same codebook counts). Then any ``sample_rate`` that
    differs from the codec's is refused (ConfigError naming both values and the key). Configs without
    a ``Codec`` (code LM, MuCodec stages) are left to their modules' checks."""
    rate = _dig(config, f"{CODEC_ARGS}.sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool):
        return
    file_rate = _dig(files, f"{CODEC_ARGS}.sample_rate")
    keys = _rate_keys(config)
    if isinstance(file_rate, int) and file_rate != rate:
        for key in keys:
            if _dig(config, key) == file_rate and key not in given:
                _set(config, key, rate)
        bandwidths = _dig(config, f"{CODEC_ARGS}.bandwidths")
        if bandwidths and f"{CODEC_ARGS}.bandwidths" not in given:
            _set(config, f"{CODEC_ARGS}.bandwidths", [round(bw * rate / file_rate, 6) for bw in bandwidths])
    for key in keys:
        value = _dig(config, key)
        if value != rate:
            raise ConfigError(
                f"{key}={value} but the codec's sample_rate is {rate} ({CODEC_ARGS}.sample_rate): "
                f"set {key} to {rate}, or set only the codec's rate on the command line and the rest follows"
            )


def check_manifests(config: Any, subcommand: str) -> None:
    """The cut manifests ``subcommand`` reads must exist (fit: train and val, validate: val, test and
    predict: test), named in one line before anything is built; the others are dropped (set to null),
    so ``test`` and ``predict`` need no training manifest and ``fit`` no test manifest."""
    data = _dig(config, "data.init_args")
    if data is None or "train_cuts" not in data:
        return
    needed = {"fit": ("train_cuts", "val_cuts"), "validate": ("val_cuts",), "test": ("test_cuts",)}
    needed = needed.get(subcommand, ("test_cuts",))  # predict reads the test windows
    for name in ("train_cuts", "val_cuts", "test_cuts"):
        if name not in needed:
            _set(config, f"data.init_args.{name}", None)
    for name in needed:
        value = _dig(data, name)
        paths = value.items() if hasattr(value, "items") else [(None, value)]
        for domain, path in paths:
            key = f"data.init_args.{name}" + (f".{domain}" if domain else "")
            if path is None:
                if name != "val_cuts" or subcommand == "validate":
                    if name == "train_cuts" and _dig(data, "train_shar") is not None:
                        continue
                    raise ConfigError(
                        f"{subcommand} needs {key}: give a cut manifest (codecplatform prepare writes them)"
                    )
            elif not Path(str(path)).is_file():
                raise ConfigError(f"{key}: cut manifest {path} does not exist (codecplatform prepare writes them)")


CHECKPOINT_CODEC_KEYS = (
    ("init_args.sample_rate", "sample_rate"),
    ("init_args.encoder.init_args.channels", "encoder channels"),
    ("init_args.quantizer.init_args.n_q", "codebooks (quantizer n_q)"),
    ("init_args.quantizer.init_args.codebook_size", "codebook size"),
)


def check_checkpoint_codec(config: Any, ckpt_path: str) -> None:
    """``validate``/``test``/``predict`` with ``--ckpt_path``: the checkpoint's codec (its
    hyperparameters) must have the run's sample rate, channels and codebooks, or the rows would be
    labelled with the wrong bitrates; refused naming both values."""
    from codecplatform.checkpoints.io import read_checkpoint

    run_codec = _dig(config, "model.init_args.codec")
    if run_codec is None or not Path(ckpt_path).is_file():
        return
    checkpoint = read_checkpoint(ckpt_path, "training checkpoint")
    saved = checkpoint.get("codec_config") or _dig(checkpoint.get("hyper_parameters") or {}, "codec")
    if not hasattr(saved, "get"):
        return
    for key, what in CHECKPOINT_CODEC_KEYS:
        theirs, ours = _dig(saved, key), _dig(run_codec, key)
        if theirs is not None and ours is not None and theirs != ours:
            raise ConfigError(
                f"--ckpt_path {ckpt_path} holds a codec with {what} {theirs}, the config gives {ours} "
                f"(model.init_args.codec.{key}): run with the config the checkpoint was trained with"
            )


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
    if from_command_line and args and args[0] in ("encode", "decode", "tokenize"):
        from codecplatform.inference import keep_freed_memory

        keep_freed_memory()  # a process that only codes (not a test calling cli_main)
    if args and args[0] in ("encode", "decode"):
        from codecplatform.inference import decode_main, encode_main

        return (encode_main if args[0] == "encode" else decode_main)(args[1:])
    if args and args[0] == "tokenize":
        from codecplatform.tokenize_corpus import tokenize_main

        return tokenize_main(args[1:])
    if args and args[0] == "export":
        from codecplatform.export import main as export_main

        return export_main(args[1:])
    CodecCLI = _codec_cli_class()
    if args and args[0] in ("fit", "validate", "test", "predict") and not {"-h", "--help"} & set(args):
        from codecplatform.launch import LaunchTrainer

        check_config_args(args[1:], LaunchTrainer)  # unknown keys, in one line (ConfigError)
    args = expand_args(args)
    if from_command_line:  # LightningCLI reads sys.argv itself (and warns if given both)
        sys.argv = [sys.argv[0], *args]
        return CodecCLI()
    return CodecCLI(args=args)


def main() -> None:
    try:
        result = cli_main()
    except ConfigError as error:  # one line: no usage text, no traceback
        print(f"codecplatform: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
