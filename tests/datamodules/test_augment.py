"""On-the-fly augmentation: each transform's math, the mixing strategies, and the dataset with it."""

from __future__ import annotations

import collections
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from jsonargparse import ArgumentParser
from lhotse import CutSet, Recording

from codecplatform.dsp.loudness import integrated_loudness
from datamodules.augment import (
    Augmentation,
    choose_sources,
    convolve_reverb,
    flip_polarity,
    is_clipped,
    limit_peak,
    longest_clipped_run,
    shift_phase,
)
from datamodules.dataset import AudioWindowDataset, cut_domain

SR = 8000
ENCODEC = (0.32, 0.32, 0.24, 0.12)


def _noise(channels: int, n: int, seed: int, scale: float = 0.1) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((channels, n))


def _plain(**overrides: object) -> Augmentation:
    """An augmentation that changes nothing unless told: no mixing, loudness, gain, phase."""
    settings: dict = dict(
        mixing=False, target_lufs=None, min_gain_db=0.0, max_gain_db=0.0, polarity_flip_prob=0.0, max_peak=1.0
    )
    settings.update(overrides)
    return Augmentation(**settings)


# --------------------------------------------------------------------------- clipping, peak
def test_clipping_is_a_run_of_full_scale_samples_in_one_channel() -> None:
    x = 0.5 * np.sin(np.linspace(0, 20, 400))[None].repeat(2, axis=0)  # (2, 400)
    assert longest_clipped_run(x, 0.999) == 0 and not is_clipped(x)
    lone = x.copy()
    lone[0, 50] = 1.0  # a peak-normalized file touches full scale once: not clipping
    assert not is_clipped(lone)
    two = x.copy()
    two[1, 100:102] = -1.0
    assert longest_clipped_run(two, 0.999) == 2 and not is_clipped(two, min_run=3)
    flat = x.copy()
    flat[1, 200:204] = -0.9995  # negative flat top in the second channel
    assert longest_clipped_run(flat, 0.999) == 4 and is_clipped(flat, min_run=3)
    split = x.copy()
    split[0, -2:] = 1.0
    split[1, :2] = 1.0  # two runs of 2 at the end of channel 0 and start of channel 1: not one run
    assert longest_clipped_run(split, 0.999) == 2


def test_limit_peak_scales_down_only_loud_audio() -> None:
    x = np.array([[0.2, -1.6, 0.8]])
    np.testing.assert_allclose(limit_peak(x, 0.99), x * 0.99 / 1.6)
    quiet = np.array([[0.2, -0.5]])
    assert limit_peak(quiet, 0.99) is quiet


# --------------------------------------------------------------------------- reverb
def test_reverb_with_a_unit_impulse_is_the_identity() -> None:
    x = _noise(2, 1000, seed=0)
    np.testing.assert_allclose(convolve_reverb(x, np.array([[1.0]])), x, atol=1e-12)
    np.testing.assert_allclose(convolve_reverb(x, np.array([[1.0, 0.0, 0.0]])), x, atol=1e-12)


def test_reverb_with_a_delayed_impulse_is_a_delay() -> None:
    x = _noise(2, 1000, seed=1)
    ir = np.zeros((1, 31))
    ir[0, 30] = 1.0
    y = convolve_reverb(x, ir)
    assert y.shape == x.shape
    np.testing.assert_allclose(y[:, 30:], x[:, :-30], atol=1e-12)
    np.testing.assert_allclose(y[:, :30], 0.0, atol=1e-12)


def test_reverb_keeps_the_level_before_truncation_and_silence_silent() -> None:
    x = _noise(1, 4000, seed=2)
    decay = np.exp(-np.arange(800) / 150.0) * np.random.default_rng(3).standard_normal(800)
    ir = (3.0 * decay)[None]  # not unit energy on purpose
    y = convolve_reverb(x, ir)
    # the tail cut at T holds the little energy that rang past the end
    assert np.sum(y**2) / np.sum(x**2) == pytest.approx(1.0, abs=0.1)
    assert not np.allclose(y, x)
    assert np.array_equal(convolve_reverb(np.zeros((2, 100)), ir), np.zeros((2, 100)))
    with pytest.raises(ValueError, match="3 channel"):
        convolve_reverb(np.zeros((3, 100)), np.ones((2, 5)))


# --------------------------------------------------------------------------- phase
def test_polarity_flip_negates_and_phase_shift_rotates_every_partial() -> None:
    x = _noise(2, 512, seed=4)
    np.testing.assert_array_equal(flip_polarity(x), -x)
    np.testing.assert_allclose(shift_phase(x, 0.0), x, atol=1e-12)
    x0 = x - x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(shift_phase(x0, math.pi), -x0, atol=1e-12)
    n, k, theta = 512, 37, 0.7  # a cosine on a DFT bin: the shift is exactly cos(wt + theta)
    t = np.arange(n)
    tone = np.cos(2 * np.pi * k * t / n)
    np.testing.assert_allclose(shift_phase(tone, theta), np.cos(2 * np.pi * k * t / n + theta), atol=1e-12)
    y = shift_phase(x0, 1.3)  # the magnitude spectrum is unchanged between DC and Nyquist
    np.testing.assert_allclose(np.abs(np.fft.rfft(y))[:, 1:-1], np.abs(np.fft.rfft(x0))[:, 1:-1], atol=1e-9)


# --------------------------------------------------------------------------- mixing strategies
def test_strategy_frequencies_match_the_probabilities_and_s4_has_no_music() -> None:
    domains = ["music", "speech", "general", "music", "speech", "speech", "music", "general"]
    rng = random.Random(0)
    counts: collections.Counter[str] = collections.Counter()
    draws = 20000
    for i in range(draws):
        slot = i % len(domains)
        strategy, items = choose_sources(domains, slot, ENCODEC, rng)
        counts[strategy] += 1
        assert len(set(items)) == len(items) == {"s1": 1, "s2": 1, "s3": 2, "s4": 3}[strategy]
        if strategy == "s1":
            assert domains[items[0]] == "music"
        if strategy in ("s2", "s4"):
            assert all(domains[j] != "music" for j in items)
        own_qualifies = {"s1": domains[slot] == "music", "s3": True}.get(strategy, domains[slot] != "music")
        assert (items[0] == slot) == own_qualifies  # the slot's own window first whenever it can be
    for strategy, p in zip(("s1", "s2", "s3", "s4"), ENCODEC):
        assert counts[strategy] / draws == pytest.approx(p, abs=0.015)


def test_strategy_fallbacks_when_the_batch_cannot_supply_the_sources() -> None:
    rng = random.Random(1)
    no_music = ["speech", "general", "speech", "speech"]
    seen = collections.Counter(choose_sources(no_music, i % 4, ENCODEC, rng)[0] for i in range(4000))
    assert seen["s1"] == 0 and seen["s2"] / 4000 == pytest.approx(0.64, abs=0.03)  # s1 -> s2
    only_music = ["music", "music", "music"]
    seen = collections.Counter(choose_sources(only_music, i % 3, ENCODEC, rng)[0] for i in range(3000))
    assert set(seen) == {"s1", "s3"}  # s2 -> s1; s4 -> s3
    assert seen["s3"] / 3000 == pytest.approx(0.36, abs=0.03)
    lone = [None, "speech", None]  # dropped items are never chosen; one item: always single
    for slot in range(3):
        assert choose_sources(lone, slot, ENCODEC, rng) == ("s2", [1])
    two_other = ["music", "speech", "general"]  # s4 needs 3 non-music: it becomes s3
    seen = collections.Counter(choose_sources(two_other, i % 3, ENCODEC, rng)[0] for i in range(3000))
    assert seen["s4"] == 0 and seen["s3"] / 3000 == pytest.approx(0.36, abs=0.03)
    with pytest.raises(ValueError, match="no item"):
        choose_sources([None, None], 0, ENCODEC, rng)


def test_mixing_sums_the_slot_window_and_another_window_of_the_batch() -> None:
    windows = [_noise(1, 400, seed=s) for s in range(4)]
    aug = _plain(mixing=True, single_music_prob=0.0, single_other_prob=0.0, mix2_prob=1.0, mix3_prob=0.0)
    out = aug(windows, ["speech"] * 4, SR, random.Random(0))
    assert out.shape == (4, 1, 400) and out.dtype == np.float32
    for slot in range(4):
        matches = [j for j in range(4) if j != slot and np.allclose(out[slot], windows[slot] + windows[j], atol=1e-6)]
        assert len(matches) == 1


# --------------------------------------------------------------------------- gain, loudness, peak
def test_random_gain_spans_the_configured_db_range() -> None:
    aug = _plain(min_gain_db=-10.0, max_gain_db=6.0)
    rng = random.Random(0)
    gains = []
    for i in range(40):
        windows = [_noise(1, 200, seed=10 * i + b, scale=0.05) for b in range(8)]
        out = aug(windows, ["general"] * 8, SR, rng)
        gains += [20 * math.log10(np.max(np.abs(o)) / np.max(np.abs(w))) for o, w in zip(out, windows)]
    gains = np.array(gains)
    assert gains.min() >= -10.0 - 1e-4 and gains.max() <= 6.0 + 1e-4
    assert gains.min() < -9.5 and gains.max() > 5.5
    assert gains.mean() == pytest.approx(-2.0, abs=0.6)  # uniform in dB: mean at the middle


def test_loudness_normalization_reaches_the_target_within_0_1_lu() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    windows = [
        _noise(2, sr, seed=5, scale=0.3),
        np.stack([0.01 * np.sin(2 * np.pi * 300 * t)] * 2),
        np.stack([0.5 * np.sin(2 * np.pi * 90 * t) * (t > 0.3), 0.2 * np.sin(2 * np.pi * 2000 * t)]),
    ]
    out = _plain(target_lufs=-24.0)(windows, ["general"] * 3, sr, random.Random(0))
    for o in out:
        assert integrated_loudness(o, sr) == pytest.approx(-24.0, abs=0.1)
    # with a random gain on top, the loudness is the target plus the gain
    loud = _plain(target_lufs=-24.0, min_gain_db=-10.0, max_gain_db=6.0)(windows, ["general"] * 3, sr, random.Random(1))
    levels = [integrated_loudness(o, sr) for o in loud]
    assert all(-34.1 <= v <= -17.9 for v in levels) and max(levels) - min(levels) > 0.5


def test_loud_output_is_scaled_below_max_peak_never_clipped() -> None:
    aug = _plain(target_lufs=-6.0, min_gain_db=6.0, max_gain_db=6.0, max_peak=0.9)
    windows = [_noise(2, 4000, seed=s, scale=0.1) for s in range(4)]
    out = aug(windows, ["general"] * 4, SR, random.Random(0))
    assert np.abs(out).max() == pytest.approx(0.9, abs=1e-6)
    assert not any(is_clipped(o) for o in out)


def test_silent_windows_stay_finite() -> None:
    aug = Augmentation(phase_shift_prob=1.0)  # EnCodec defaults + loudness + phase
    out = aug([np.zeros((1, 4000))] * 3, ["music", "speech", "general"], SR, random.Random(0))
    assert np.isfinite(out).all() and np.array_equal(out, np.zeros_like(out))


def test_every_slot_is_filled_and_none_only_when_all_windows_failed() -> None:
    aug = _plain()
    windows = [None, _noise(1, 100, seed=0), None]
    out = aug(windows, ["general"] * 3, SR, random.Random(0))
    assert out.shape == (3, 1, 100)
    np.testing.assert_allclose(out, np.stack([windows[1]] * 3), atol=1e-6)
    assert aug([None, None], ["general"] * 2, SR, random.Random(0)).shape[0] == 0


def test_the_same_seed_gives_the_same_batch() -> None:
    aug = Augmentation(phase_shift_prob=0.5)
    windows = [_noise(1, 4000, seed=s) for s in range(6)]
    domains = ["music", "speech", "general", "speech", "music", "speech"]
    a = aug(windows, domains, SR, random.Random("7/rank0/worker0"))
    b = aug(windows, domains, SR, random.Random("7/rank0/worker0"))
    c = aug(windows, domains, SR, random.Random("7/rank1/worker0"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --------------------------------------------------------------------------- impulse responses
def _write_ir(path: Path, ir: np.ndarray, sr: int) -> Path:
    sf.write(path, ir.astype(np.float32), sr, subtype="FLOAT" if path.suffix == ".wav" else None)
    return path


def test_reverb_applies_a_user_ir_but_not_to_single_source_music(tmp_path: Path) -> None:
    ir = np.zeros(21)
    ir[20] = 0.5
    folder = tmp_path / "irs"
    folder.mkdir()
    _write_ir(folder / "delay.wav", ir, SR)
    windows = [_noise(1, 800, seed=s) for s in range(2)]
    aug = _plain(impulse_responses=[str(folder)], reverb_prob=1.0)
    assert aug.impulse_response_files == [str(folder / "delay.wav")]
    out = aug(windows, ["speech", "speech"], SR, random.Random(0))
    for o, w in zip(out, windows):
        np.testing.assert_allclose(o[:, 20:], w[:, :-20], atol=1e-6)  # a delay, level kept
    dry = aug(windows, ["music", "music"], SR, random.Random(0))
    np.testing.assert_allclose(dry, np.stack(windows), atol=1e-6)
    wet = _plain(impulse_responses=[str(folder)], reverb_prob=1.0, reverb_single_music=True)(
        windows, ["music", "music"], SR, random.Random(0)
    )
    np.testing.assert_allclose(wet[0][:, 20:], windows[0][:, :-20], atol=1e-6)
    never = _plain(impulse_responses=[str(folder)], reverb_prob=0.0)(windows, ["speech"] * 2, SR, random.Random(0))
    np.testing.assert_allclose(never, np.stack(windows), atol=1e-6)


def test_impulse_responses_are_resampled_to_the_batch_rate(tmp_path: Path) -> None:
    ir = 0.2 * np.exp(-np.arange(4800) / 500.0) * np.random.default_rng(0).uniform(-1, 1, 4800)
    path = _write_ir(tmp_path / "room.flac", ir, 48000)
    aug = _plain(impulse_responses=[str(path)])
    (at_16k,) = aug.impulse_responses_at(16000)
    assert at_16k.shape == (1, 1600) and np.sum(at_16k**2) == pytest.approx(1.0)
    assert aug.impulse_responses_at(16000)[0] is at_16k  # resampled once


def test_bad_impulse_responses_fail_at_construction_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        Augmentation(impulse_responses=[str(tmp_path / "missing.wav")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        Augmentation(impulse_responses=[str(tmp_path / "empty_dir")])
    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    with pytest.raises(ValueError, match="broken.wav"):
        Augmentation(impulse_responses=[str(broken)])
    silent = _write_ir(tmp_path / "silent.wav", np.zeros(10), SR)
    with pytest.raises(ValueError, match="silent.wav is all zeros"):
        Augmentation(impulse_responses=[str(silent)])
    stereo = tmp_path / "stereo_ir.wav"
    sf.write(stereo, np.ones((5, 2), dtype=np.float32), SR)
    aug = _plain(impulse_responses=[str(stereo)], reverb_prob=1.0)
    with pytest.raises(ValueError, match="stereo_ir.wav has 2 channels"):
        aug([_noise(3, 100, seed=0)], ["speech"], SR, random.Random(0))


def test_builds_from_yaml_class_path_and_init_args(tmp_path: Path) -> None:
    ir = _write_ir(tmp_path / "ir.wav", np.array([1.0, 0.3, 0.1]), SR)
    parser = ArgumentParser()
    parser.add_argument("--augmentation", type=Augmentation | None, default=None)
    config = parser.parse_string(
        "augmentation:\n"
        "  class_path: datamodules.augment.Augmentation\n"
        "  init_args:\n"
        "    mix2_prob: 0.3\n"
        "    min_gain_db: -8\n"
        f"    impulse_responses: [{ir}]\n"
        "    phase_shift_prob: 1.0\n"
    )
    aug = parser.instantiate(config).augmentation
    assert isinstance(aug, Augmentation)
    assert aug.probabilities == (0.32, 0.32, 0.3, 0.12) and aug.min_gain_db == -8.0
    assert aug.impulse_response_files == [str(ir)] and aug.phase_shift_prob == 1.0


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="mix2_prob"):
        Augmentation(mix2_prob=1.5)
    with pytest.raises(ValueError, match="at least one"):
        Augmentation(single_music_prob=0, single_other_prob=0, mix2_prob=0, mix3_prob=0)
    with pytest.raises(ValueError, match="min_gain_db"):
        Augmentation(min_gain_db=3.0, max_gain_db=-3.0)
    with pytest.raises(ValueError, match="reverb_prob"):
        Augmentation(reverb_prob=-0.1)


# --------------------------------------------------------------------------- with the dataset
@pytest.fixture(scope="module")
def clip_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CutSet]:
    """2 s files at 8 kHz: clean ones with domains, one clipped after 1 s, one clipped all along."""
    root = tmp_path_factory.mktemp("augment_corpus")
    t = np.arange(2 * SR) / SR
    cuts = []
    for i, domain in enumerate(["music", "speech", "general", "speech", None]):
        path = root / f"clean_{i}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t * (1 + t))).astype(np.float32), SR)
        cut = Recording.from_file(path).to_cut()
        if domain is not None:
            cut.custom = {"domain": domain, "full_band": True}
        cuts.append(cut)
    half = np.clip(3.0 * np.sin(2 * np.pi * 100 * t), -1, 1) * 0.999
    half[:SR] = 0.3 * np.sin(2 * np.pi * 100 * t[:SR])  # clean first second, flat tops after
    sf.write(root / "half_clipped.wav", half.astype(np.float32), SR)
    sf.write(root / "all_clipped.wav", np.clip(3.0 * np.sin(2 * np.pi * 100 * t), -1, 1).astype(np.float32), SR)
    return {
        "clean": CutSet.from_cuts(cuts),
        "half": CutSet.from_cuts([Recording.from_file(root / "half_clipped.wav").to_cut()]),
        "all": CutSet.from_cuts([Recording.from_file(root / "all_clipped.wav").to_cut()]),
    }


def _dataset(augmentation: Augmentation | None, channels: int = 1, seed: int = 0) -> AudioWindowDataset:
    return AudioWindowDataset(
        sample_rate=SR,
        channels=channels,
        segment_seconds=0.25,
        random_offset=True,
        seed=seed,
        augmentation=augmentation,
    )


def test_dataset_with_augmentation_gives_finite_float32_batches(clip_corpus: dict[str, CutSet]) -> None:
    assert [cut_domain(c) for c in clip_corpus["clean"]] == ["music", "speech", "general", "speech", "general"]
    aug = Augmentation(phase_shift_prob=0.5)
    batch = _dataset(aug, channels=2)[clip_corpus["clean"]]
    assert batch.shape == (5, 2, 2000) and batch.dtype == torch.float32
    assert torch.isfinite(batch).all() and batch.abs().max() <= 0.99 + 1e-6
    again = _dataset(aug, channels=2)[clip_corpus["clean"]]
    other_seed = _dataset(aug, channels=2, seed=1)[clip_corpus["clean"]]
    assert torch.equal(batch, again) and not torch.equal(batch, other_seed)


def test_clipped_windows_never_come_out(clip_corpus: dict[str, CutSet]) -> None:
    keep_levels = _plain(clip_max_tries=8)  # levels untouched: a clipped window would show
    dataset = _dataset(keep_levels)
    mixed = CutSet.from_cuts([*clip_corpus["half"], *clip_corpus["clean"]])
    dropped = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(40):
            batch = dataset[mixed]
            assert batch.shape == (6, 1, 2000)  # a dropped cut's slot is filled from the batch
            assert not any(is_clipped(w.numpy()) for w in batch)
    dropped = sum("half_clipped.wav clipped" in str(w.message) for w in caught)
    assert dropped < 5  # 8 offsets per cut, each clean with probability ~0.43
    # without rejection the same draws do give clipped windows
    no_rejection = _dataset(_plain(reject_clipped=False))
    assert any(is_clipped(no_rejection[clip_corpus["half"]][0].numpy()) for _ in range(20))


def test_a_cut_clipped_everywhere_is_dropped_with_a_warning(clip_corpus: dict[str, CutSet]) -> None:
    dataset = _dataset(_plain(clip_max_tries=3))
    with pytest.warns(RuntimeWarning, match=r"all 3 windows drawn from .*all_clipped.wav clipped"):
        assert dataset[clip_corpus["all"]].shape == (0, 1, 2000)
    mixed = CutSet.from_cuts([*clip_corpus["all"], *clip_corpus["clean"]])
    with pytest.warns(RuntimeWarning, match="all_clipped.wav"):
        batch = dataset[mixed]
    assert batch.shape == (6, 1, 2000) and not any(is_clipped(w.numpy()) for w in batch)


def test_keyed_draws_give_the_same_audio_on_any_rank_and_still_redraw_clipped_windows(
    clip_corpus: dict[str, CutSet],
) -> None:
    """With the sampler's draw keys (``stable_windows``), offsets, re-drawn offsets and the batch's
    augmentation are seeded by the keys: a resumed run or another rank reproduces a batch exactly."""
    from datamodules.sampling import with_draw_key

    aug = _plain(clip_max_tries=8, polarity_flip_prob=0.5, phase_shift_prob=0.5)
    cuts = [*clip_corpus["half"], *clip_corpus["clean"]]
    seen = set()
    for draw in range(12):
        keyed = CutSet.from_cuts(with_draw_key(c, f"0/{draw}/{c.id}") for c in cuts)
        rank0 = AudioWindowDataset(SR, 1, 0.25, random_offset=True, rank=0, augmentation=aug)
        rank1 = AudioWindowDataset(SR, 1, 0.25, random_offset=True, rank=1, augmentation=aug)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = rank0[keyed]
            assert torch.equal(batch, rank1[keyed])
        assert batch.shape == (6, 1, 2000) and not any(is_clipped(w.numpy()) for w in batch)
        seen.add(batch[0].numpy().tobytes())
    assert len(seen) == 12  # other keys, other windows
    unkeyed = CutSet.from_cuts(cuts)
    rank0 = AudioWindowDataset(SR, 1, 0.25, random_offset=True, rank=0, augmentation=aug)
    rank1 = AudioWindowDataset(SR, 1, 0.25, random_offset=True, rank=1, augmentation=aug)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not torch.equal(rank0[unkeyed], rank1[unkeyed])  # without keys: per-rank generators
