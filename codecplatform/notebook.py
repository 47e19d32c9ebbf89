"""``make notebook``: run a notebook headless and write an HTML report with its figures.

    python -m codecplatform.notebook notebooks/codebook_usage.ipynb --html outputs/notebooks/codebook_usage.html

The notebook runs in a ``python3`` kernel of this environment (ipykernel's kernelspec is installed
into the venv when missing) with the current environment, so its inputs are the environment
variables it reads (``CODEC_RUN_ID``, ``CODEC_CHECKPOINT``, ``CODEC_AUDIO``, ...: docs/notebooks.md),
and in the working directory. Figures come out as PNG (the kernel's inline backend; ``MPLBACKEND``
is dropped). Written: the HTML report (markdown as simple HTML, code, printed text, figures as
embedded base64 PNG, audio players as they are) and, beside it, the executed ``.ipynb``.

A failing cell ends the run with exit status 1 and one line on stderr, the error's type and message
without the traceback or terminal colour codes (the report still shows the cells up to the error).
nbconvert is not in the lock; :func:`notebook_html` is the small writer used instead.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:13px}"
    "pre.code{border-left:3px solid #999}pre.error{background:#fdd}img{max-width:100%}"
)


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes."""
    return ANSI.sub("", text)


def _inline(text: str) -> str:
    """Escaped text with `code`, **bold** and [links](url) of one markdown line."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


def markdown_html(source: str) -> str:
    """A markdown cell as simple HTML: headings, fenced code as <pre>, lists and paragraphs."""
    out: list[str] = []
    paragraph: list[str] = []
    fence: list[str] | None = None

    def flush() -> None:
        if paragraph:
            out.append("<p>" + " ".join(_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()

    for line in source.splitlines():
        if fence is not None:
            if line.strip().startswith("```"):
                out.append("<pre>" + html.escape("\n".join(fence)) + "</pre>")
                fence = None
            else:
                fence.append(line)
            continue
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        item = re.match(r"^(\d+\.|[-*])\s+(.*)$", stripped)
        if stripped.startswith("```"):
            flush()
            fence = []
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            flush()
            bullet = item.group(1) in "-*"
            out.append(f"<p>&bull; {_inline(item.group(2))}</p>" if bullet else f"<p>{_inline(stripped)}</p>")
        elif not stripped:
            flush()
        else:
            paragraph.append(stripped)
    flush()
    if fence is not None:
        out.append("<pre>" + html.escape("\n".join(fence)) + "</pre>")
    return "\n".join(out)


def output_html(output: Any) -> str:
    """One cell output: printed text, an error, a PNG (embedded base64), HTML (e.g. audio) or text."""
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{html.escape(strip_ansi(output.get('text', '')))}</pre>"
    if kind == "error":
        text = "\n".join(output.get("traceback", [])) or f"{output.get('ename')}: {output.get('evalue')}"
        return f'<pre class="error">{html.escape(strip_ansi(text))}</pre>'
    data = output.get("data", {})
    if "image/png" in data:
        png = "".join(data["image/png"]) if isinstance(data["image/png"], list) else data["image/png"]
        return f'<img src="data:image/png;base64,{png.strip()}">'
    if "text/html" in data:
        value = data["text/html"]
        return "".join(value) if isinstance(value, list) else value
    if "text/plain" in data:
        return f"<pre>{html.escape(strip_ansi(str(data['text/plain'])))}</pre>"
    return ""


def notebook_html(nb: Any, title: str, code: bool = True) -> str:
    """An executed notebook (nbformat v4) as one self-contained HTML page."""
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>',
    ]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(markdown_html(cell.source))
        elif cell.cell_type == "code":
            if code and cell.source.strip():
                source = html.escape(cell.source)
                parts.append(f'<details><summary>code</summary><pre class="code">{source}</pre></details>')
            parts.extend(output_html(output) for output in cell.get("outputs", []))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def cell_error(nb: Any) -> str | None:
    """The first error output of ``nb`` in one line (type: first line of the message), or None."""
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                message = strip_ansi(str(output.get("evalue", ""))).strip().splitlines()
                return f"{output.get('ename', 'Error')}: {message[0] if message else ''}".rstrip(": ")
    return None


def ensure_kernel() -> None:
    """ipykernel's ``python3`` kernelspec in this environment (installed into ``sys.prefix`` if missing)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)


def run(notebook: Path, html_path: Path, timeout: int = 1800) -> str | None:
    """Execute ``notebook`` in the working directory and write ``html_path`` and the executed
    notebook beside it (``<name>.ipynb``). Returns the failing cell's error in one line, or None."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    ensure_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbformat's note on cells without ids
        nb = nbformat.read(notebook, as_version=4)
    env = {key: value for key, value in os.environ.items() if key != "MPLBACKEND"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": os.getcwd()}})
    error = None
    try:
        client.execute(env=env, stderr=subprocess.DEVNULL)  # the kernel process's own notes; cells report theirs
    except CellExecutionError as failure:
        error = cell_error(nb) or strip_ansi(str(failure)).strip().splitlines()[0]
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(notebook_html(nb, notebook.stem), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nbformat.write(nb, html_path.with_suffix(".ipynb"))
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m codecplatform.notebook",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("notebook", type=Path, help="the .ipynb to run")
    parser.add_argument("--html", type=Path, help="the report (default outputs/notebooks/<name>.html)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)
    if not args.notebook.is_file():
        print(f"notebook: no such notebook: {args.notebook}", file=sys.stderr)
        return 2
    html_path = args.html or Path("outputs") / "notebooks" / f"{args.notebook.stem}.html"
    error = run(args.notebook, html_path, args.timeout)
    if error is not None:
        print(f"notebook {args.notebook.name}: {error} (report so far: {html_path})", file=sys.stderr)
        return 1
    print(f"wrote {html_path} (executed notebook: {html_path.with_suffix('.ipynb')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
