"""README.md stays short, its runnable commands work, the documentation's relative links resolve, and
experiment YAML headers stay at most 3 comment lines.

Blocks fenced as `` ```bash runnable `` are checked line by line (continuations joined):

* ``codecplatform prepare ...`` runs for real, in a temporary folder holding a few generated audio
  files under the block's ``--audio_dir``;
* ``codecplatform fit|validate|test|predict ...`` need a trained model and minutes of training, so
  they are not run: every option except ``--ckpt_path`` is parsed and the classes instantiated
  as that subcommand would (``CodecCLI(run=False)`` with ``checked_subcommand``: unknown keys,
  wrong values, sample rates other than the codec's and missing manifests fail), and
  ``--ckpt_path`` must be a parameter of the Trainer method of that subcommand;
* the other subcommands (``encode``, ``decode``, ``compare``, ...) need that model or its MLflow
  runs: every ``--flag`` they use must appear in ``codecplatform <subcommand> --help``;
* ``NAME=...`` lines set shell variables; ``$NAME`` is replaced by a placeholder where used.

Any other line in a runnable block fails the test, so a new kind of command needs a check here.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from synthetic_audio import write_tones

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 220
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def runnable_commands(text: str) -> list[str]:
    """The commands of the ```bash runnable blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash runnable\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_LINES, f"README.md has {lines} lines; keep it under {MAX_LINES}: move detail to docs/"


def test_readme_has_runnable_blocks():
    commands = runnable_commands(README.read_text())
    subcommands = {shlex.split(c)[1] for c in commands if c.startswith("codecplatform ")}
    assert {"prepare", "fit", "test", "encode", "decode", "compare"} <= subcommands


def _help_text(subcommand: str) -> str:
    from codecplatform.cli import cli_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli_main([subcommand, "--help"])
    return out.getvalue()


def _check_lightning_command(subcommand: str, args: list[str]) -> None:
    from lightning.pytorch import Trainer

    from codecplatform.cli import _codec_cli_class, expand_args

    rest, i = [], 0
    while i < len(args):
        name, _, value = args[i].partition("=")
        if name == "--ckpt_path":
            assert "ckpt_path" in inspect.signature(getattr(Trainer, subcommand)).parameters
            i += 1 if value else 2
            continue
        rest.append(args[i])
        i += 1

    class AsSubcommand(_codec_cli_class()):
        checked_subcommand = subcommand  # its manifests only, checked to exist

    cli = AsSubcommand(args=expand_args(rest), run=False)
    assert cli.model is not None and cli.datamodule is not None


def test_runnable_blocks(tmp_path, monkeypatch, empty_mlflow_store):
    import shutil

    from codecplatform.cli import cli_main

    commands = runnable_commands(README.read_text())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    shutil.copyfile(empty_mlflow_store, tmp_path / "mlflow.db")
    variables: dict[str, str] = {}
    makefile = (ROOT / "Makefile").read_text()
    for command in commands:
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=", command)
        if assignment:
            variables[assignment.group(1)] = str(tmp_path / f"{assignment.group(1).lower()}.placeholder")
            continue
        for name, value in variables.items():
            command = command.replace(f'"${name}"', value).replace(f"${name}", value)
        argv = shlex.split(command)
        if argv[0] == "make":
            assert re.search(rf"^{re.escape(argv[1])}:", makefile, flags=re.M), f"no make target {argv[1]}"
            continue
        assert argv[0] == "codecplatform", f"runnable line this test cannot check: {command}"
        subcommand, args = argv[1], argv[2:]
        if subcommand == "prepare":
            audio_dir = Path(args[args.index("--audio_dir") + 1])
            write_tones(audio_dir, 24000, 1, n_files=6)
            assert cli_main(argv[1:]) == 0
        elif subcommand in LIGHTNING_SUBCOMMANDS:
            _check_lightning_command(subcommand, args)
        else:
            help_text = _help_text(subcommand)
            for arg in args:
                if arg.startswith("--"):
                    flag = arg.split("=", 1)[0]
                    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                        f"`codecplatform {subcommand}` has no option {flag} (README: {command})"
                    )


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def markdown_files() -> list[Path]:
    return [
        README,
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "benchmarks" / "RESULTS.md",
        *sorted((ROOT / "experiments").rglob("*.md")),
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_experiment_headers_are_short():
    """An experiment YAML opens with at most 3 comment lines: measurements go to benchmarks/RESULTS.md, the
    family's choices to docs/models/."""
    long = {}
    for path in sorted((ROOT / "experiments").rglob("*.yaml")):
        lines = path.read_text().splitlines()
        n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        if n > 3:
            long[str(path.relative_to(ROOT))] = n
    assert not long, f"header comment lines (at most 3): {long}"


def test_documentation_cites_no_development_files():
    """A clone has no ../shared folder: cite the paper and the official repository instead."""
    files = [*markdown_files(), *sorted((ROOT / "experiments").rglob("*.yaml"))]
    found = [str(p.relative_to(ROOT)) for p in files if re.search(r"\.\./shared|SPECS\.md", p.read_text())]
    assert not found, f"references to ../shared or SPECS.md in {found}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
