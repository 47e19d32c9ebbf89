"""The installed environment is exactly requirements.lock (fails when it drifts).

`make quickstart` / `make test` install the lock with `uv pip sync`; this test is part of `make test`,
so an environment that differs from the lock in any package, or whose dependencies do not fit together
beyond the one documented exception, fails CI instead of failing later in an obscure import.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"

# Installed beside the lock on purpose: pip (the venv's own, used to bootstrap uv) and this project
# (editable, --no-deps).
NOT_IN_LOCK = {"pip", "codecplatform"}

# The reference packages of the parity tests are installed without their dependencies (see the Makefile):
# descript-audiotools pins protobuf<3.20, with which mlflow does not import, and declares librosa,
# markdown2 and torch-stoi, which neither dac's model code nor our tests import. `pip check` reports
# exactly these lines; any other line is drift.
ALLOWED_PIP_CHECK = {
    "descript-audiotools 0.7.2 requires librosa, which is not installed.",
    "descript-audiotools 0.7.2 requires markdown2, which is not installed.",
    "descript-audiotools 0.7.2 requires torch-stoi, which is not installed.",
    re.compile(r"descript-audiotools 0\.7\.2 has requirement protobuf<3\.20,>=3\.9\.2, but you have protobuf \S+\."),
}


def _lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not an exact 'name==version' pin"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def _installed() -> dict[str, str]:
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def _allowed(line: str) -> bool:
    return any(a == line if isinstance(a, str) else a.fullmatch(line) for a in ALLOWED_PIP_CHECK)


def test_lock_pins_the_torch_pair():
    pins = _lock()
    assert pins["torch"] == "2.11.0" and pins["torchaudio"] == "2.11.0"
    assert "descript-audio-codec" in pins and "descript-audiotools" in pins


def test_installed_versions_equal_the_lock():
    pins, installed = _lock(), _installed()
    missing = sorted(name for name in pins if name not in installed)
    # a local version label (torch's "+cu130") is part of the same release
    wrong = sorted(
        f"{name}: lock {version}, installed {installed[name]}"
        for name, version in pins.items()
        if name in installed and installed[name].split("+")[0] != version.split("+")[0]
    )
    extra = sorted(name for name in installed if name not in pins and name not in NOT_IN_LOCK)
    assert not missing, f"in requirements.lock but not installed: {missing} (run make install)"
    assert not wrong, f"installed versions differ from requirements.lock: {wrong} (run make install)"
    assert not extra, f"installed but not in requirements.lock: {extra} (add them to pyproject.toml, then make lock)"


def test_pip_check_passes_but_for_the_reference_packages():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if not _allowed(line) and not line.startswith("No broken requirements")]
    assert not unexpected, "pip check found broken requirements:\n" + "\n".join(unexpected)


def test_core_packages_import_together():
    modules = ["torch", "torchaudio", "lightning", "lhotse", "mlflow", "diffusers", "transformers", "dac", "encodec"]
    code = "import " + ", ".join(modules) + "; import torchaudio.functional as F; F.resample"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"importing {modules} in one process failed:\n{result.stderr[-3000:]}"
