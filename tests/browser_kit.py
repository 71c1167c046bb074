"""The web app served by uvicorn on a free loopback port, for the browser tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from worker.devtools.chromium import BrowserError, find_chromium
from worker.devtools.outbox import free_port
from worker.runtime import Runtime
from worker.web.app import create_app


def served_app(rt: Runtime, request: pytest.FixtureRequest) -> Iterator[str]:
    """Yield the base URL ``http://127.0.0.1:PORT`` of the app while it serves; for a fixture
    (``yield from served_app(rt, request)``). A browser journey is driven once, on PostgreSQL;
    without Chromium the test is skipped with the command that installs it."""
    if request.node.callspec.params.get("db_url") != "postgresql":
        pytest.skip("driven once, on PostgreSQL")
    try:
        find_chromium()
    except BrowserError:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
