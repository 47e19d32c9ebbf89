"""Resume of a MuCodec stage compared on the whole training state: the tiny HiFi-GAN vocoder stage
(its GAN step: MPD + MSD, AdamW on both sides, per-batch ExponentialLR schedulers, a random
discriminator schedule) fitted N batches without a stop and fitted K then resumed from last.ckpt to N
end in the same checkpoint, bit for bit (tolerance 0; see tests/checkpoint_diff.py), and the batches
after the resume give the same losses and discriminator steps."""

from __future__ import annotations

import json
from pathlib import Path

from checkpoint_diff import assert_same_training_state, fit_with_records, read_steps

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
N, K = 4, 2
SCHEDULER = json.dumps({"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.9}})
SCHEDULE = json.dumps(
    {"class_path": "codecplatform.lightning.schedule.DiscriminatorSchedule", "init_args": {"probability": 0.5}}
)


def fit(manifests: dict[str, Path], root: Path, max_batches: int, *more: str):
    return fit_with_records(
        [EXPERIMENTS / "mucodec" / "vocoder.yaml", EXPERIMENTS / "tiny" / "mucodec_vocoder.yaml"],
        manifests,
        root,
        f"--model.init_args.generator_scheduler={SCHEDULER}",
        f"--model.init_args.discriminator_scheduler={SCHEDULER}",
        f"--model.init_args.discriminator_schedule={SCHEDULE}",
        f"--model.init_args.max_batches={max_batches}",
        *more,
    )


def test_resumed_vocoder_stage_ends_in_the_uninterrupted_state(make_manifests, in_tmp_dir, latest_checkpoint):
    manifests = make_manifests(48000, 2, n_files=5)
    reference = fit(manifests, in_tmp_dir / "reference", N)
    stopped = fit(manifests, in_tmp_dir / "resumed", K)
    resumed = fit(manifests, in_tmp_dir / "resumed", N, f"--ckpt_path={latest_checkpoint(stopped.trainer)}")
    assert int(resumed.model.batch_counter) == N

    state = assert_same_training_state(
        latest_checkpoint(resumed.trainer),
        latest_checkpoint(reference.trainer),
        expect=["vocoder.", "gan.discriminator."],
    )
    assert [s["last_epoch"] for s in state["lr_schedulers"]] == [N, N]
    assert len(state["optimizer_states"]) == 2 and all(o["state"] for o in state["optimizer_states"])

    expected, steps = (
        read_steps(in_tmp_dir / "reference" / "steps.jsonl"),
        read_steps(in_tmp_dir / "resumed" / "steps.jsonl"),
    )
    assert sorted(steps) == sorted(expected) == list(range(N))
    for batch in range(K, N):
        assert steps[batch] == expected[batch], f"batch {batch}"
    stepped = [b for b in range(N) if "train/d/loss" in expected[b]]
    assert 0 < len(stepped) < N, f"the schedule (probability 0.5) stepped D on {stepped}: pick another seed"
