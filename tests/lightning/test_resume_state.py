"""Resume compared on the whole training state (DESIGN.md habit 10): the tiny EnCodec (generator EMA,
one discriminator per bandwidth, the balancer, a random discriminator schedule, schedulers on both
optimizers) fitted N batches without a stop, and fitted K batches then resumed from last.ckpt with
``--ckpt_path`` to N, end in the same checkpoint: every tensor of ``state_dict`` (codec, EMA
codebooks, ``codec_ema.*``, ``ema_updates``, the discriminator copies ``gan.discriminator.nq<k>.*``,
the balancer's extra state, ``batch_counter``, skip counters), both optimizers' moments and step
counts, both schedulers, the loops' progress, the sampler state and the global random states, bit
for bit (tolerance 0: on one CPU thread the run is deterministic). The batches after the resume
draw the same codebook counts, step the discriminator on the same batches and give the same losses.

The checkpoint at K ends an epoch (4 batches per epoch), and every codebook entry counts as dead at
every step (``threshold_ema_dead_code`` above any count), so each step replaces entries with vectors
drawn from the global generator: the resume must restore its state, past the data loader's new
iterator of the next epoch."""

from __future__ import annotations

import json
from pathlib import Path

from checkpoint_diff import assert_same_training_state, fit_with_records, read_steps

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
N, K = 6, 4  # batches in all, batches before the stop (the end of epoch 0: 4 train files, 2 windows each, 2 per batch)
SCHEDULER = json.dumps({"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.9}})


def fit(manifests: dict[str, Path], root: Path, max_batches: int, *more: str):
    return fit_with_records(
        # generator EMA, one discriminator per bandwidth, the balancer
        [EXPERIMENTS / "encodec" / "24khz_mono.yaml", EXPERIMENTS / "tiny" / "encodec.yaml"],
        manifests,
        root,
        f"--model.init_args.generator_scheduler={SCHEDULER}",
        f"--model.init_args.discriminator_scheduler={SCHEDULER}",
        "--model.init_args.discriminator_schedule.init_args.probability=0.5",
        "--model.init_args.codec.init_args.quantizer.init_args.threshold_ema_dead_code=1000",
        f"--model.init_args.max_batches={max_batches}",
        *more,
    )


def test_resumed_gan_codec_ends_in_the_uninterrupted_state(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(24000, 1)
    reference = fit(manifests, in_tmp_dir / "reference", N)
    stopped = fit(manifests, in_tmp_dir / "resumed", K)
    first = latest_checkpoint(stopped.trainer)
    resumed = fit(manifests, in_tmp_dir / "resumed", N, f"--ckpt_path={first}")
    assert int(resumed.model.batch_counter) == N

    state = assert_same_training_state(
        latest_checkpoint(resumed.trainer),
        latest_checkpoint(reference.trainer),
        expect=["codec_ema.", "ema_updates", "gan.discriminator.nq1.", "gan.discriminator.nq2.", "codec.quantizer."],
    )
    assert int(state["state_dict"]["ema_updates"]) == N
    assert state["LhotseAudioDataModule"]["train_sampler"]["epoch"] == 1  # the run crossed the epoch end
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [N, N]
    assert len(state["optimizer_states"]) == 2 and all(o["state"] for o in state["optimizer_states"])

    # The draws of the batches after the resume: codebook counts, discriminator copy and steps, losses.
    expected, steps = (
        read_steps(in_tmp_dir / "reference" / "steps.jsonl"),
        read_steps(in_tmp_dir / "resumed" / "steps.jsonl"),
    )
    assert sorted(steps) == list(range(N)) and sorted(expected) == list(range(N))
    for batch in range(K, N):
        assert steps[batch] == expected[batch], f"batch {batch}"
    stepped = [b for b in range(N) if "train/d/loss" in expected[b]]
    assert 0 < len(stepped) < N, f"the schedule (probability 0.5) stepped D on {stepped}: pick another seed"
    assert len({expected[b]["train/n_q"] for b in range(N)}) > 1, "one codebook count only: one D copy trained"
