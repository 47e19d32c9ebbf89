"""Command-line start: wall time of ``codecplatform encode`` / ``decode`` of a 1 s file, split
into its parts, against the floor every Python + torch command pays (a ratio in the same run).

    python benchmarks/cli_start.py [--repeats 5] [--seconds 1] [--out outputs/benchmarks/cli_start.json]

The codec is the official ``encodec`` 24 kHz model (random weights with filled codebooks,
imported through our importer exactly as ``inference_rtf.py`` does: 14.9 M parameters), coded at
6 kbps. Each row is one fresh process, timed from the outside (wall seconds, median of
``--repeats``; the commands are interleaved within each repeat):

* ``python -c pass``: the interpreter alone;
* ``import torch``: the floor of any torch command;
* ``import codecplatform.cli + inference``: everything ``encode`` imports before it works;
* ``codecplatform --help``;
* ``codecplatform encode`` / ``decode`` of the 1 s file, total; their own report of the coding
  time (the figure after "in" in "encoded ... in X s": reading, resampling, coding, writing; not
  loading the checkpoint) is parsed and reported as ``coding s``.

``vs import torch`` = wall / the ``import torch`` wall of the same run. Also recorded: whether the
installed packages carry compiled bytecode (``__pycache__`` next to torch's sources) and
``PYTHONDONTWRITEBYTECODE``: with that variable set and no precompiled bytecode (``uv pip sync``
without ``--compile-bytecode``), every start recompiles torch's Python sources.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout + stderr) of one process; raises with its output if it fails."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout + done.stderr


def coding_seconds(output: str) -> float | None:
    """The command's own coding time: '... in 0.12 s' at the end of its report line."""
    found = re.search(r" in (\d+(?:\.\d+)?) s\b", output)
    return None if found is None else float(found.group(1))


def bytecode_state() -> dict[str, Any]:
    import importlib.util

    torch_dir = Path(importlib.util.find_spec("torch").origin).parent
    cached = list((torch_dir / "__pycache__").glob("*.pyc")) if (torch_dir / "__pycache__").is_dir() else []
    return {
        "torch_bytecode_precompiled": bool(cached),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


def make_inputs(folder: Path, seconds: float) -> tuple[Path, Path]:
    """(1 s of noise at 24 kHz as WAV, the imported EnCodec 24 kHz checkpoint)."""
    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(Path(__file__).parent))
    from inference_rtf import encodec_models  # the same checkpoint as the RTF benchmark

    encodec_models(folder)
    audio = folder / "one.wav"
    rng = np.random.default_rng(0)
    sf.write(audio, (0.1 * rng.standard_normal(int(24000 * seconds))).astype(np.float32), 24000)
    return audio, folder / "encodec_24khz.ckpt"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of the coded file")
    parser.add_argument("--out", default=str(REPO / "outputs" / "benchmarks" / "cli_start.json"))
    opts = parser.parse_args(argv)
    if opts.repeats < 1 or opts.seconds <= 0:
        parser.error("--repeats must be >= 1 and --seconds > 0")
    python = sys.executable
    cli = str(BIN / "codecplatform")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        audio, checkpoint = make_inputs(folder, opts.seconds)
        cpc, decoded = folder / "one.cpc", folder / "back.wav"
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "import torch": [python, "-c", "import torch"],
            "import codecplatform.cli + inference": [python, "-c", "import codecplatform.cli, codecplatform.inference"],
            "codecplatform --help": [cli, "--help"],
            "codecplatform encode": [cli, "encode", str(audio), str(cpc), "--checkpoint", str(checkpoint)]
            + ["--bandwidth", "6"],
            "codecplatform decode": [cli, "decode", str(cpc), str(decoded), "--checkpoint", str(checkpoint)],
        }
        walls: dict[str, list[float]] = {name: [] for name in commands}
        coding: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(opts.repeats):
            for name, command in commands.items():  # in order: decode reads what encode wrote
                wall, output = timed(command)
                walls[name].append(wall)
                seconds = coding_seconds(output) if name in ("codecplatform encode", "codecplatform decode") else None
                if seconds is not None:
                    coding[name].append(seconds)
    floor = statistics.median(walls["import torch"])
    rows = []
    for name in commands:
        wall = statistics.median(walls[name])
        rows.append(
            {
                "what": name,
                "wall_s": wall,
                "wall_s_all": walls[name],
                "vs_import_torch": wall / floor,
                "coding_s": statistics.median(coding[name]) if coding[name] else None,
            }
        )
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "python": platform.python_version(),
        "audio_seconds": opts.seconds,
        "repeats": opts.repeats,
        **bytecode_state(),
        "rows": rows,
    }
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load_start[0]:.2f} -> "
        f"{results['load_average_end'][0]:.2f}; torch bytecode precompiled: {results['torch_bytecode_precompiled']}, "
        f"PYTHONDONTWRITEBYTECODE={results['PYTHONDONTWRITEBYTECODE']}; {opts.seconds:g} s of 24 kHz audio, "
        f"EnCodec 24 kHz at 6 kbps; median of {opts.repeats}"
    )
    print("| what | wall s | vs import torch | coding s (the command's own report) |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        code = "-" if row["coding_s"] is None else f"{row['coding_s']:.2f}"
        print(f"| {row['what']} | {row['wall_s']:.2f} | {row['vs_import_torch']:.2f} | {code} |")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(results, indent=2))
    tmp_out.replace(out)  # never a half-written result
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
