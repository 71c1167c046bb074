"""Shared fixtures: real SQLite and PostgreSQL databases, real Redis, a real SMTP server.

Every test that takes ``settings`` runs twice, on SQLite and on PostgreSQL (the service on
127.0.0.1:5432; a database is created for the test run and dropped after). Actor tests use
dramatiq's StubBroker with an in-process worker (set up by ``pytest_configure``, before any test
module declares or imports actors); tests that need the real broker start ``dramatiq`` worker
processes with ``NEWSLETTER_BROKER=redis``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from dramatiq.brokers.stub import StubBroker
from hypothesis import settings as hypothesis_settings
from sqlalchemy import text

from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY, PG_ADMIN
from tests.services import redis_url as slot_url
from tests.stub_worker import StubWorker
from worker import broker
from worker.db import dispose_engines, make_engine
from worker.devtools.outbox import OutboxServer
from worker.models import Base
from worker.runtime import Runtime, use_runtime
from worker.safety import keyring
from worker.settings import Settings

REDIS_URL = slot_url(0)

# The tests' data key (worker.safety.keyring): installed for code that opens sessions without a
# runtime, and in the environment that subprocesses (workers, receivers, the CLI) inherit.
TEST_DATA_KEY = DATA_KEY
os.environ.setdefault("NEWSLETTER_DATA_KEY", TEST_DATA_KEY)
keyring.install(keyring.keyring_from_env({"NEWSLETTER_DATA_KEY": TEST_DATA_KEY}))

# The suite is the same every run: hypothesis draws from a fixed seed (a test that fails at random
# is a bug). `HYPOTHESIS_PROFILE=explore` searches anew; what it finds becomes a fixed @example.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    """The in-process stub broker, installed before test modules import ``worker.actors`` (whose
    actors bind to the broker present when they are declared)."""
    broker.setup(Settings.from_env({}, broker="stub"))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database for this test run, with the schema; dropped afterwards."""
    name = f"newsletter_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield url
    dispose_engines()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with the schema: a new SQLite file, or the run's PostgreSQL database
    with every table truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """An SQLite database with the schema (for tests that need only one database)."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Redis database 15 on the local server, emptied before and after the test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[OutboxServer]:
    """A real SMTP server (aiosmtpd) on a free port that keeps every message it accepts."""
    with OutboxServer(tmp_path / "outbox") as server:
        yield server


@pytest.fixture
def settings(db_url: str, smtp: OutboxServer, redis_url: str) -> Settings:
    return Settings.from_env(
        {},
        database_url=db_url,
        redis_url=redis_url,
        broker="stub",
        smtp_url=smtp.url,
        secret_key="test-secret-key-0123456789",
        data_key=TEST_DATA_KEY,
        public_url="http://testserver",
        bounce_domain="news.example.org",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
        send_batch_size=10,
        feed_allow_hosts="127.0.0.1",  # tests/feed_server.py serves the feeds on loopback
    )


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    """A runtime on the test's database, SMTP server and Redis; installed for the actors too.
    The dashboard's per-process memory starts empty (the PostgreSQL database keeps its URL from
    test to test)."""
    from worker.operators import dashboard, snapshots

    dashboard._cache.clear()
    snapshots.forget()
    runtime = Runtime(settings)
    use_runtime(runtime)
    yield runtime
    use_runtime(None)
    runtime.close()
    dispose_engines()


@pytest.fixture
def stub_worker(rt: Runtime) -> Iterator[StubWorker]:
    """An in-process dramatiq worker on the StubBroker; ``.join()`` waits for every queue."""
    stub = broker.current()
    assert isinstance(stub, StubBroker)  # pytest_configure installed it
    worker = StubWorker(stub)
    worker.start()
    yield worker
    worker.stop()
