"""benchmarks/code_lm_quick.py: the held-out track is the caller's choice, not one of the project's files."""

from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark


def test_held_out_track_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_benchmark("code_lm_quick").main(["--codec_checkpoint", str(tmp_path / "c.ckpt"), "--out", "lm.ckpt"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --held_out" in capsys.readouterr().err
