"""The PostgreSQL pool survives connections the server closed (a restart, an operator's
``pg_terminate_backend``) without a ``SELECT 1`` per checkout
(``worker.db._refuse_dead_connection``).

A server restart looks, from the pool, exactly like every backend terminated: the sockets are
closed by the server. The shared test server cannot be restarted, so its backends are terminated
(``pg_terminate_backend(pid, timeout)`` waits until each has exited)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, exc, text
from sqlalchemy.pool import QueuePool

from worker.db import make_engine


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    made = make_engine(pg_url)
    yield made
    made.dispose()


def plain(pg_url: str) -> str:
    return pg_url.replace("postgresql+psycopg://", "postgresql://")


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate_others(pg_url: str) -> int:
    """Terminate every other backend of the test database and wait until each has exited."""
    with psycopg.connect(plain(pg_url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def statements_of(engine: Engine) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return seen


def test_a_live_pooled_connection_is_reused_without_a_ping(engine: Engine) -> None:
    # Given a connection in the pool
    first = backend_pid(engine)
    seen = statements_of(engine)
    # When it is checked out again
    again = backend_pid(engine)
    # Then it is the same backend, and only the test's own statement ran (no SELECT 1)
    assert again == first
    assert seen == ["SELECT pg_backend_pid()"]


def test_connections_closed_by_the_server_are_replaced_at_checkout(
    engine: Engine, pg_url: str
) -> None:
    # Given two pooled connections whose backends the server then terminated
    with engine.connect() as one, engine.connect() as two:
        pids = {
            int(one.execute(text("SELECT pg_backend_pid()")).scalar_one()),
            int(two.execute(text("SELECT pg_backend_pid()")).scalar_one()),
        }
    assert isinstance(engine.pool, QueuePool) and engine.pool.checkedin() == 2
    assert terminate_others(pg_url) >= 2
    # When sessions check connections out again, Then they work, on new backends
    for _ in range(3):
        assert backend_pid(engine) not in pids


def test_a_connection_that_dies_after_checkout_fails_once_then_the_pool_recovers(
    engine: Engine, pg_url: str
) -> None:
    # Given a checked-out connection whose backend dies before its statement
    backend_pid(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        terminate_others(pg_url)
        # When the statement runs, Then it fails as a disconnect (the message is retried)
        with pytest.raises(exc.DBAPIError) as raised:
            conn.execute(text("SELECT 1"))
        assert raised.value.connection_invalidated
    # And the next checkout gets a working connection
    assert backend_pid(engine) > 0
