"""Headless Chromium driven over the DevTools protocol on a pipe: full-page PNG screenshots.

One browser process serves many screenshots (about 0.2 s each, against 1.3 s for a fresh
``chromium --screenshot`` per page, which also captures only the window). The protocol runs over
``--remote-debugging-pipe``: Chromium reads commands on fd 3 and writes replies on fd 4, each a
JSON message ended by a NUL byte; no port is opened. Only stable protocol methods are used
(Target, Page, Emulation).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import math
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Quiet and reproducible: no background traffic, no updates, no GPU, so that two runs give the
# same pixels and nothing leaves the machine but the page's own requests.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--remote-debugging-pipe",
)
# Resolve no host at all: remote images fail at once instead of waiting for DNS or the network.
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND"
TIMEOUT_SECONDS = 60.0
MAX_HEIGHT = 16384  # Chromium's texture limit; taller pages are cut (a mail is far shorter)


class BrowserError(RuntimeError):
    """Chromium is missing, died, or did not answer in time."""


def find_chromium() -> str:
    """Path of the Chromium binary: ``$NEWSLETTER_CHROMIUM``, ``/usr/bin/chromium``, or the first
    of :data:`CHROMIUM_CANDIDATES` on ``PATH``. Raises :class:`BrowserError` if there is none."""
    configured = os.environ.get("NEWSLETTER_CHROMIUM")
    if configured:
        return configured
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(
        "Chromium not found: install it (Debian/Ubuntu: apt-get install -y chromium) "
        "or set NEWSLETTER_CHROMIUM to its path"
    )


def _move_to_3_and_4(read_fd: int, write_fd: int) -> None:
    # Runs in the child between fork and exec: first lift both ends above 4 so neither dup2
    # clobbers the other, then place them where --remote-debugging-pipe expects them.
    high_read = fcntl.fcntl(read_fd, fcntl.F_DUPFD, 10)
    high_write = fcntl.fcntl(write_fd, fcntl.F_DUPFD, 10)
    os.dup2(high_read, 3)  # dup2 leaves the copies inheritable: they survive exec
    os.dup2(high_write, 4)
    os.close(high_read)
    os.close(high_write)


class HeadlessChromium:
    """One headless Chromium with one page; use as a context manager.

    ``offline`` makes every host name fail to resolve, so remote images show their alt text.
    Not thread-safe: use one instance per thread.
    """

    def __init__(self, *, offline: bool = True, timeout: float = TIMEOUT_SECONDS) -> None:
        self.offline = offline
        self.timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._profile = ""
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._session = ""

    def __enter__(self) -> HeadlessChromium:
        try:
            self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Launch Chromium and open a page. Raises :class:`BrowserError`."""
        self._profile = tempfile.mkdtemp(prefix="newsletter-chromium-")
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        command = [
            find_chromium(),
            *CHROMIUM_FLAGS,
            *([OFFLINE_FLAG] if self.offline else []),
            f"--user-data-dir={self._profile}",
            "about:blank",
        ]
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # close_fds would run after preexec_fn and close fds 3 and 4 again; Python's
                # own descriptors are non-inheritable (PEP 446), so nothing else leaks.
                close_fds=False,
                preexec_fn=lambda: _move_to_3_and_4(to_child_read, from_child_write),
            )
        except OSError as error:
            raise BrowserError(f"cannot start Chromium: {error}") from error
        finally:
            os.close(to_child_read)
            os.close(from_child_write)
        self._write_fd, self._read_fd = to_child_write, from_child_read
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        self._session = attached["sessionId"]
        self.call("Page.enable", session=True)

    def close(self) -> None:
        """Close the browser and remove its temporary profile."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(BrowserError, OSError):
                self.call("Browser.close")
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for fd in (self._write_fd, self._read_fd):
                os.close(fd)
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = ""

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = False
    ) -> dict[str, Any]:
        """Send one protocol command and return its result. Raises :class:`BrowserError`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        try:
            os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        except OSError as error:  # BrokenPipeError: Chromium exited or never started properly
            raise BrowserError(f"Chromium is not running ({error})") from error
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self._events.append(reply)

    def wait_for(self, event: str) -> dict[str, Any]:
        """Wait for the page's next ``event`` (e.g. ``Page.loadEventFired``)."""
        for index, queued in enumerate(self._events):
            if queued.get("method") == event and queued.get("sessionId") == self._session:
                return self._events.pop(index)
        while True:
            message = self._receive()
            if message.get("method") == event and message.get("sessionId") == self._session:
                return message
            self._events.append(message)

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._read_fd], [], [], max(remaining, 0))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s")
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (it crashed or exited)")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    def _viewport(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def screenshot(self, page: Path | str, width: int) -> bytes:
        """PNG of the whole ``page`` (a file path or URL) laid out ``width`` CSS px wide.

        The viewport is first 1 px tall so the measured height is the document's own, then set
        to that height for the capture. Raises :class:`BrowserError`.
        """
        url = page.resolve().as_uri() if isinstance(page, Path) else page
        self._viewport(width, 1)
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")
        metrics = self.call("Page.getLayoutMetrics", session=True)
        height = min(math.ceil(metrics["cssContentSize"]["height"]), MAX_HEIGHT)
        self._viewport(width, height)
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=True)
        return base64.b64decode(shot["data"])
