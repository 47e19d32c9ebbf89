"""TrainingHealthMonitor: warns at the next validation when the discriminator sat at its
equilibrium, or a codebook's training perplexity stayed below 2, for the whole interval; says
nothing for a healthy interval, on other ranks, or with too few steps."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import fit_tiny

from callbacks.health import TrainingHealthMonitor, TrainingHealthWarning
from callbacks.progress import LossProgressBar


class FakeModule:
    """What the monitor reads of a module: ``batch_counter``."""

    def __init__(self):
        self.batch_counter = torch.zeros((), dtype=torch.long)


def fake_trainer(global_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=global_zero, sanity_checking=False, progress_bar_callback=None)


def d_step(real: float, fake: float, loss: float = 2.0, equilibrium: float = 2.0) -> dict[str, torch.Tensor]:
    return {
        "train/d/real_score": torch.tensor(real),
        "train/d/fake_score": torch.tensor(fake),
        "train/d/loss": torch.tensor(loss),
        "train/d/equilibrium_loss": torch.tensor(equilibrium),
    }


def cb_step(*perplexities: float | None) -> dict[str, torch.Tensor]:
    """Codebook k's perplexity; None: the batch did not run codebook k (no key)."""
    return {f"train/codebook/perplexity/{k}": torch.tensor(p) for k, p in enumerate(perplexities) if p is not None}


def train(monitor, trainer, module, steps: list[dict]) -> None:
    """Run the monitor's batch hook as GANCodecModule would: count the batch, return its values."""
    for values in steps:
        module.batch_counter += 1
        monitor.on_train_batch_end(trainer, module, values, None, 0)


def validate(monitor, trainer, module) -> list[str]:
    """The health messages the next validation produces."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor.on_validation_start(trainer, module)
    return [str(w.message) for w in caught if issubclass(w.category, TrainingHealthWarning)]


def test_discriminator_at_equilibrium_is_reported_with_the_batch_it_began_at():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=5), fake_trainer(), FakeModule()
    # batches 0..4 healthy, from batch 5 on real ~ fake: the first interval is not stuck throughout
    train(monitor, trainer, module, [d_step(1.0, -1.0, 0.5)] * 5 + [d_step(0.01, 0.0)] * 5)
    assert validate(monitor, trainer, module) == []
    train(monitor, trainer, module, [d_step(0.002, 0.001)] * 10)  # stuck the whole second interval
    messages = validate(monitor, trainer, module)
    assert len(messages) == 1, messages
    assert "discriminator at equilibrium since batch 5" in messages[0]
    assert "equilibrium 2)" in messages[0]  # hinge
    for knob in ("discriminator lr", "discriminator_schedule.start_step", "gan loss weights"):
        assert knob in messages[0]
    assert monitor.messages == messages


def test_a_healthy_discriminator_and_steps_without_it_give_no_warning():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=5), fake_trainer(), FakeModule()
    train(monitor, trainer, module, [d_step(0.9, -0.8, 0.7)] * 20)
    assert validate(monitor, trainer, module) == []
    train(monitor, trainer, module, [{"train/g/mel": torch.tensor(1.0)}] * 20)  # discriminator not started yet
    assert validate(monitor, trainer, module) == []


def test_loss_tolerance_uses_the_logged_equilibrium_loss():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=5, loss_tolerance=0.05), fake_trainer(), FakeModule()
    # least squares, 4 sub-discriminators summed: equilibrium 4 * 0.5
    train(monitor, trainer, module, [d_step(0.5, 0.5, loss=2.01, equilibrium=2.0)] * 10)
    messages = validate(monitor, trainer, module)
    assert len(messages) == 1 and "d loss 2.01 (equilibrium 2)" in messages[0], messages
    train(monitor, trainer, module, [d_step(0.5, 0.5, loss=0.5, equilibrium=2.0)] * 10)  # equal scores, loss far off
    assert validate(monitor, trainer, module) == []


def test_collapsed_codebook_is_reported_and_unused_steps_are_left_out():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=5), fake_trainer(), FakeModule()
    steps = [cb_step(40.0, None)] * 3  # a lower bandwidth: codebooks 1, 2 not run
    steps += [cb_step(40.0, 12.0, 1.3)] * 6 + [cb_step(40.0, 12.0, math.nan)] * 2 + [cb_step(40.0)] * 3
    train(monitor, trainer, module, steps)
    messages = validate(monitor, trainer, module)
    assert len(messages) == 1, messages
    assert messages[0].startswith("codebook 2 perplexity < 2 for the whole interval (6 steps, at most 1.3)")
    for knob in ("threshold_ema_dead_code", "kmeans_init", "codebook_size", "commit weight"):
        assert knob in messages[0]


def test_a_codebook_that_recovers_once_is_not_reported():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=5), fake_trainer(), FakeModule()
    train(monitor, trainer, module, [cb_step(40.0, 1.0)] * 10 + [cb_step(40.0, 3.0)] + [cb_step(40.0, 1.0)] * 10)
    assert validate(monitor, trainer, module) == []


def test_no_report_on_other_ranks_with_too_few_steps_or_in_sanity_checks():
    stuck = [d_step(0.0, 0.0) | cb_step(1.0)] * 10
    module = FakeModule()
    other = TrainingHealthMonitor(min_steps=5)
    train(other, fake_trainer(global_zero=False), module, stuck)
    assert validate(other, fake_trainer(global_zero=False), module) == [] and other.messages == []
    short = TrainingHealthMonitor(min_steps=20)
    train(short, fake_trainer(), module, stuck)
    assert validate(short, fake_trainer(), module) == []
    sanity = TrainingHealthMonitor(min_steps=5)
    train(sanity, fake_trainer(), module, stuck)
    checking = fake_trainer()
    checking.sanity_checking = True
    assert validate(sanity, checking, module) == []
    assert len(validate(sanity, fake_trainer(), module)) == 2  # the interval is judged at the real validation


def test_a_batch_the_module_skipped_does_not_repeat_the_last_values():
    monitor, trainer, module = TrainingHealthMonitor(min_steps=3), fake_trainer(), FakeModule()
    train(monitor, trainer, module, [cb_step(1.0)] * 2)
    monitor.on_train_batch_end(trainer, module, None, None, 0)  # skipped batch: no values
    assert validate(monitor, trainer, module) == []  # 2 steps, not 3


def test_in_a_fit_the_module_returns_the_values_and_the_monitor_warns(tmp_path):
    # thresholds no real run would meet: every interval is "stuck", so the plumbing shows
    monitor = TrainingHealthMonitor(score_tolerance=1e9, min_perplexity=1e9, min_steps=1)
    with pytest.warns(TrainingHealthWarning) as caught:
        fit_tiny([monitor], False, tmp_path, batches=2, val_every=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, TrainingHealthWarning)]
    assert any(m.startswith("discriminator at equilibrium since batch 0") for m in messages), messages
    assert any(m.startswith("codebook 0 perplexity") for m in messages), messages
    assert any(m.startswith("codebook 1 perplexity") for m in messages), messages
    quiet = TrainingHealthMonitor(score_tolerance=1e-12, min_perplexity=0.0, min_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_tiny([quiet], False, tmp_path / "quiet", batches=2, val_every=2)
    assert not [w for w in caught if issubclass(w.category, TrainingHealthWarning)]


def test_with_a_progress_bar_the_warning_is_written_above_it(tmp_path, capsys):
    monitor = TrainingHealthMonitor(min_perplexity=1e9, min_steps=1)
    bar = LossProgressBar()  # the experiments' bar (tqdm): tqdm.write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_tiny([monitor, bar], False, tmp_path, batches=2, val_every=2, enable_progress_bar=True)
    assert not [w for w in caught if issubclass(w.category, TrainingHealthWarning)]
    out = capsys.readouterr().out
    assert "WARNING training health: codebook 0 perplexity" in out
