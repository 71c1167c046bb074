"""The workers' Prometheus exporters with nothing set but the README's commands: two worker
groups on one host (bulk, and signups + transactional) each serve their own counters on their
own port (9191 and 9192 by default), and a taken port leaves the workers running."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import DATA_KEY_ENV
from tests.test_real_broker import Website, event, runtime, website, worker_env
from worker.broker import metrics_endpoint, serve_metrics, served_queues, use_metrics_directory
from worker.devtools.outbox import OutboxServer, free_port
from worker.runtime import Runtime
from worker.settings import Settings

__all__ = ["runtime", "website"]  # fixtures, imported for this module's tests

EXPORTER = ["--fork-function", "worker.broker:serve_metrics"]  # as the README starts them
BULK = ["worker.actors", *EXPORTER, "-p", "1", "-t", "2", "--queues", "sends", "deliveries"]
TRANSACTIONAL = ["worker.actors", *EXPORTER, "-p", "1", "-t", "2", "-Q", "signups", "transactional"]


def test_each_group_gets_its_own_port_and_directory() -> None:
    settings = Settings.from_env(DATA_KEY_ENV)
    assert served_queues(BULK) == frozenset({"sends", "deliveries"})
    assert served_queues(["worker.actors"]) is None  # every queue
    bulk = metrics_endpoint(settings, BULK)
    transactional = metrics_endpoint(settings, TRANSACTIONAL)
    assert (bulk[0], bulk[1]) == ("127.0.0.1", 9191)
    assert transactional[1] == 9192
    assert bulk[2] != transactional[2]
    assert metrics_endpoint(settings, ["worker.actors"])[1] == 9191


def test_the_command_line_or_the_middleware_starts_the_exporter_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.broker import MetricsExporter

    exporter = MetricsExporter(metrics_endpoint(Settings.from_env({}), BULK))
    monkeypatch.setattr(sys, "argv", ["dramatiq", *BULK])
    assert exporter.forks == []  # started by --fork-function, even on a slow first boot
    monkeypatch.setattr(sys, "argv", ["dramatiq", "worker.actors", "-p", "1"])
    assert exporter.forks == [serve_metrics]


def test_files_of_dead_processes_are_removed_at_boot(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (tmp_path / f"counter_{dead}.db").write_bytes(b"x")
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(b"x")
    previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        use_metrics_directory(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{os.getpid()}.db"]
    finally:
        from prometheus_client import values

        if previous is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def test_a_taken_port_is_logged_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("NEWSLETTER_METRICS_PORT", str(port))
        monkeypatch.setenv("NEWSLETTER_METRICS_DIR", str(tmp_path))
        monkeypatch.setattr(sys, "argv", ["dramatiq", *BULK])
        with caplog.at_level(logging.ERROR, logger="worker.broker"):
            assert serve_metrics() == 1
    # the log filter of an earlier test may have cut the host to its network: the port names it
    assert "metrics exporter not started: 127.0.0." in caplog.text
    assert f":{port}: " in caplog.text and "NEWSLETTER_METRICS_PORT" in caplog.text


def free_pair() -> int:
    """A port p with p + 1 also free (the two groups' exporters)."""
    for _ in range(50):
        port = free_port()  # below the ephemeral range: no client connection is given it
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports")


@pytest.fixture
def groups(
    db_url: str, smtp: OutboxServer, website: Website, tmp_path: Path
) -> Iterator[tuple[int, Path]]:
    """The README's two worker groups on one host; only the base port is moved off 9191 so that
    the test does not depend on that port being free."""
    port = free_pair()
    env = {k: v for k, v in worker_env(db_url, smtp.url).items() if "PROMETHEUS" not in k}
    env.update(NEWSLETTER_METRICS_PORT=str(port), TMPDIR=str(tmp_path))
    processes = []
    for name, argv in (("bulk", BULK), ("transactional", TRANSACTIONAL)):
        log = (tmp_path / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "dramatiq", *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        yield port, tmp_path
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def wait_for_text(port: int, wanted: str, folder: Path) -> str:
    deadline = time.monotonic() + 60
    page = ""
    while time.monotonic() < deadline:
        try:
            page = scrape(port)
        except OSError:
            page = ""
        if wanted in page:
            return page
        time.sleep(0.5)
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in folder.glob("*.log"))
    raise AssertionError(f"{wanted!r} never on :{port}; last page:\n{page}\nlogs:\n{logs}")


@pytest.mark.slow
def test_two_groups_on_one_host_each_serve_their_counters(
    groups: tuple[int, Path], website: Website, runtime: Runtime
) -> None:
    port, folder = groups
    with runtime.session() as session:  # as after `edition load` (else the two groups race to
        runtime.newsletter(session)  # create the newsletter row, and SQLite makes one retry)
        session.commit()
    for n in range(3):
        website.enqueue("signups", "handle_signup", event(n, f"reader{n}@example.org", "en"))
    website.enqueue("sends", "plan_send", 999_999)  # no such send: processed and counted
    signups = 'dramatiq_messages_total{actor_name="handle_signup",queue_name="signups"} 3.0'
    transactional = wait_for_text(port + 1, signups, folder)
    assert 'newsletter_signups_total{outcome="pending"} 3.0' in transactional
    plan = 'dramatiq_messages_total{actor_name="plan_send",queue_name="sends"} 1.0'
    bulk = wait_for_text(port, plan, folder)
    assert "handle_signup" not in bulk and "plan_send" not in transactional  # nothing twice
