"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so a test can click like a user
without a WebDriver package. Only what the UI tests use: open a page, wait for text, read the
visible text and the address, click an element at its centre with real mouse events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "Debian: apt-get install chromium"


def find_browser() -> str | None:
    """The first Chromium-like binary on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page. ``with Browser(binary, profile_dir) as page: ...``."""

    def __init__(self, binary: str, profile_dir: Path, width: int = 1500, height: int = 1400) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_pipes() -> None:  # in the child, before exec: its fds 3 (commands) and 4 (replies)
            read, write = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read, 3)
            os.dup2(write, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # closed network: no background connections, no component or sync updates
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
        ]
        self._process = subprocess.Popen(
            args, preexec_fn=wire_pipes, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        self.send("Page.enable")
        self.send("Runtime.enable")

    # -- protocol ---------------------------------------------------------------------------------
    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 60) -> dict:
        """Send one command and return its result (RuntimeError on a protocol error)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from the browser")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # -- what a user does -------------------------------------------------------------------------
    def open(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def text(self) -> str:
        """The page's visible text (``innerText``: what is rendered, not hidden elements)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def url(self) -> str:
        return self.evaluate("location.href") or ""

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """Poll until every needle is in the visible text; -> the text. TimeoutError names what is missing."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise TimeoutError(f"not visible after {timeout:.0f} s: {missing}; page text: {text[:1500]!r}")
            time.sleep(0.5)

    def click_text(self, text: str, selector: str = "a") -> None:
        """Press and release the left button at the centre of the first ``selector`` element whose
        visible text is ``text`` (real mouse events, as a user's click)."""
        box = self.evaluate(
            f"""(() => {{
                const el = [...document.querySelectorAll({json.dumps(selector)})]
                    .find(e => e.innerText.trim() === {json.dumps(text)});
                if (!el) return null;
                el.scrollIntoView({{block: "center"}});
                const r = el.getBoundingClientRect();
                return [r.left + r.width / 2, r.top + r.height / 2];
            }})()"""
        )
        if box is None:
            raise LookupError(f"no {selector} with the text {text!r}; page text: {self.text()[:1500]!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            event = {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1}
            self.send("Input.dispatchMouseEvent", event if kind != "mouseMoved" else {**event, "button": "none"})

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=10)
        except Exception:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
