"""The two-rank GANCodecModule fits of the DDP tests, run once per session in ONE distributed job of two
CPU processes (gloo): starting the two ranks (two interpreters importing torch, Lightning and
torchmetrics: 10-25 s on 2 cores) costs more than all these tiny fits together, so the tests share it
(fixture ``ddp_fits`` in tests/conftest.py). The first Trainer starts the second rank (Lightning's
subprocess launcher re-runs the script with ``LOCAL_RANK=1``); the later Trainers of the script find
both ranks and the process group already there, as in a script that fits twice.

Parts, in order, each writing under ``<out>/<part>/`` (and ``rank<r>.done`` when rank r finished it, so
that a failing part fails its own tests and the ones after it, not the ones before):

- ``refused`` (tests/lightning/test_ddp.py): plain ``strategy="ddp"``: the ValueError each rank got
  from ``fit`` (``rank<r>.json``: type and message). It is caught, so the job goes on.
- ``identical`` (tests/lightning/test_ddp.py): 3 batches with a random discriminator schedule and
  per-example quantizer dropout; ``rank<r>.pt``: each rank's state dict.
- ``per_bandwidth`` (tests/lightning/test_discriminator_per_bandwidth.py): one discriminator copy per
  bandwidth and generator EMA, 3 batches; ``rank<r>.pt``: {"before", "after"} state dicts.
- ``empty_batches`` (tests/lightning/test_empty_batches.py): 3 batches per rank, rank 0's second one
  empty; ``rank<r>.pt``.
- ``callbacks`` (tests/callbacks/test_callbacks_ddp.py): codebook, audio and throughput callbacks, one
  training batch, 2 validation batches of 2; rank zero writes ``module.pt``, ``metrics.json`` and the
  callbacks' files under ``artifacts/``.
- ``shard_resume`` (tests/datamodules/test_data_at_scale.py): a recording module on segment shards (written
  by :func:`run` before the job), 7 steps uninterrupted, 3 steps with a checkpoint, then resumed from
  it to 7; ``rank<r>.pt``: each fit's batches as bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    sys.path[:0] = [{lightning!r}, {callbacks!r}]
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader
    from test_gan_codec import NoiseAudio, tiny_module

    OUT = Path({out!r})


    def part(name):
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        return folder


    def done(folder, trainer):
        (folder / f"rank{{trainer.global_rank}}.done").touch()


    def trainer(strategy="ddp_find_unused_parameters_true"):
        return Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=1, limit_train_batches=3,
                       limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False)


    # refused: plain DDP (its fit starts rank 1)
    folder = part("refused")
    plain = trainer(strategy="ddp")
    try:
        plain.fit(tiny_module(), DataLoader(NoiseAudio(n=24), batch_size=4))
        error = None
    except ValueError as e:
        error = {{"type": type(e).__name__, "message": str(e)}}
    (folder / f"rank{{plain.global_rank}}.json").write_text(json.dumps(error))
    done(folder, plain)

    # identical
    from codecplatform.quantizers.dropout import PerExampleDropout
    from codecplatform.lightning.schedule import DiscriminatorSchedule

    folder = part("identical")
    module = tiny_module(discriminator_schedule=DiscriminatorSchedule(probability=0.5, seed=3))
    module.codec.quantizer.dropout = PerExampleDropout(p=0.5)  # per-rank random draws must not desync
    t = trainer()
    t.fit(module, DataLoader(NoiseAudio(n=24), batch_size=4))  # DistributedSampler: different data per rank
    torch.save(module.state_dict(), folder / f"rank{{t.global_rank}}.pt")
    done(folder, t)

    # per_bandwidth
    from test_discriminator_per_bandwidth import bandwidth_codec
    from codecplatform.lightning.ema import GeneratorEMA

    folder = part("per_bandwidth")
    module = tiny_module(codec=bandwidth_codec(), discriminator_per_bandwidth=True,
                         generator_ema=GeneratorEMA(decay=0.9))
    before = {{k: v.clone() for k, v in module.state_dict().items()}}
    t = trainer()
    t.fit(module, DataLoader(NoiseAudio(n=24), batch_size=4))
    torch.save({{"before": before, "after": module.state_dict()}}, folder / f"rank{{t.global_rank}}.pt")
    done(folder, t)

    # empty_batches
    from test_empty_batches import Batches, fit

    folder = part("empty_batches")
    module = tiny_module()
    # The DistributedSampler deals batches 0, 2, 4 to rank 0 and 1, 3, 5 to rank 1: only rank 0's
    # second batch is empty.
    t = fit(module, Batches(n=6, empty={{2}}), devices=2, strategy="ddp_find_unused_parameters_true")
    torch.save(module.state_dict(), folder / f"rank{{t.global_rank}}.pt")
    done(folder, t)

    # callbacks
    from conftest import fit_tiny, spread_codebooks
    from callbacks import AudioReconstructionLogger, AudioThroughputMonitor, CodebookUsageLogger

    folder = part("callbacks")
    module = spread_codebooks(tiny_module())
    audio = AudioReconstructionLogger(num_examples=2, examples_per_batch=2)
    callbacks = [CodebookUsageLogger(), audio, AudioThroughputMonitor()]
    # 4 validation examples in batches of 2: the DistributedSampler gives each rank one batch
    t = fit_tiny(callbacks, False, str(folder), batches=1, val_batches=2, module=module, devices=2,
                 strategy="ddp_find_unused_parameters_true")
    if t.is_global_zero:
        torch.save(module.state_dict(), folder / "module.pt")
        metrics = {{k: float(v) for k, v in t.callback_metrics.items()}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    done(folder, t)

    # shard_resume: the shards were written by run() before the job started
    import lightning.pytorch as pl
    from datamodules.lhotse_audio import LhotseAudioDataModule


    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch.numpy().tobytes())
            return (self.scale * batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)


    def shard_fit(folder, max_steps, run, ckpt_path=None):
        dm = LhotseAudioDataModule(train_shar=str(OUT / "shard_data" / "shar"), sample_rate=8000, batch_size=2,
                                   segment_seconds=0.125, num_workers=1)
        module = Recorder()
        t = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, logger=False,
                    enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                    default_root_dir=str(folder),
                    callbacks=[pl.callbacks.ModelCheckpoint(dirpath=str(folder / run), save_last=True,
                                                            every_n_train_steps=3)])
        t.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return t, module.seen


    folder = part("shard_resume")
    t, whole = shard_fit(folder, 7, "whole")
    t, killed = shard_fit(folder, 3, "killed")
    t, resumed = shard_fit(folder, 7, "resumed", ckpt_path=str(folder / "killed" / "last.ckpt"))
    torch.save({{"whole": whole, "killed": killed, "resumed": resumed}}, folder / f"rank{{t.global_rank}}.pt")
    done(folder, t)
    """
)


@dataclass
class DDPFits:
    out: Path
    result: subprocess.CompletedProcess

    def part(self, name: str) -> Path:
        """The folder of part ``name``, after checking that both ranks finished it."""
        folder = self.out / name
        finished = all((folder / f"rank{rank}.done").exists() for rank in (0, 1))
        assert finished, (
            f"part {name} did not finish (exit code {self.result.returncode}):\n{self.result.stderr[-4000:]}"
        )
        return folder


def _write_shards(root: Path) -> None:
    """Part ``shard_resume``'s data, written before the job (both ranks would write it at once): 6 tones
    of 1.1-2.1 s at 16 kHz -> segment shards of 0.5 s at 8 kHz mono, 4 segments a shard (5 shards)."""
    import numpy as np
    import soundfile as sf

    from datamodules.manifests import load_cuts, prepare_manifests
    from datamodules.shards import export_shar

    (root / "audio").mkdir(parents=True)
    for i in range(6):
        t = np.arange(int((1.1 + 0.2 * i) * 16000)) / 16000
        sf.write(root / "audio" / f"r{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
    paths = prepare_manifests(root / "audio", root / "manifests", 0.0, 0.0)
    export_shar(
        load_cuts(paths["train"]),
        root / "shar",
        shard_size=4,
        segment_seconds=0.5,
        sample_rate=8000,
        channels=1,
        num_workers=1,
    )


def run(out: Path) -> DDPFits:
    script = out / "script" / "ddp_fits.py"  # a folder of its own: the script's folder is on sys.path
    script.parent.mkdir()
    _write_shards(out / "shard_data")
    script.write_text(
        SCRIPT.format(lightning=str(TESTS / "lightning"), callbacks=str(TESTS / "callbacks"), out=str(out))
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")  # as in the tests (tests/conftest.py: one_torch_thread)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=out, env=env, capture_output=True, text=True, timeout=600
    )
    return DDPFits(out, result)
