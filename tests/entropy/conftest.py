"""Fixtures of the entropy-coding tests (helpers: tests/code_lm_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from code_lm_helpers import save_tiny_codec


@pytest.fixture(scope="session")
def tiny_codec_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "tiny_encodec.ckpt"
    save_tiny_codec(path)
    return path
