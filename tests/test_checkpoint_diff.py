"""tests/checkpoint_diff.py, the checkpoint comparison of the resume tests: it finds a difference
anywhere in the nest (tensors, optimizer moments, scheduler numbers, missing keys) and names it."""

from __future__ import annotations

import pytest
import torch
from checkpoint_diff import assert_same_training_state, differences


def checkpoint() -> dict:
    return {
        "state_dict": {"codec.w": torch.arange(4.0), "batch_counter": torch.tensor(3)},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(2.0), "exp_avg": torch.ones(2)}}, "param_groups": []}],
        "lr_schedulers": [{"last_epoch": 3, "_last_lr": [0.1]}],
        "LhotseAudioDataModule": {"train_sampler": {"epoch": 0, "batches": 3}},
        "callbacks": {"ModelCheckpoint": {"dirpath": "/a"}},
    }


def test_equal_checkpoints_pass_and_parts_outside_the_training_state_are_ignored():
    other = checkpoint()
    other["callbacks"]["ModelCheckpoint"]["dirpath"] = "/b"
    assert_same_training_state(checkpoint(), other, expect=["codec."])


@pytest.mark.parametrize(
    ("change", "path", "what"),
    [
        (lambda c: c["state_dict"]["codec.w"].add_(torch.tensor([1e-7, 0, 0, 0])), "state_dict/codec.w", "1e-07"),
        (lambda c: c["optimizer_states"][0]["state"][0]["exp_avg"].mul_(2), "optimizer_states[0]/state/0/exp_avg", "1"),
        (lambda c: c["lr_schedulers"][0].update(last_epoch=2), "lr_schedulers[0]/last_epoch", "3 vs 2"),
        (lambda c: c["LhotseAudioDataModule"]["train_sampler"].pop("batches"), "train_sampler/batches", "missing"),
        (lambda c: c["state_dict"].update(batch_counter=torch.tensor(4)), "state_dict/batch_counter", "1"),
    ],
)
def test_the_first_difference_is_named_with_its_size(change, path, what):
    changed = checkpoint()
    change(changed)
    with pytest.raises(AssertionError) as error:
        assert_same_training_state(checkpoint(), changed)
    first = str(error.value).splitlines()[0]
    assert path in first and what in first, first


def test_tolerance_and_nan():
    a, b = {"x": torch.tensor([1.0, float("nan")])}, {"x": torch.tensor([1.0 + 1e-6, float("nan")])}
    (found,) = differences(a, b)
    assert found.path == "x" and found.max_abs == pytest.approx(1e-6, rel=0.1)
    assert differences(a, b, atol=1e-5) == []
    assert differences({"x": torch.zeros(2)}, {"x": torch.zeros(3)})[0].what.startswith("(2,)")


def test_a_missing_expected_part_fails():
    with pytest.raises(AssertionError, match="codec_ema"):
        assert_same_training_state(checkpoint(), checkpoint(), expect=["codec_ema."])
