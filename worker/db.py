"""Database engine, sessions and schema for SQLite (the embedded default) and PostgreSQL.

The schema has one Alembic history in ``migrations/``, run by ``newsletter db upgrade``.
"""

from __future__ import annotations

import json
import select
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from worker.settings import MIGRATIONS_DIR, Settings

if TYPE_CHECKING:
    from alembic.config import Config

    from worker.safety.keyring import Keyring

_engines: dict[str, Engine] = {}
_checked: dict[str, Keyring] = {}  # the keys each engine's database was checked against


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite gets WAL, a 30 s busy timeout and foreign keys on.

    WAL lets the web app read while workers write; the busy timeout makes concurrent worker
    processes wait for the write lock instead of failing with "database is locked".
    """
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url, pool_size=5, max_overflow=10)
    event.listen(engine, "checkout", _refuse_dead_connection)
    return engine


def _refuse_dead_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """The pool's check at each checkout, instead of ``pool_pre_ping``'s ``SELECT 1`` round
    trip (8 % of a signup's CPU, issue 16): a pooled PostgreSQL connection is idle, so its
    socket has nothing to read unless the server has closed it (a restart, a
    ``pg_terminate_backend``: the server sends its FATAL notice and closes the socket). One
    ``poll`` with a zero timeout, no round trip. Raising ``DisconnectionError`` makes the pool
    drop this connection and check out another (a fresh one when all are gone); a connection
    that dies after this check fails its statement, SQLAlchemy then invalidates the whole pool
    and the message is retried by dramatiq with fresh connections."""
    if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
        raise exc.DisconnectionError("the server closed this pooled connection")


def _readable(fd: int) -> bool:
    """Whether socket ``fd`` has data (or end-of-file) waiting, without blocking."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def engine_for(settings: Settings) -> Engine:
    """The process-wide engine for ``settings.database_url`` (one pool per URL and process).

    The first use checks the configured data keys against the database and installs them
    (``worker.safety.data_keys.open_data_keys``; ``DataKeyError`` when they are missing or wrong),
    and so does a later use with other keys (tests, the CLI run in-process)."""
    from worker.safety.data_keys import keyring_of, open_data_keys  # imports the models

    engine = _engines.get(settings.database_url)
    ring = keyring_of(settings)
    if engine is not None and _checked.get(settings.database_url) == ring:
        return engine
    fresh = engine is None
    engine = engine or make_engine(settings.database_url)
    try:
        # every process opens its database here first: refuse before anything is written
        open_data_keys(settings, engine)
    except BaseException:
        if fresh:
            engine.dispose()
        raise
    _engines[settings.database_url] = engine
    _checked[settings.database_url] = ring
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (after a fork, or at the end of a test)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _checked.clear()


@contextmanager
def committing(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session of ``factory`` that commits on success and rolls back on error. Unlike
    ``sessionmaker.begin()``, work committed midway and written after is committed too."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """A session on ``settings.database_url`` (see :func:`committing`)."""
    with committing(sessionmaker(engine_for(settings), expire_on_commit=False)) as session:
        yield session


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration for ``database_url`` using the project's migrations folder."""
    from alembic.config import Config  # only the schema commands need Alembic

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (default: the newest)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def new_revision(database_url: str, message: str) -> None:
    """Autogenerate a new migration from the difference between the models and the database."""
    from alembic import command

    command.revision(alembic_config(database_url), message=message, autogenerate=True)


def insert_rows(
    session: Session,
    table: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    conflict: Sequence[str] = (),
    returning: Sequence[str] = (),
) -> list[Row[Any]]:
    """Insert ``rows`` (dicts with the same keys; datetimes aware) into ``table`` in one
    statement; returns the ``returning`` columns of the rows inserted (all of them unless
    ``conflict`` names a unique index whose conflicts are skipped: ON CONFLICT DO NOTHING).

    On PostgreSQL the rows travel as ONE JSON parameter, ``INSERT … SELECT … FROM
    json_to_recordset(…)``: the statement stays short and is planned once whatever the number of
    rows, and the JSON is written by the C encoder (a VALUES list of 1,000 rows is a
    10,000-placeholder statement parsed anew each time; arrays are dumped value by value in
    Python; one INSERT per row is a round trip each). Elsewhere (SQLite) an executemany.
    Raises ``ValueError`` for a naive datetime.
    """
    from sqlalchemy import text
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    from sqlalchemy.types import TypeDecorator

    if not rows:
        return []
    columns = list(rows[0])
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        names = ", ".join(f'"{c}"' for c in columns)
        types = ", ".join(f'"{c}" {table.c[c].type.compile(dialect=dialect)}' for c in columns)
        sql = (
            f'INSERT INTO "{table.name}" ({names}) SELECT {names} '
            f"FROM json_to_recordset(CAST(:rows AS json)) AS x({types})"
        )
        if conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
        if returning:
            sql += f" RETURNING {', '.join(returning)}"
        # the JSON bypasses the column types: apply their bind processing here, so sealed
        # columns (worker.models.EncryptedText) and the blind index never travel in clear
        decorated = {
            c: table.c[c].type for c in columns if isinstance(table.c[c].type, TypeDecorator)
        }
        prepared = [
            {
                c: decorated[c].process_bind_param(v, dialect) if c in decorated else v
                for c, v in row.items()
            }
            for row in rows
        ]
        payload = json.dumps(prepared, default=_json_value, ensure_ascii=False)
        result = session.execute(text(sql), {"rows": payload})
        return list(result) if returning else []
    statement = sqlite_insert(table)
    if conflict:
        statement = statement.on_conflict_do_nothing(index_elements=list(conflict))
    if returning:
        back = [table.c[name] for name in returning]
        return list(session.execute(statement.returning(*back), list(rows)))
    session.execute(statement, list(rows))
    return []


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a column value")
