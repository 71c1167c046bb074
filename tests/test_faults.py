"""Faults injected while the product works: Redis missing or restarted, PostgreSQL connections
killed mid-batch, the SMTP relay down for a while. The promise: nothing lost, nobody mailed
twice, and a clear message instead of a traceback wall.

Loopback only. Redis is a ``redis-server`` this module starts on a spare port (no persistence, so
a restart loses every queued message, as in production with Redis as a cache); PostgreSQL is the
run's test database; the inbound receiver's full disk is an SQLite ``max_page_count``.
About 60 s in all (the relay outage alone is 20 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tests.samples import SAMPLE_EDITION
from tests.sendkit import run_batch, seed, start_send
from tests.services import DATA_KEY_ENV
from worker import actors
from worker.db import dispose_engines, make_engine
from worker.devtools.outbox import OutboxServer, free_port
from worker.models import Base, Delivery, Send
from worker.runtime import Runtime
from worker.sending.ports import SmtpOutcome
from worker.sending.sql_ledger import SqlLedger
from worker.settings import Settings

pytestmark = pytest.mark.slow  # worker processes, a Redis restart, a 20 s relay outage

ROOT = Path(__file__).resolve().parent.parent
SECRET = "faults-test-secret-0123456789"
REDIS_SERVER = shutil.which("redis-server")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


class RedisServer:
    """A throw-away ``redis-server`` on a spare loopback port, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 10, "redis-server up")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: everything queued is gone, like a crashed cache node."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def pg_settings(pg_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on the run's PostgreSQL database, emptied (the faults are PostgreSQL's)."""
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield Settings.from_env(
        DATA_KEY_ENV,
        database_url=pg_url,
        redis_url="",
        broker="stub",
        smtp_url="smtp://127.0.0.1:1",
        secret_key=SECRET,
        public_url="http://testserver",
        bounce_domain="news.example.org",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
        send_batch_size=10,
    )
    dispose_engines()


def worker_env(settings: Settings, redis_url: str, smtp_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        PYTHONPATH=str(ROOT),
        NEWSLETTER_BROKER="redis",
        NEWSLETTER_REDIS_URL=redis_url,
        NEWSLETTER_DATABASE_URL=settings.database_url,
        NEWSLETTER_SMTP_URL=smtp_url,
        NEWSLETTER_SECRET_KEY=SECRET,
        NEWSLETTER_PUBLIC_URL="http://testserver",
        NEWSLETTER_BOUNCE_DOMAIN="news.example.org",
        NEWSLETTER_NEWSLETTER_PATH=str(SAMPLE_EDITION / "newsletter.yaml"),
        NEWSLETTER_QUEUE_NAMESPACE="faults",
        **extra,
    )
    return env


def newsletter(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the ``newsletter`` command (this checkout's) in a new process."""
    return subprocess.run(
        [sys.executable, "-c", "from worker.cli import main; main()", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def received_per_recipient(smtp: OutboxServer) -> Counter[str]:
    with smtp.handler.lock:
        return Counter(r.recipients[0] for r in smtp.handler.received)


def ledger(rt: Runtime, send_id: int) -> dict[str, int]:
    with rt.session() as session:
        rows = session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.send_id == send_id)
            .group_by(Delivery.state)
        ).all()
    return {str(state): int(count) for state, count in rows}


def send_status(rt: Runtime, send_id: int) -> str:
    with rt.session() as session:
        return str(session.scalar(select(Send.status).where(Send.id == send_id)))


def addresses(n: int) -> list[str]:
    return [f"reader{i}@d{i % 7}.example.org" for i in range(n)]


# --- Redis ---------------------------------------------------------------------------------------


def test_redis_unavailable_at_start_gives_a_clear_error(pg_settings: Settings) -> None:
    with Runtime(pg_settings).session() as session:
        from worker.editions.files import read_edition
        from worker.editions.store import save_edition

        save_edition(session, read_edition(SAMPLE_EDITION), Runtime(pg_settings).clock.now())
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = newsletter(
        worker_env(pg_settings, closed, "smtp://127.0.0.1:1"), "send", "start", "2024-W28"
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "127.0.0.1" in result.stderr and "Redis" in result.stderr
    assert len(result.stderr.splitlines()) <= 3


def test_worker_started_without_redis_waits_and_works_once_redis_is_up(
    pg_settings: Settings, tmp_path: Path
) -> None:
    """A worker process started while Redis is down keeps running, reconnects when Redis comes
    up and processes what is then enqueued."""
    server = RedisServer()
    with OutboxServer() as smtp:
        seed(Runtime(pg_settings), addresses(5))
        send_id = start_send(Runtime(pg_settings), batch_size=5)
        env = worker_env(pg_settings, server.url, smtp.url)
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "worker.actors", "-p", "1", "-t", "2"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Start Redis only once the worker has said it cannot reach it: a fixed sleep raced
            # the worker's start-up on a loaded machine (Redis came up before the first attempt).
            wait_for(
                lambda: "connection" in (tmp_path / "worker.log").read_text().lower(),
                60,
                "the worker reported that Redis is unreachable",
            )
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            server.start()
            result = newsletter(
                env, "scheduler", "--once"
            )  # re-enqueues the planned send's batches
            assert result.returncode == 0, result.stderr[-2000:]
            rt = Runtime(pg_settings)
            wait_for(
                lambda: send_status(rt, send_id) == "finished",
                30,
                "send finished after Redis came up",
            )
            assert received_per_recipient(smtp) == Counter({a: 1 for a in addresses(5)})
        finally:
            worker.terminate()
            worker.wait(20)
            server.kill()


def test_redis_killed_and_restarted_empty_mid_send_loses_nobody_and_mails_nobody_twice(
    pg_settings: Settings, tmp_path: Path
) -> None:
    """A 200-recipient send throttled to 40/s through a real worker process; Redis is SIGKILLed
    once a third has gone out and restarted empty 2 s later; the scheduler re-enqueues what the
    ledger says is unfinished. Everyone gets the edition exactly once."""
    recipients = addresses(200)
    server = RedisServer().start()
    with OutboxServer() as smtp:
        seed(Runtime(pg_settings), recipients)
        send_id = start_send(Runtime(pg_settings), batch_size=20)
        env = worker_env(
            pg_settings,
            server.url,
            smtp.url,
            NEWSLETTER_GLOBAL_RATE="40",
            NEWSLETTER_BATCH_GRACE_SECONDS="5",
            NEWSLETTER_CLAIM_LEASE_SECONDS="5",
        )
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "worker.actors", "-p", "1", "-t", "3"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        scheduler = None
        rt = Runtime(pg_settings)
        try:
            assert newsletter(env, "scheduler", "--once").returncode == 0  # enqueue the batches
            wait_for(lambda: sum(received_per_recipient(smtp).values()) >= 70, 30, "a third sent")
            server.kill()
            sent_at_kill = sum(received_per_recipient(smtp).values())
            time.sleep(2)
            stranded = ledger(rt, send_id).get("sending", 0)
            server.start()  # empty: every queued batch message is gone
            scheduler = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from worker.cli import main; main()",
                    "scheduler",
                    "--interval",
                    "1",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "scheduler.log").open("wb"),
            )
            recovery = wait_for(
                lambda: send_status(rt, send_id) == "finished", 45, "send finished", step=0.5
            )
        finally:
            for process in (scheduler, worker):
                if process is not None:
                    process.terminate()
                    process.wait(20)
            server.kill()
        got = received_per_recipient(smtp)
    print(
        f"\nredis killed after {sent_at_kill}/200 sent; {stranded} claims left `sending`; "
        f"send finished {recovery:.1f} s after the restart"
    )
    assert 70 <= sent_at_kill < 200
    assert got == Counter({a: 1 for a in recipients}), {a: c for a, c in got.items() if c != 1}
    assert ledger(rt, send_id) == {"sent": 200}


# --- PostgreSQL ----------------------------------------------------------------------------------


class KillingMailer:
    """Wraps a mailer; right after the relay accepted message number ``after``, the batch's next
    statement (recording that "250") is made to block on a table lock and its backend is then
    terminated (pg_terminate_backend): the connection dies inside the transaction.

    Killing idle connections is not enough: the session checks a connection out per
    transaction and the pool silently replaces a dead one at checkout (that case is tested too)."""

    def __init__(self, inner: Any, url: str, after: int) -> None:
        self.inner, self.url, self.after, self.accepted = inner, url, after, 0
        self.killed: list[int] = []

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Callable[[], bool] | None = None,
    ) -> SmtpOutcome:
        outcome: SmtpOutcome = self.inner.send(
            envelope_from, recipient, message, smtputf8=smtputf8, before_data=before_data
        )
        if outcome.accepted:
            self.accepted += 1
            if self.accepted == self.after:
                locker = psycopg.connect(self.url)
                locker.execute("LOCK TABLE delivery IN ACCESS EXCLUSIVE MODE")
                threading.Thread(target=self._kill_blocked, args=(locker,), daemon=True).start()
        return outcome

    def _kill_blocked(self, locker: psycopg.Connection[Any]) -> None:
        with psycopg.connect(self.url, autocommit=True) as admin:
            query = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            deadline = time.monotonic() + 10
            while not self.killed and time.monotonic() < deadline:
                self.killed = [row[0] for row in admin.execute(query)]
                time.sleep(0.02)
            for pid in self.killed:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        locker.rollback()
        locker.close()

    def close(self) -> None:
        self.inner.close()


def kill_idle_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_database_connections_killed_mid_batch_lose_nothing_and_double_nothing(
    pg_settings: Settings,
) -> None:
    """The batch fails with the database error; the retry (as dramatiq would run it) sends the
    rest; the one message whose outcome was lost with the connection becomes ``unknown`` once
    its lease runs out, and is not sent again."""
    from worker.sending.smtp import SmtpMailer

    recipients = addresses(30)
    url = pg_settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with OutboxServer() as smtp:
        settings = replace(pg_settings, smtp_url=smtp.url, claim_lease_seconds=1.0)
        rt = Runtime(settings)
        seed(rt, recipients)
        send_id = start_send(rt, batch_size=30)
        killer = KillingMailer(SmtpMailer(smtp.url, timeout=10), url, after=7)
        with pytest.raises(Exception, match=r"terminat|closed|connection|reconnect|rolled back"):
            run_batch(rt, send_id, mailer=killer)
        assert len(killer.killed) == 1
        assert sum(received_per_recipient(smtp).values()) == 7
        before = ledger(rt, send_id)
        # the rest is queued, or claimed ahead (`sending`) when the batch claims in bulk
        assert (before["sent"], before["submitting"]) == (6, 1) and sum(before.values()) == 30
        time.sleep(1.5)  # the leases run out: the claims of the dead batch are settled
        with rt.session() as session:
            sweep = SqlLedger(session).expire_leases(rt.clock.now())
        assert (sweep.released, sweep.unknown) == (before.get("sending", 0), 1)
        assert kill_idle_connections(url) >= 1  # and the pool's idle connections die too
        run_batch(rt, send_id, mailer=SmtpMailer(smtp.url, timeout=10))  # the retry
        got = received_per_recipient(smtp)
    assert set(got) == set(recipients) and max(got.values()) == 1
    assert ledger(rt, send_id) == {"sent": 29, "unknown": 1}


class DownThrottle:
    """A throttle whose Redis went away between the claim and the send slot."""

    def reserve(self, domain: str, max_wait: float, done: str = "") -> Any:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def sent(self, token: str) -> None: ...

    def unlimited(self, domains: Any) -> bool:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def slow_down(self, domain: str) -> None: ...

    def fewer_connections(self) -> int:
        return 0

    def acquire_connection(self, holder: str, ttl: float) -> bool:
        return True

    def release_connection(self, holder: str) -> None: ...


def test_redis_error_after_the_claim_gives_the_claim_back(pg_settings: Settings) -> None:
    """A Redis error between the claim and the send slot gives the claim back at once (it was
    left `sending` for a whole lease before worker/sending/dispatch.py was fixed during issue 9)."""
    rt = Runtime(pg_settings)
    seed(rt, addresses(3))
    send_id = start_send(rt, batch_size=10)
    with pytest.raises(redis.ConnectionError):
        run_batch(rt, send_id, throttle=DownThrottle())
    assert ledger(rt, send_id) == {"queued": 3}


# --- SMTP relay ----------------------------------------------------------------------------------


class InProcessWorker:
    """dramatiq's StubBroker with an in-process worker, for a runtime of the test's own."""

    def __init__(self, rt: Runtime) -> None:
        import dramatiq

        from worker.broker import current

        broker = current()
        actors.use_runtime(rt)
        broker.flush_all()
        self.broker = broker
        self.worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)

    def __enter__(self) -> InProcessWorker:
        self.worker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.worker.stop()
        self.broker.flush_all()
        actors.use_runtime(None)


def test_smtp_relay_down_for_twenty_seconds_defers_then_delivers_each_once(
    pg_settings: Settings,
) -> None:
    """Nothing listens on the relay's port for 20 s (retry base 2 s, cap 4 s): deliveries are
    deferred, batches come back with a delay, and once the relay is up every recipient gets
    the edition exactly once."""
    port = free_port()
    settings = replace(
        pg_settings,
        smtp_url=f"smtp://127.0.0.1:{port}",
        retry_base_seconds=2.0,
        retry_cap_seconds=4.0,
        smtp_timeout_seconds=5.0,
    )
    rt = Runtime(settings)
    recipients = addresses(40)
    seed(rt, recipients)
    with rt.session() as session:
        from worker.editions.store import find_edition
        from worker.sending.sends import create_send

        edition = find_edition(session, "2024-W28")
        assert edition is not None
        send_id = create_send(session, edition, rt.clock.now(), 10).id
    deferred_seen = []
    with InProcessWorker(rt):
        actors.plan_send.send(send_id)
        down_until = time.monotonic() + 20
        while time.monotonic() < down_until:
            deferred_seen.append(ledger(rt, send_id).get("deferred", 0))
            time.sleep(1)
        assert ledger(rt, send_id).get("sent", 0) == 0
        assert max(deferred_seen) > 0
        with OutboxServer(port=port) as smtp:
            wait_for(
                lambda: send_status(rt, send_id) == "finished",
                30,
                "send finished after the relay came back",
            )
            got = received_per_recipient(smtp)
    assert got == Counter({a: 1 for a in recipients})
    assert ledger(rt, send_id) == {"sent": 40}
    with rt.session() as session:
        attempts = session.scalars(
            select(Delivery.attempts).where(Delivery.send_id == send_id)
        ).all()
    assert max(attempts) >= 2  # each was tried during the outage, then again


# --- inbound storage -----------------------------------------------------------------------------


def test_inbound_storage_full_answers_451_and_loses_nothing(sqlite_url: str) -> None:
    """The inbound receiver's database fills up (SQLite ``max_page_count``: the engine reports
    SQLITE_FULL, "database or disk is full", exactly as with a full disk). Every message gets
    either 250 and is stored, or 451 4.3.0 so the sending MTA keeps it and retries; after space
    is freed, the retries are stored. Nothing is refused for good, nothing stored twice."""
    import smtplib

    from sqlalchemy import event

    from worker.db import engine_for
    from worker.feedback.smtp_receiver import InboundServer
    from worker.models import InboundMessage

    settings = Settings.from_env(
        DATA_KEY_ENV,
        database_url=sqlite_url,
        redis_url="",
        broker="stub",
        secret_key=SECRET,
        bounce_domain="news.example.org",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    engine = engine_for(settings)
    with engine.connect() as conn:
        used = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    limit = [used + 40]  # pages of 4 KiB: room for a handful of 20 KB messages

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {limit[0]}")

    engine.dispose()
    messages = [
        (
            f"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+d{n}-x@news.example.org\r\n"
            f"Subject: Undelivered Mail {n}\r\nMessage-ID: <b{n}@mx.example.net>\r\n\r\n"
            + f"line {n}\r\n"
            * 2500
        ).encode()
        for n in range(12)
    ]

    def deliver(server: InboundServer, raw: bytes) -> int:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            try:
                client.sendmail(
                    "MAILER-DAEMON@mx.example.net", ["bounces+d1-x@news.example.org"], raw
                )
            except smtplib.SMTPDataError as refused:
                assert b"4.3.0" in refused.smtp_error
                return refused.smtp_code
        return 250

    with InboundServer(settings, port=free_port()) as server:
        first = [deliver(server, raw) for raw in messages]
        assert 250 in first and 451 in first, first
        assert set(first) == {250, 451}  # temporary only: never a 5xx for a full disk
        with Session(engine) as session:
            stored = session.scalar(select(func.count()).select_from(InboundMessage))
        assert stored == first.count(250)
        limit[0] = 1_000_000  # space freed
        engine.dispose()
        retried = [
            deliver(server, raw) for raw, code in zip(messages, first, strict=True) if code == 451
        ]
        assert set(retried) == {250}
        with Session(engine) as session:
            digests = session.scalars(select(InboundMessage.digest)).all()
    assert len(digests) == len(set(digests)) == len(messages)
    print(
        f"\ninbound storage full: {first.count(451)} of {len(messages)} messages answered 451, "
        f"stored after the retry"
    )
