"""A GPU machine's measurements in one command, under 8 minutes, as one table: the training step of
every family's real config at fp32, bf16-mixed and ``torch.compile`` (audio s/s, peak memory, largest
batch that fits), batched inference, data loading against the step, a DDP step on NCCL, and DAC's
step against the official ``dac`` package's. ``--smoke`` runs it on the CPU (tests/benchmarks), so it
cannot rot between GPU runs. Packages a GPU machine without network needs: docs/benchmarks.md.

    python benchmarks/gpu_suite.py [--out outputs/benchmarks/gpu_suite] [--budget 450]
        [--groups train infer data ddp dac_official] [--families encodec mucodec ...] [--modes ...]
    python benchmarks/gpu_suite.py --smoke [--in_process]   # tiny configs, 1 step, gloo, eager compile

Rows (``audio s/s``: audio seconds per wall second, for inference the real-time factor):

- ``train``: ``FAMILIES``' configs (MuCodec: each stage's, stage files null: random weights) on a
  noise batch of the config's batch size and segment, halved while out of memory;
  :func:`train_throughput.measure_step` (warm-up untimed, median of ``--steps``). ``compile``:
  bf16-mixed with the family's parts compiled (inductor). Largest batch (``--search_modes``):
  doubling from the timed batch, one step each, until CUDA runs out of memory, ``--search_cap`` or
  ``--search_seconds`` (probes without cuDNN autotuning).
- ``infer``: encode and decode of a batch of noise clips, all codebooks, prepared codec
  (``inference_rtf.ours_coders`` and ``interleaved``).
- ``data``: EnCodec fed by its data module from generated WAV files; data time fraction = data
  time / (data + step time) of ``callbacks.AudioThroughputMonitor``, first batch left out.
- ``ddp``: EnCodec's bf16-mixed step under ``DDPStrategy`` (NCCL; world size 1 on one GPU runs the
  code path of many), against its single-device row.
- ``dac_official``: DAC 44.1 kHz at 32-true (official ``amp: false``), ours and the official
  ``dac.model.DAC`` + ``Discriminator`` with ``dac.nn.loss`` and conf/base.yml's weights, same batch.

Rows run in a worker process (``--in_process``: in this one) in ``PRIORITY`` order (a family's
bf16-mixed and 32-true rows train one build); the parent kills a worker whose row outlives its
timeout and starts another for the rows left, a worker whose out-of-memory left memory allocated
ends, and a row that cannot start within ``--budget`` seconds is skipped. Peak memory:
``torch.cuda.max_memory_allocated`` per measurement (CPU: the process's peak RSS, an upper bound).
Writes ``<out>/gpu_suite.json``, ``<out>/gpu_suite.md`` (the table) and ``<out>/worker.log``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
for _path in (str(REPO), str(REPO / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

RESTART = 75  # a worker's exit code: start a fresh worker for the remaining rows
CODEC_PARTS = ("codec.encoder", "codec.decoder")


def _init(**values: Any) -> dict[str, Any]:
    return {"model": {"init_args": values}}


def _flow_changes() -> dict[str, Any]:
    """The flow stage without stage files: a random tokenizer as code source, the Mel-VAE of melvae.yaml."""
    from train_throughput import compose

    vae = compose([EXPERIMENTS / "mucodec" / "melvae.yaml"])["model"]["init_args"]["vae"]
    return _init(melvae_checkpoint=None, melvae=vae, code_source={"init_args": {"checkpoint": None}})


def _codec_changes() -> dict[str, Any]:
    """The MuCodec codec without stage files (untrained weights), the Mel-VAE of melvae.yaml."""
    from train_throughput import compose

    vae = compose([EXPERIMENTS / "mucodec" / "melvae.yaml"])["model"]["init_args"]["vae"]
    files = dict(tokenizer_checkpoint=None, flow_checkpoint=None, vocoder_checkpoint=None)
    return _init(codec={"init_args": {**files, "require_checkpoints": False, "melvae": vae}})


@dataclass(frozen=True)
class Family:
    """One config of the table: ``config`` under experiments/, its tiny override for ``--smoke``,
    the parts the compile rows compile, and changes merged between the two (stage files off)."""

    config: str
    tiny: str
    compile: tuple[str, ...] = ()
    changes: Callable[[], dict[str, Any]] | None = None
    lyrics: bool = False  # batches {"audio", "text"} (the data module's return_text)
    infer: tuple[int, float] | None = None  # inference batch and clip seconds on the GPU (default: options)

    def configs(self, smoke: bool) -> list[Any]:
        tiny = [EXPERIMENTS / "tiny" / f"{self.tiny}.yaml"] if smoke else []
        return [EXPERIMENTS / self.config, *([self.changes()] if self.changes else []), *tiny]


MUENCODER_LAYERS = ("encoder.conformer.layers",)  # MuEncoder.run calls its blocks, not its forward
FAMILIES: dict[str, Family] = {
    "encodec": Family("encodec/24khz_mono.yaml", "encodec", CODEC_PARTS),
    "dac": Family("dac/44khz.yaml", "dac", CODEC_PARTS),
    "muffin": Family("muffin/75hz.yaml", "muffin", CODEC_PARTS),
    "spectrostream": Family("spectrostream/48khz_stereo.yaml", "spectrostream", CODEC_PARTS),
    "mucodec_muencoder1": Family("mucodec/muencoder_stage1.yaml", "mucodec_muencoder", MUENCODER_LAYERS),
    "mucodec_muencoder2": Family(
        "mucodec/muencoder_stage2.yaml",
        "mucodec_muencoder",
        MUENCODER_LAYERS,
        lambda: _init(muencoder_checkpoint=None),
        lyrics=True,
    ),
    "mucodec_tokenizer": Family(
        "mucodec/tokenizer_1x16384.yaml",
        "mucodec_tokenizer",
        ("tokenizer.encoder",),
        lambda: _init(muencoder_checkpoint=None),
    ),
    "mucodec_melvae": Family("mucodec/melvae.yaml", "mucodec_melvae", ("vae",), lambda: _init(export_dir=None)),
    "mucodec_flow": Family("mucodec/flow.yaml", "mucodec_flow", ("flow.transformer",), _flow_changes),
    "mucodec_vocoder": Family("mucodec/vocoder.yaml", "mucodec_vocoder", ("vocoder",), lambda: _init(export_dir=None)),
}
#: inference: the GAN codecs' configs above and MuCodec's end-to-end codec
CODECS: dict[str, Family] = {
    **{name: FAMILIES[name] for name in ("encodec", "dac", "muffin", "spectrostream")},
    # one clip of one whole window (1024 codes = 40.96 s): the DiT samples whole windows, 50 steps x 2 (guidance)
    "mucodec": Family("mucodec/codec_1x16384.yaml", "mucodec_codec", changes=_codec_changes, infer=(1, 40.96)),
}
GROUPS = ("train", "infer", "data", "ddp", "dac_official")
#: --smoke trains every config at bf16-mixed (EnCodec's searches the largest batch) and these once
SMOKE_EXTRA = {("encodec", "32-true"), ("mucodec_muencoder1", "compile")}
MODES = ("32-true", "bf16-mixed", "compile")
#: execution order (the table keeps FAMILIES' order): each family's bf16-mixed then 32-true rows
#: (one build), then one row per group, then the compile rows (minutes of compilation each)
PRIORITY = {"train": 0, "infer": 1, "ddp": 2, "dac_official": 3, "data": 4, "compile": 5}


@dataclass
class Settings:
    """What the worker needs to run rows (sent to it as JSON)."""

    smoke: bool
    device: str  # cuda | cpu
    steps: int
    warmup: int  # untimed steps before them (compile rows: compile_warmup)
    compile_backend: str
    compile_warmup: int
    batch: int | None  # every training row's batch (None: the config's)
    search_cap: int
    search_seconds: float  # time the doubling of one row may take
    infer_batch: int
    infer_seconds: float
    repeats: int
    data_workers: int
    data_batches: int
    dac_batch: int
    dac_seconds: float
    threads: int | None
    deadline: float = 0.0  # epoch seconds: no row starts after it
    row_deadline: float = field(default=0.0, repr=False)

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"


def plan(opts: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows in table order: ``{"id", "group", "family", "mode", "search", "timeout", "min_s",
    "order", "priority"}`` (``min_s``: the budget a row needs left to start; order of execution:
    ``priority``)."""
    fast = opts.smoke
    rows: list[dict[str, Any]] = []

    def chosen(name: str) -> bool:  # --families mucodec: every MuCodec stage and the codec
        return not opts.families or any(name == f or name.startswith(f + "_") for f in opts.families)

    def add(group: str, family: str, mode: str, timeout: float, min_s: float = 20, search: bool = False) -> None:
        row = {"id": f"{group} {family} {mode}".strip(), "group": group, "family": family, "mode": mode}
        row.update(search=search, timeout=60 if fast else timeout, min_s=0 if fast else min_s, order=len(rows))
        kind = "compile" if mode == "compile" else group
        row["priority"] = (
            PRIORITY[kind],
            list(FAMILIES).index(family) if group == "train" else 0,
            -MODES.index(mode or "32-true"),
        )
        rows.append(row)

    if "train" in opts.groups:
        for family in filter(chosen, FAMILIES):
            for mode in [m for m in opts.modes if not fast or m == "bf16-mixed" or (family, m) in SMOKE_EXTRA]:
                search = mode in opts.search_modes and mode != "compile" and (not fast or family == "encodec")
                add("train", family, mode, 150 if mode == "compile" else 75, 90 if mode == "compile" else 20, search)
    if "infer" in opts.groups:
        for family in filter(chosen, CODECS):
            add("infer", family, "", 90)
    for group, family in (("ddp", "encodec"), ("dac_official", "dac"), ("data", "encodec")):
        if group in opts.groups and chosen(family):
            add(group, family, "", 75)
    return rows


# ---------------------------------------------------------------------------------------- worker
def _torch_setup(settings: Settings) -> None:
    import torch
    from train_throughput import setup_cuda

    if settings.threads:
        torch.set_num_threads(settings.threads)
    setup_cuda()


def _is_oom(error: BaseException) -> bool:
    import torch

    text = str(error).lower()
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def _recover(module: Any, requires_grad: dict[Any, bool]) -> None:
    """After an out-of-memory inside a step: the parameters' ``requires_grad`` as before (Lightning's
    toggle_optimizer may have switched some off), gradients and cached blocks freed."""
    import torch

    for parameter, flag in requires_grad.items():
        parameter.requires_grad_(flag)
    getattr(module, "_param_requires_grad_state", {}).clear()
    module.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _line(row: dict[str, Any], **values: Any) -> dict[str, Any]:
    """One table line of ``row`` (``setting``, ``batch``, ``audio_s_per_s``, ``peak_gb``, ...)."""
    return {"id": row["id"], "group": row["group"], "family": row["family"], **values}


def _batch(x: Any, lyrics: bool) -> Any:
    """Audio (B, C, T), with lyrics: ``{"audio": x, "text": B strings}`` as the data module's return_text."""
    return {"audio": x, "text": ["la la la"] * x.shape[0]} if lyrics else x


def _fitting_step(
    module: Any, config: dict, batch: int, seconds: float, hop: int, settings: Settings, lyrics: bool = False, **kw: Any
) -> tuple[int, Any, dict[str, Any]]:
    """(batch, its audio (B, C, T), :func:`measure_step`'s result) at ``batch``, halved while it
    runs out of memory."""
    import torch
    from train_throughput import measure_step, synthetic_batch

    requires_grad = {p: p.requires_grad for p in module.parameters()}
    while True:
        x = synthetic_batch(config, batch, seconds, hop)
        try:
            return batch, x, measure_step(module, _batch(x, lyrics), accelerator=settings.accelerator, **kw)
        except Exception as error:  # noqa: BLE001  (out of memory: retried smaller below)
            if not _is_oom(error) or batch == 1:
                raise
        del x
        _recover(module, requires_grad)
        batch //= 2
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def _largest_batch(
    module: Any, x: Any, precision: str, settings: Settings, lyrics: bool = False
) -> tuple[int, str, float | None]:
    """Doubling from ``x``'s batch, one untimed step each: (largest batch that ran, why it stopped,
    its peak GB)."""
    import torch
    from train_throughput import measure_step

    requires_grad = {p: p.requires_grad for p in module.parameters()}
    largest, peak, wall = x.shape[0], None, 0.0
    deadline = min(settings.row_deadline - 5, time.time() + settings.search_seconds)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # autotuning every new shape would take most of the time
    try:
        while True:
            batch = 2 * largest
            if batch > settings.search_cap:
                return largest, f"search cap {settings.search_cap}", peak
            if batch * x[0].numel() * 4 > 16e9:
                return largest, "host batch over 16 GB", peak
            if wall and time.time() + 3 * wall > deadline:  # the next probe takes about twice the last
                return largest, "search time", peak
            start, oom = time.time(), False
            probe = x.repeat(batch // x.shape[0], 1, 1)
            try:
                result = measure_step(module, _batch(probe, lyrics), 0, settings.accelerator, precision, warmup=1)
            except Exception as error:  # noqa: BLE001
                if not _is_oom(error):
                    raise
                oom = True
            del probe
            if oom:
                _recover(module, requires_grad)
                return largest, f"out of memory at {batch}", peak
            largest, peak, wall = batch, result["peak_memory_gb"], time.time() - start
    finally:
        torch.backends.cudnn.benchmark = benchmark


#: the last eager row's (family, module, config): the family's next eager row trains it again
_BUILT: list[tuple[str, Any, dict[str, Any]]] = []


def run_train(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    from train_throughput import build_module, compile_parts

    family = FAMILIES[row["family"]]
    compiled = row["mode"] == "compile"
    built = _BUILT.pop() if _BUILT else None
    if built and built[0] == row["family"] and not compiled:
        module, config = built[1:]
    else:
        del built
        gc.collect()
        module, config = build_module(family.configs(settings.smoke))
    data = config["data"]["init_args"]
    hop = int(getattr(getattr(module, "codec", None), "hop_length", 1))
    precision = "bf16-mixed" if compiled else row["mode"]
    if compiled:
        backend = settings.compile_backend
        compile_parts(module, family.compile, backend)
    warmup = settings.compile_warmup if compiled else settings.warmup
    wanted = settings.batch or int(data["batch_size"])
    batch, x, result = _fitting_step(
        module, config, wanted, float(data["segment_seconds"]), hop, settings, family.lyrics,
        steps=settings.steps, precision=precision, warmup=warmup,
    )  # fmt: skip
    audio = batch * x.shape[-1] / int(data["sample_rate"])
    notes = ["synthetic lyrics"] if family.lyrics else []
    if batch != wanted:
        notes.append(f"batch {wanted} out of memory")
    if compiled:
        notes.append(f"{backend}, warm-up {result['warmup_s']:.0f} s")
    largest = stop = None
    if row["search"] and batch != wanted:  # the halving found it
        largest, stop = batch, f"out of memory at {2 * batch}"
    elif row["search"]:
        largest, stop, _ = _largest_batch(module, x, precision, settings, family.lyrics)
    if stop:
        notes.append(f"largest: {stop}")
    setting = f"compile (bf16-mixed, {backend})" if compiled else precision
    line = _line(row, setting=setting, batch=batch, audio_s_per_s=audio / result["step_s"])
    line.update(peak_gb=result["peak_memory_gb"], largest_batch=largest, step_s=result["step_s"])
    line.update(seconds=x.shape[-1] / int(data["sample_rate"]), note="; ".join(notes))
    if not compiled:  # (Lightning's teardown left it on the CPU)
        _BUILT.append((row["family"], module.cpu(), config))
    else:
        import torch

        del module
        torch._dynamo.reset()  # the compiled graphs of this module are not needed again
    return [line]


def run_infer(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    import inference_rtf as rtf
    import torch
    from train_throughput import compose

    from codecplatform.models.base import AudioCodec
    from codecplatform.models.codec import Codec

    family = CODECS[row["family"]]
    batch, seconds = settings.infer_batch, settings.infer_seconds
    if family.infer and not settings.smoke:
        batch, seconds = family.infer
    codec_config = compose(family.configs(settings.smoke))["model"]["init_args"]["codec"]
    if codec_config["class_path"] == f"{Codec.__module__}.{Codec.__name__}":
        codec = rtf.initialised_codec(codec_config)
    else:  # MuCodec: untrained, no codebooks to initialise
        codec = AudioCodec.from_config(codec_config)
    device = torch.device(settings.device)
    codec = codec.prepare_for_inference().to(device)
    hop = int(codec.samples_per_frame)
    samples = int(seconds * codec.sample_rate) // hop * hop
    x = 0.1 * torch.randn(batch, codec.channels, samples, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    encode, decode, _ = rtf.ours_coders(codec, codec.n_q, x)
    medians = rtf.interleaved({"encode": encode, "decode": decode}, settings.repeats, sync)
    from train_throughput import peak_memory_gb

    peak = peak_memory_gb(str(device))
    audio = batch * samples / codec.sample_rate
    note = f"{codec.n_q} codebooks, {samples / codec.sample_rate:.3g} s clips"
    if family.infer and not settings.smoke:
        note += " (the DiT samples whole windows: one per clip)"
    return [
        _line(row, setting=op, batch=batch, audio_s_per_s=audio / medians[op], peak_gb=peak, note=note)
        for op in ("encode", "decode")
    ]


def run_ddp(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    import torch
    from train_throughput import build_module

    family = FAMILIES[row["family"]]
    module, config = build_module(family.configs(settings.smoke))
    data = config["data"]["init_args"]
    # experiments/launch/ddp.yaml's strategy (NCCL on CUDA, gloo on the CPU); a fresh one per Trainer
    strategy = "ddp_find_unused_parameters_true"
    environment = dict(os.environ)
    wanted, hop = settings.batch or int(data["batch_size"]), int(module.codec.hop_length)
    try:
        batch, x, result = _fitting_step(
            module, config, wanted, float(data["segment_seconds"]), hop, settings,
            steps=settings.steps, warmup=settings.warmup, precision="bf16-mixed", strategy=strategy,
        )  # fmt: skip
        world = torch.distributed.get_world_size()
        used = torch.distributed.get_backend()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)  # Lightning's MASTER_PORT, WORLD_SIZE ... of this row only
    audio = batch * x.shape[-1] / int(data["sample_rate"])
    line = _line(
        row, setting=f"bf16-mixed, DDP {used}, world {world}", batch=batch, audio_s_per_s=audio / result["step_s"]
    )
    line.update(peak_gb=result["peak_memory_gb"], step_s=result["step_s"], backend=used, world_size=world)
    return [line]


def _recorder() -> Any:
    """A Lightning callback to place after AudioThroughputMonitor: keeps the values it logged per batch."""
    from lightning.pytorch import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            metrics = trainer.callback_metrics
            keys = ("step_time", "data_time", "audio_seconds_per_second")
            self.rows.append({k: float(metrics[f"train/throughput/{k}"]) for k in keys})
            self.rows[-1]["audio_seconds"] = batch.shape[0] * batch.shape[-1] / pl_module.codec.sample_rate

    return Recorder()


def run_data(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    missing = [name for name in ("lhotse", "soundfile") if importlib.util.find_spec(name) is None]
    if missing:
        return [_skipped(row, f"{' and '.join(missing)} not installed (data module)")]
    import data_throughput as dt
    import torch
    from lightning.pytorch import Trainer
    from train_throughput import peak_memory_gb

    from callbacks.throughput import AudioThroughputMonitor
    from datamodules.manifests import prepare_manifests

    family = FAMILIES[row["family"]]
    files, seconds = (3, 1.0) if settings.smoke else (32, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dt.write_corpus(root / "audio", files, seconds, 44100, 2, "wav")
        manifests = prepare_manifests(root / "audio", root / "manifests", val_fraction=0.0, test_fraction=0.0)
        overrides = [f"--data.init_args.train_cuts={manifests['train']}", "--data.init_args.val_cuts=null"]
        overrides += ["--data.init_args.test_cuts=null", f"--data.init_args.num_workers={settings.data_workers}"]
        overrides += ["--data.init_args.infinite=true"]  # stream mode: batches never run out
        cli = dt.build([str(c) for c in family.configs(settings.smoke)], overrides)
        module, precision = cli.model, "32-true" if settings.smoke else "bf16-mixed"
        module.max_batches = int(module.batch_counter) + settings.data_batches
        recorder = _recorder()
        trainer = Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=precision,
            max_epochs=-1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,  # lhotse samplers shard by rank themselves
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[AudioThroughputMonitor(), recorder],
        )
        if settings.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(module, datamodule=cli.datamodule)
        device = str(trainer.strategy.root_device)
    timed = recorder.rows[1:]  # the first batch waits for the workers to start
    if not timed:
        raise RuntimeError(f"{len(recorder.rows)} batch(es) trained: need 2 or more")
    data_time = sum(r["data_time"] for r in timed)
    total = data_time + sum(r["step_time"] for r in timed)
    fraction = data_time / total
    batch = cli.datamodule.batch_size
    note = f"waits for data {100 * fraction:.1f} % of the time, {settings.data_workers} workers, {len(timed)} batches"
    line = _line(
        row,
        setting=f"{precision}, data module",
        batch=batch,
        audio_s_per_s=sum(r["audio_seconds"] for r in timed) / total,
    )
    line.update(peak_gb=peak_memory_gb(device), data_time_fraction=fraction, note=note)
    return [line]


def _official_dac(config: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The official generator and discriminator of the same architecture as ``config``'s, its
    losses and conf/base.yml's loss weights."""
    import dac
    import dac.nn.loss as official_loss

    codec = config["model"]["init_args"]["codec"]["init_args"]
    encoder, decoder = codec["encoder"]["init_args"], codec["decoder"]["init_args"]
    quantizer = codec["quantizer"]["init_args"]
    dropout = (quantizer.get("dropout") or {}).get("init_args", {}).get("p", 0.0)
    generator = dac.model.DAC(
        encoder_dim=encoder["d_model"],
        encoder_rates=list(encoder["strides"]),
        latent_dim=encoder["dimension"],
        decoder_dim=decoder["decoder_dim"],
        decoder_rates=list(decoder["rates"]),
        n_codebooks=quantizer["n_q"],
        codebook_size=quantizer["codebook_size"],
        codebook_dim=quantizer["codebook_dim"],
        quantizer_dropout=dropout,
        sample_rate=codec["sample_rate"],
    )
    parts = {d["class_path"].rsplit(".", 1)[-1]: d["init_args"] for d in config["model"]["init_args"]["discriminators"]}
    discriminator = dac.model.Discriminator(
        rates=[],
        periods=list(parts["MultiPeriodDiscriminator"]["periods"]),
        fft_sizes=list(parts["MultiBandSTFTDiscriminator"]["window_lengths"]),
        sample_rate=codec["sample_rate"],
    )
    mel = config["model"]["init_args"]["reconstruction_losses"]["mel"]["init_args"]
    scales = len(mel["window_lengths"])
    losses = {
        "waveform": official_loss.L1Loss(),
        "stft": official_loss.MultiScaleSTFTLoss(),
        "mel": official_loss.MelSpectrogramLoss(
            n_mels=list(mel["n_mels"]),
            window_lengths=list(mel["window_lengths"]),
            mel_fmin=[0.0] * scales,
            mel_fmax=[None] * scales,
            pow=float(mel["power"]),
            clamp_eps=float(mel["clamp_eps"]),
            mag_weight=0.0,
        ),
        "gan": official_loss.GANLoss(discriminator),
        "weights": {"mel": 15.0, "adv": 1.0, "feat": 2.0, "commit": 0.25, "codebook": 1.0},
    }
    return generator, discriminator, losses


def _official_dac_step_time(config: dict[str, Any], x: Any, settings: Settings) -> tuple[float, float]:
    """(median step seconds, peak GB) of the official training step on ``x`` (B, 1, T): the
    discriminator on the detached output, then the generator (mel, adversarial, feature, VQ
    losses), AdamW (0.8, 0.99), gradient norms clipped at 10 and 1000, float32 (``amp: false``)."""
    import torch
    from audiotools import AudioSignal
    from train_throughput import peak_memory_gb

    device = torch.device(settings.device)
    generator, discriminator, losses = _official_dac(config)
    generator, discriminator = generator.to(device).train(), discriminator.to(device).train()
    losses["gan"] = losses["gan"].to(device)
    optimizer_g = torch.optim.AdamW(generator.parameters(), lr=1e-4, betas=(0.8, 0.99))
    optimizer_d = torch.optim.AdamW(discriminator.parameters(), lr=1e-4, betas=(0.8, 0.99))
    scheduler_g = torch.optim.lr_scheduler.ExponentialLR(optimizer_g, 0.999996)
    scheduler_d = torch.optim.lr_scheduler.ExponentialLR(optimizer_d, 0.999996)
    weights, rate = losses["weights"], int(generator.sample_rate)
    x = x.to(device)

    def step() -> None:
        real = AudioSignal(x, rate)
        out = generator(real.audio_data, rate)
        fake = AudioSignal(out["audio"], rate)
        d_loss = losses["gan"].discriminator_loss(fake, real)
        optimizer_d.zero_grad()
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(discriminator.parameters(), 10.0)
        optimizer_d.step()
        scheduler_d.step()
        losses["stft"](fake, real)  # computed every step, weight 0 in conf/base.yml
        losses["waveform"](fake, real)
        adv, feat = losses["gan"].generator_loss(fake, real)
        total = weights["mel"] * losses["mel"](fake, real) + weights["adv"] * adv + weights["feat"] * feat
        total = total + weights["commit"] * out["vq/commitment_loss"] + weights["codebook"] * out["vq/codebook_loss"]
        optimizer_g.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), 1e3)
        optimizer_g.step()
        scheduler_g.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(settings.warmup):  # allocation, cuDNN autotuning
        step()
    times = []
    for _ in range(settings.steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = peak_memory_gb(str(device))
    return statistics.median(times), peak


def run_dac_official(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    missing = [name for name in ("dac", "audiotools") if importlib.util.find_spec(name) is None]
    if missing:
        return [_skipped(row, f"{' and '.join(missing)} not installed (official DAC)")]
    from train_throughput import build_module, measure_step, synthetic_batch

    family = FAMILIES[row["family"]]
    module, config = build_module(family.configs(settings.smoke))
    rate = int(config["data"]["init_args"]["sample_rate"])
    seconds = settings.dac_seconds or float(config["data"]["init_args"]["segment_seconds"])
    x = synthetic_batch(config, settings.dac_batch, seconds, module.codec.hop_length)
    ours = measure_step(module, x, settings.steps, settings.accelerator, "32-true", settings.warmup)
    module.cpu()
    del module
    gc.collect()
    official_s, official_peak = _official_dac_step_time(config, x, settings)
    audio = x.shape[0] * x.shape[-1] / rate
    ratio = official_s / ours["step_s"]
    common = {"batch": x.shape[0], "seconds": x.shape[-1] / rate}
    official_note = "dac.model.DAC + Discriminator, dac.nn.loss"
    if settings.smoke:  # the official discriminator's widths are fixed: it stays full size
        official_note += " (smoke: full-size discriminator)"
    return [
        _line(row, setting="32-true, ours", audio_s_per_s=audio / ours["step_s"], peak_gb=ours["peak_memory_gb"],
              step_s=ours["step_s"], note=f"{ratio:.2f} x the official step's speed", vs_official=ratio, **common),
        _line(row, setting="32-true, official dac", audio_s_per_s=audio / official_s, peak_gb=official_peak,
              step_s=official_s, note=official_note, **common),
    ]  # fmt: skip


def run_sleep(row: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """A row that takes ``row["seconds"]`` (tests of the worker's supervision; ``exit``: the worker dies)."""
    time.sleep(float(row.get("seconds", 0.0)))
    if row.get("exit") is not None:
        os._exit(int(row["exit"]))
    return [_line(row, setting="sleep", batch=1, audio_s_per_s=1.0, peak_gb=0.0)]


RUNNERS: dict[str, Callable[[dict[str, Any], Settings], list[dict[str, Any]]]] = {
    "train": run_train,
    "infer": run_infer,
    "ddp": run_ddp,
    "data": run_data,
    "dac_official": run_dac_official,
    "sleep": run_sleep,
}


def _skipped(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return _line(row, setting=row.get("mode") or "-", status="skipped", note=reason)


def run_row(row: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """One row -> ``{"id", "status", "lines", "seconds", "restart"}``; an error is reported, not raised."""
    start = time.time()
    allocated = None
    if row["group"] != "sleep":
        import torch

        allocated = torch.cuda.memory_allocated() if torch.cuda.is_available() else None
    try:
        lines = RUNNERS[row["group"]](row, settings)
        status = "ok" if all(line.get("status", "ok") == "ok" for line in lines) else "skipped"
        result = {"status": status, "lines": lines}
    except Exception as error:  # noqa: BLE001  (a row that cannot run is reported, the rest go on)
        _BUILT.clear()  # a module left in the middle of a step is not trained again
        oom = _is_oom(error)
        text = " / ".join(part.strip() for part in str(error).splitlines() if part.strip())
        message = f"{type(error).__name__}: {text}"[:300]
        result = {
            "status": "error",
            "lines": [_line(row, setting=row.get("mode") or "-", status="error", note=message)],
        }
        result["oom"] = oom
    restart = False
    if allocated is not None:
        import torch

        gc.collect()
        torch.cuda.empty_cache()
        leaked = torch.cuda.memory_allocated() - allocated
        restart = leaked > 256e6  # memory a later row would miss: a fresh worker
        if restart:
            result["leaked_gb"] = leaked / 1e9
    return {"id": row["id"], **result, "seconds": time.time() - start, "restart": restart}


def run_rows(rows: list[dict[str, Any]], settings: Settings, emit: Callable[[dict[str, Any]], None]) -> bool:
    """Run ``rows`` in order, ``emit`` each event (``{"start": id, "timeout": s}``, ``{"result": ...}``);
    rows that cannot start before the deadline are skipped. -> whether a fresh worker should go on."""
    torch_ready = False
    for row in rows:
        if not torch_ready and row["group"] != "sleep" and time.time() < settings.deadline:
            _torch_setup(settings)  # imports torch and Lightning: before the row's clock starts
            torch_ready = True
        remaining = settings.deadline - time.time()
        if remaining < row["min_s"]:
            result = {"id": row["id"], "status": "skipped", "lines": [_skipped(row, "time budget spent")]}
            emit({"result": {**result, "seconds": 0.0, "restart": False}})
            continue
        timeout = min(row["timeout"], remaining)
        emit({"start": row["id"], "timeout": timeout})
        settings.row_deadline = time.time() + timeout
        result = run_row(row, settings)
        emit({"result": result})
        if result["restart"]:
            return True
    return False


def worker_main(spec_path: str, results_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    settings = Settings(**spec["settings"])
    with open(results_path, "a") as results:

        def emit(event: dict[str, Any]) -> None:
            results.write(json.dumps(event) + "\n")
            results.flush()

        restart = run_rows(spec["rows"], settings, emit)
    sys.exit(RESTART if restart else 0)


# ---------------------------------------------------------------------------------------- parent
def _kill(process: subprocess.Popen) -> None:
    """End the worker and what it started (its own process group)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return " | ".join(line.strip() for line in text[-lines:])[-300:]


def supervise(rows: list[dict[str, Any]], settings: Settings, out: Path, grace: float = 10.0) -> dict[str, dict]:
    """Run ``rows`` (priority order) in worker processes; a row past its timeout is killed with its
    worker and the next worker takes the rows left. -> results by row id."""
    results: dict[str, dict[str, Any]] = {}
    pending = list(rows)
    log = out / "worker.log"
    workers = 0
    while pending:
        if time.time() > settings.deadline:
            for row in pending:
                results[row["id"]] = {
                    "id": row["id"],
                    "status": "skipped",
                    "lines": [_skipped(row, "time budget spent")],
                }
            break
        workers += 1
        spec, events = out / "worker_spec.json", out / f"worker_{workers}.jsonl"
        spec.write_text(json.dumps({"rows": pending, "settings": asdict(settings)}))
        events.write_text("")
        with open(log, "a") as handle:
            handle.write(f"\n=== worker {workers}: {len(pending)} rows ===\n")
            handle.flush()
            process = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(spec), "--results", str(events)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole on a timeout
                cwd=str(REPO),
            )
        current: tuple[str, float, float] | None = None  # (row id, started, timeout)
        read = 0
        killed = None
        while True:
            exited = process.poll() is not None
            text = events.read_text()
            lines = text[: text.rfind("\n") + 1].splitlines()  # whole lines only
            for text in lines[read:]:
                event = json.loads(text)
                if "start" in event:
                    current = (event["start"], time.time(), float(event["timeout"]))
                    print(f"[{time.strftime('%H:%M:%S')}] {event['start']} ...", flush=True)
                else:
                    result = event["result"]
                    results[result["id"]] = result
                    pending = [r for r in pending if r["id"] != result["id"]]
                    current = None
                    print(
                        f"[{time.strftime('%H:%M:%S')}] {result['id']}: {result['status']} ({result['seconds']:.0f} s)"
                    )
            read = len(lines)
            if exited:
                break
            if current is not None and time.time() - current[1] > current[2] + grace:
                killed = f"timeout after {current[2]:.0f} s"
            elif time.time() > settings.deadline + grace:
                killed = "time budget spent"
            if killed:
                _kill(process)
                break
            time.sleep(0.2)
        if current is not None:  # the worker died or was killed inside this row
            row = next(r for r in pending if r["id"] == current[0])
            reason = killed or f"worker exited with {process.returncode}: {_tail(log)}"
            results[row["id"]] = {
                "id": row["id"],
                "status": "timeout" if killed else "error",
                "seconds": time.time() - current[1],
            }
            results[row["id"]]["lines"] = [
                _line(row, setting=row.get("mode") or "-", status=results[row["id"]]["status"], note=reason)
            ]
            pending = [r for r in pending if r["id"] != row["id"]]
        elif process.returncode not in (0, RESTART) and pending:  # killed or died between rows (e.g. on import)
            for row in pending:
                status, note = ("skipped", killed) if killed else ("error", f"worker exited with {process.returncode}")
                note = note if killed else f"{note}: {_tail(log)}"
                results[row["id"]] = {"id": row["id"], "status": status}
                results[row["id"]]["lines"] = [_line(row, setting="-", status=status, note=note)]
            break
    return results


# ----------------------------------------------------------------------------------------- table
COLUMNS = ("group", "family", "setting", "batch", "audio s/s", "peak GB", "largest batch", "note")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def table(lines: list[dict[str, Any]]) -> str:
    """The markdown table of the lines (table order)."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for line in lines:
        status = line.get("status", "ok")
        note = line.get("note", "") if status == "ok" else f"{status}: {line.get('note', '')}"
        cells = [line["group"], line["family"], line.get("setting", "-"), _number(line.get("batch"))]
        cells += [
            _number(line.get("audio_s_per_s")),
            _number(line.get("peak_gb")),
            _number(line.get("largest_batch")),
        ]
        out.append("| " + " | ".join([*cells, note.replace("|", "/")]) + " |")
    return "\n".join(out)


def _compare_ddp(lines: list[dict[str, Any]]) -> None:
    """The DDP line's note: its speed against the single-device bf16-mixed row of its family."""
    single = {x["family"]: x for x in lines if x["group"] == "train" and x.get("setting") == "bf16-mixed"}
    for line in lines:
        base = single.get(line["family"])
        if line["group"] == "ddp" and line.get("status", "ok") == "ok" and base and base.get("audio_s_per_s"):
            ratio = line["audio_s_per_s"] / base["audio_s_per_s"]
            line["vs_single_device"] = ratio
            line["note"] = f"{ratio:.2f} x the single-device bf16-mixed step" + (
                "" if base.get("batch") == line.get("batch") else f" (batch {base.get('batch')})"
            )


def _settings(opts: argparse.Namespace, device: str) -> Settings:
    smoke = opts.smoke
    return Settings(
        smoke=smoke,
        device=device,
        steps=opts.steps or (1 if smoke else 3),
        warmup=0 if smoke else 1,
        compile_backend="eager" if smoke else "inductor",
        compile_warmup=1 if smoke else 2,
        batch=opts.batch or (1 if smoke else None),
        search_cap=opts.search_cap or (2 if smoke else 4096),
        search_seconds=opts.search_seconds,
        infer_batch=opts.infer_batch or (2 if smoke else 16),
        infer_seconds=opts.infer_seconds or (0.5 if smoke else 10.0),
        repeats=1 if smoke else 3,
        data_workers=opts.data_workers
        if opts.data_workers is not None
        else (0 if smoke else min(8, os.cpu_count() or 1)),
        data_batches=2 if smoke else 12,
        dac_batch=opts.dac_batch or (1 if smoke else 12),
        dac_seconds=0.1 if smoke else 0.0,
        threads=opts.threads,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny configs, 1 step, gloo, eager compile")
    parser.add_argument("--out", default=None, help="folder of the JSON, table and log")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which no row starts (450; smoke 600)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS)
    parser.add_argument("--families", nargs="+", default=None, choices=[*FAMILIES, "mucodec"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--search_modes", nargs="*", default=["bf16-mixed"], help="rows that search the largest batch")
    parser.add_argument("--search_cap", type=int, default=None, help="largest batch tried (4096; smoke 2)")
    parser.add_argument("--search_seconds", type=float, default=30.0, help="time of one row's largest-batch search")
    parser.add_argument("--batch", type=int, default=None, help="training rows' batch (the config's; smoke 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (3; smoke 1)")
    parser.add_argument("--infer_batch", type=int, default=None, help="clips per inference batch (16; smoke 2)")
    parser.add_argument("--infer_seconds", type=float, default=None, help="seconds per clip (10; smoke 0.5)")
    parser.add_argument("--data_workers", type=int, default=None, help="data row workers (min(8, cores); smoke 0)")
    parser.add_argument("--dac_batch", type=int, default=None, help="DAC vs official batch (12; smoke 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--in_process", action="store_true", help="run the rows in this process (no timeouts)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    start = time.time()
    opts = parse_args(argv)
    if opts.worker:
        worker_main(opts.worker, opts.results)
    import torch

    cuda = torch.cuda.is_available()
    device = opts.device if opts.device != "auto" else ("cuda" if cuda and not opts.smoke else "cpu")
    if device == "cuda" and not cuda:
        sys.exit("gpu_suite: --device cuda: no CUDA device here")
    if device == "cpu" and not opts.smoke and opts.device != "cpu":
        sys.exit(
            "gpu_suite: no CUDA device: run --smoke (tiny configs on the CPU), or --device cpu for the real configs"
        )
    out = Path(opts.out or REPO / "outputs" / "benchmarks" / ("gpu_suite_smoke" if opts.smoke else "gpu_suite"))
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(opts, device)
    budget = opts.budget if opts.budget is not None else (600.0 if opts.smoke else 450.0)
    settings.deadline = start + budget
    rows = plan(opts)
    load = os.getloadavg()
    gpu = torch.cuda.get_device_name() if device == "cuda" else None
    print(
        f"gpu_suite{' --smoke' if opts.smoke else ''}: {len(rows)} rows on {gpu or 'CPU'}, budget {budget:.0f} s; "
        f"{platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f}; torch {torch.__version__}",
        flush=True,
    )
    ordered = sorted(rows, key=lambda r: (r["priority"], r["order"]))
    if opts.in_process:
        results: dict[str, dict[str, Any]] = {}

        def emit(event: dict[str, Any]) -> None:
            if "start" in event:
                print(f"[{time.strftime('%H:%M:%S')}] {event['start']} ...", flush=True)
            else:
                results[event["result"]["id"]] = event["result"]

        run_rows(ordered, settings, emit)
    else:
        results = supervise(ordered, settings, out)
    lines = [line for row in rows for line in results[row["id"]]["lines"]]
    _compare_ddp(lines)
    text = table(lines)
    print(text)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "smoke": opts.smoke,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "gpu": gpu,
            "torch": torch.__version__,
        },
        "device": device,
        "budget_s": budget,
        "elapsed_s": time.time() - start,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("deadline", "row_deadline")},
        "rows": [results[row["id"]] | {"row": row} for row in rows],
        "lines": lines,
    }
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_suite.md").write_text(text + "\n")
    print(f"{time.time() - start:.0f} s; wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")
    return report


if __name__ == "__main__":
    main()
