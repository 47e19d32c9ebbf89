"""The PASS/FAIL verdicts that ``make quickstart`` prints: a healthy run passes every check, and each
kind of broken model fails exactly the check that should catch it."""

from __future__ import annotations

import copy

import pytest

from codecplatform.quickstart import MIN_PERPLEXITY, _checks

HEALTHY = [
    {"label": f"{kbps}kbps", "n_q": n_q, "mel_distance": mel, "si_sdr": sdr, "codebook_min_perplexity": 38.5}
    for kbps, n_q, mel, sdr in [(2.25, 1, 3.894, 3.9), (4.5, 2, 3.682, 7.3), (9, 4, 3.551, 9.3), (18, 8, 3.426, 9.7)]
]
LEARNING_D = {"loss": 1.90, "equilibrium_loss": 2.0, "real_score": 0.30, "fake_score": 0.19}
NAMES = ("si_sdr", "mel_falls", "codebooks_used", "discriminator")


def verdicts(per_bitrate, discriminator) -> dict[str, bool]:
    checks = _checks(per_bitrate, discriminator)
    assert len(checks) == len(NAMES)
    for passed, text in checks:
        assert isinstance(passed, bool) and text and "\n" not in text
    return {name: passed for name, (passed, _) in zip(NAMES, checks)}


def failing(per_bitrate, discriminator) -> set[str]:
    return {name for name, passed in verdicts(per_bitrate, discriminator).items() if not passed}


def test_a_healthy_run_passes_every_check():
    assert failing(HEALTHY, LEARNING_D) == set()


def broken(**changes):
    rows = copy.deepcopy(HEALTHY)
    for key, values in changes.items():
        for row, value in zip(rows, values):
            row[key] = value
    return rows


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # waveform not reconstructed (an untrained codec: about -73 dB)
        (broken(si_sdr=[-80.0, -75.0, -74.0, -73.0]), {"si_sdr"}),
        (broken(si_sdr=[-1.0, -0.5, -0.2, 0.0]), {"si_sdr"}),  # 0 dB is not above 0 dB
        # later codebooks add nothing (flat) or make it worse (one step up)
        (broken(mel_distance=[3.5, 3.5, 3.5, 3.5]), {"mel_falls"}),
        (broken(mel_distance=[3.9, 3.7, 3.75, 3.4]), {"mel_falls"}),
        # a codebook collapsed to a few entries
        (broken(codebook_min_perplexity=[38.0, 38.0, 38.0, MIN_PERPLEXITY - 0.1]), {"codebooks_used"}),
    ],
)
def test_each_broken_model_fails_its_check(rows, expected):
    assert failing(rows, LEARNING_D) == expected


@pytest.mark.parametrize(
    "discriminator",
    [
        None,  # never stepped
        {"loss": 2.0, "equilibrium_loss": 2.0, "real_score": 0.0, "fake_score": 0.0},  # at equilibrium
        {"loss": 1.99, "equilibrium_loss": 2.0, "real_score": 0.3, "fake_score": 0.1},  # within 0.02 of it
        {"loss": 1.5, "equilibrium_loss": 2.0, "real_score": 0.1, "fake_score": 0.3},  # scores fakes as real
    ],
)
def test_a_discriminator_that_does_not_learn_fails(discriminator):
    assert failing(HEALTHY, discriminator) == {"discriminator"}


def test_the_verdict_lines_name_the_measured_values():
    texts = [text for _, text in _checks(HEALTHY, LEARNING_D)]
    assert "9.70 dB" in texts[0]
    assert "3.894 > 3.682 > 3.551 > 3.426" in texts[1]
    assert "38.5" in texts[2]
    assert "1.900 vs 2.000" in texts[3]


def test_overrides_written_as_options_reach_the_cli(tmp_path, monkeypatch):
    """``python -m codecplatform.quickstart --trainer.precision=bf16-mixed`` (as its help shows) passes
    the override on, after the data and config arguments, instead of refusing it."""
    from codecplatform import quickstart

    seen = []

    class Stop(Exception):
        pass

    def fake_cli_main(args):
        seen.append(args)
        raise Stop

    monkeypatch.setattr(quickstart, "cli_main", fake_cli_main)
    data = tmp_path / "data"
    (data / "manifests").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (data / "manifests" / f"cuts_{split}.jsonl.gz").touch()
    with pytest.raises(Stop):
        quickstart.main(["--data_dir", str(data), "--trainer.precision=bf16-mixed", "--max_batches", "3"])
    (args,) = seen
    assert args[0] == "fit" and args[-2:] == ["--trainer.precision=bf16-mixed", "--model.init_args.max_batches=3"]
    assert f"--data.init_args.test_cuts={data / 'manifests' / 'cuts_test.jsonl.gz'}" in args
