"""``DriverLedger``: the delivery ledger's hot path on the database driver itself (psycopg for
PostgreSQL, sqlite3), with no ORM session and no SQL built per message. See
``worker.sending.ledger.DeliveryLedger`` for the contract.

Per message the batch loop makes two writes, the fence and the outcome (with the send's status);
on PostgreSQL each is one prepared statement (psycopg ``prepare=True``) on an autocommit
connection: one round trip and its commit, where the ORM session took three (BEGIN, the
statement, COMMIT) and rebuilt parameters each time. On SQLite a write that needs two statements
runs in one ``BEGIN IMMEDIATE`` … ``COMMIT``. Claims (one UPDATE … RETURNING per chunk), releases
and the send's status take the same path. The rest (the batch's read, judged outcomes with their
feedback event, sweeps) runs once per batch or on errors and is delegated to ``SqlLedger`` over
the session, whose read transactions are ended before the method returns (no transaction spans an
SMTP exchange).

Why not the outcome of one message and the fence of the next in one commit: the fence must follow
the next RCPT's reply, and the outcome must be durable before that RCPT goes out; a worker killed
while the relay delays the RCPT would otherwise leave an accepted message ``unknown``
(``tests/test_queue_cases.py::test_q01_worker_killed_after_250_resends_nobody``).

Every UPDATE takes its ``WHERE state IN (…)`` from ``worker.states.sources``, as ``SqlLedger``'s.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from worker.models import Subscriber
from worker.safety import keyring
from worker.sending.ledger import Accepted, DueBatch, LeaseSweep
from worker.sending.policy import SendPolicy
from worker.sending.ports import NoMetrics, RefusalRecorder, SendingMetrics, SmtpOutcome
from worker.sending.sql_ledger import SqlLedger
from worker.states import DeliveryState, SendStatus, sources, sources_among
from worker.states import DeliveryState as D

T = TypeVar("T")


def _among(states: Sequence[str]) -> str:
    """``('a', 'b')``: a state list inlined into the statement (enum values, never input)."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


_SENDING = (
    f"EXISTS (SELECT 1 FROM send WHERE send.id = :send AND send.status = '{SendStatus.SENDING}')"
)
_STATUS = "SELECT status FROM send WHERE id = :send"
_CLAIM = f"""UPDATE delivery SET state = '{D.SENDING}', lease_until = :lease,
 attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, :now), updated_at = :now
 WHERE {{ids}} AND state IN {_among(sources(D.SENDING))}
 AND (next_attempt_at IS NULL OR next_attempt_at <= :now) AND {_SENDING}
 RETURNING id, attempts"""
_CLAIM_PG = _CLAIM.replace("{ids}", "id = ANY(:ids)")
_CLAIM_SQLITE = _CLAIM.replace("{ids}", "id IN (SELECT value FROM json_each(:ids))")
_FENCE = f"""UPDATE delivery SET state = '{D.SUBMITTING}', lease_until = :lease, updated_at = :now
 WHERE id = :next AND attempts = :next_attempt AND state IN {_among(sources(D.SUBMITTING))}"""
_ACCEPTED = f"""UPDATE delivery SET state = '{D.SENT}', sent_at = :now, reply_code = :code,
 reply_text = :text, lease_until = NULL, updated_at = :now
 WHERE id = :id AND attempts = :attempt AND state IN {_among(sources(D.SENT))}"""
# the send's status comes back with the outcome: a pause or cancel needs no query of its own
_ACCEPTED_STATUS = f"""WITH done AS ({_ACCEPTED} RETURNING 1)
 SELECT (SELECT count(*) FROM done), ({_STATUS})"""
_RELEASE = f"""UPDATE delivery SET state = '{D.QUEUED}', lease_until = NULL, updated_at = :now
 WHERE id = :id AND attempts = :attempt
 AND state IN {_among(sources_among(D.QUEUED, D.SENDING))}"""

_NAMED = re.compile(r":([a-z_]+)")


@cache
def _pyformat(sql: str) -> str:
    """``:name`` → ``%(name)s`` (psycopg's placeholders); once per statement text."""
    return _NAMED.sub(r"%(\1)s", sql)


@dataclass
class LedgerConnection:
    """One DBAPI connection the ledger writes through: ``driver`` is "postgresql" (a psycopg
    connection in autocommit mode) or "sqlite" (a sqlite3 connection with ``isolation_level``
    None). Not thread-safe: one per worker thread (``Runtime.ledger``)."""

    driver: str
    connection: Any
    # PostgreSQL: one cursor for every statement (a new cursor per statement, as
    # ``Connection.execute`` makes, sets up its adapters each time: per message, twice)
    _cursor: Any = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, url: str) -> LedgerConnection:
        """Connect to a SQLAlchemy URL (``postgresql+psycopg://…`` or ``sqlite:///path``);
        raises ``ValueError`` for another database, the driver's error when unreachable."""
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            conn = sqlite3.connect(
                parsed.database or ":memory:",
                timeout=30,
                isolation_level=None,
                check_same_thread=False,  # used by its own thread only; closed by any
            )
            conn.execute("PRAGMA busy_timeout=30000")  # as worker.db: wait for the write lock
            conn.execute("PRAGMA synchronous=NORMAL")
            return cls("sqlite", conn)
        if parsed.get_backend_name() == "postgresql":
            import psycopg

            conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            return cls("postgresql", psycopg.connect(conninfo, autocommit=True))
        raise ValueError(f"no ledger driver for {parsed.get_backend_name()!r} (postgresql, sqlite)")

    @property
    def usable(self) -> bool:
        """False once the connection is closed or broken (reopen it)."""
        if self.driver == "postgresql":
            return not (self.connection.closed or self.connection.broken)
        try:
            self.connection.total_changes  # noqa: B018 (raises once closed)
        except sqlite3.ProgrammingError:
            return False
        return True

    def close(self) -> None:
        self.connection.close()

    def rows(self, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Run one statement (committed on return: autocommit) and return its rows."""
        if self.driver == "postgresql":
            cursor = self._pg(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
        cursor = self.connection.execute(sql, _sqlite_params(params))
        return list(cursor.fetchall())

    def count(self, sql: str, params: Mapping[str, object]) -> int:
        """Run one writing statement (committed on return); the number of rows it changed."""
        if self.driver == "postgresql":
            return int(self._pg(sql, params).rowcount)
        return int(self.connection.execute(sql, _sqlite_params(params)).rowcount)

    def _pg(self, sql: str, params: Mapping[str, object]) -> Any:
        """One prepared statement on this connection's cursor; the cursor, for its results."""
        if self._cursor is None or self._cursor.closed:
            self._cursor = self.connection.cursor()
        return self._cursor.execute(_pyformat(sql), params, prepare=True)

    def in_transaction(self, work: Callable[[LedgerConnection], T]) -> T:
        """``work`` in one transaction, one commit (SQLite: ``BEGIN IMMEDIATE``, so the write
        lock is taken at once rather than upgraded midway)."""
        if self.driver == "postgresql":
            with self.connection.transaction():
                return work(self)
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(self)
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")
        return result


def _sqlite_params(params: Mapping[str, object]) -> dict[str, object]:
    """Timestamps as SQLAlchemy stores them on SQLite (naive UTC, microseconds always written,
    so that text comparisons order them)."""
    return {k: _sqlite_time(v) if isinstance(v, datetime) else v for k, v in params.items()}


def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the database; use an aware UTC datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class DriverLedger:
    """The delivery ledger with its per-message statements on ``connection`` (see the module);
    ``session`` serves the rest through ``SqlLedger`` (same ``refusals`` and ``metrics``)."""

    def __init__(
        self,
        session: Session,
        connection: LedgerConnection,
        *,
        refusals: RefusalRecorder[Session] | None = None,
        metrics: SendingMetrics | None = None,
    ) -> None:
        self.session = session
        self.db = connection
        self.metrics: SendingMetrics = metrics or NoMetrics()
        self.reference = SqlLedger(session, refusals=refusals, metrics=self.metrics)

    def _ended(self, value: T) -> T:
        """``value``, after ending the read transaction the session opened (if any)."""
        if self.session.in_transaction():
            self.session.commit()
        return value

    def send_status(self, send_id: int) -> SendStatus | None:
        """One prepared SELECT; no transaction stays open."""
        rows = self.db.rows(_STATUS, {"send": send_id})
        return SendStatus(rows[0][0]) if rows else None

    def due(self, send_id: int, first_id: int, last_id: int, now: datetime) -> DueBatch:
        """Once per batch: ``SqlLedger.due`` (subscribers as ORM rows)."""
        return self._ended(self.reference.due(send_id, first_id, last_id, now))

    def claim(
        self, send_id: int, ids: list[int], now: datetime, lease_seconds: float
    ) -> dict[int, int]:
        """One UPDATE … RETURNING for the chunk, committed. The id list is one array parameter
        (PostgreSQL) or one JSON text (SQLite), so the statement is the same for every chunk."""
        if not ids:
            return {}
        lease = now + timedelta(seconds=lease_seconds)
        listed: object
        if self.db.driver == "postgresql":
            sql, listed = _CLAIM_PG, ids
        else:
            sql, listed = _CLAIM_SQLITE, json.dumps(ids)
        params: dict[str, object] = {"ids": listed, "lease": lease, "now": now, "send": send_id}
        rows = self.db.rows(sql, params)
        return {int(d_id): int(attempt) for d_id, attempt in rows}

    def submit(self, delivery_id: int, attempt: int, now: datetime, lease_seconds: float) -> bool:
        """One prepared UPDATE, committed; True if the fence passed."""
        lease = now + timedelta(seconds=lease_seconds)
        params = {"next": delivery_id, "next_attempt": attempt, "lease": lease, "now": now}
        return self.db.count(_FENCE, params) == 1

    def record_accepted(
        self, send_id: int, delivery_id: int, attempt: int, outcome: SmtpOutcome, now: datetime
    ) -> Accepted:
        """The outcome and the send's status: one statement and its commit (PostgreSQL: a
        data-modifying CTE on an autocommit connection, one round trip)."""
        params: dict[str, object] = {
            "id": delivery_id,
            "attempt": attempt,
            "send": send_id,
            "now": now,
            "code": outcome.code or None,
            # written past the column type: sealed here (a relay's reply may name the reader)
            "text": keyring.current().seal(outcome.text[:1000], "delivery.reply_text"),
        }
        if self.db.driver == "postgresql":
            written, status = self.db.rows(_ACCEPTED_STATUS, params)[0]
        else:
            written, status = self.db.in_transaction(lambda db: _sqlite_accept(db, params))
        if written:
            self.metrics.delivery_recorded(D.SENT)
        return Accepted(bool(written), None if status is None else SendStatus(status))

    def record_outcome(
        self,
        delivery_id: int,
        subscriber: Subscriber,
        outcome: SmtpOutcome,
        now: datetime,
        policy: SendPolicy,
        attempt: int | None = None,
    ) -> DeliveryState:
        """Refusals and deferrals (not the hot path): ``SqlLedger.record_outcome``, which
        commits the judged state with its feedback event."""
        return self._ended(
            self.reference.record_outcome(delivery_id, subscriber, outcome, now, policy, attempt)
        )

    def release(self, claims: list[tuple[int, int]], now: datetime) -> None:
        """One transaction for all of ``claims``."""
        if not claims:
            return

        def give_back(db: LedgerConnection) -> None:
            for d_id, attempt in claims:
                db.count(_RELEASE, {"id": d_id, "attempt": attempt, "now": now})

        self.db.in_transaction(give_back)

    def next_retry_at(self, send_id: int, first_id: int, last_id: int) -> datetime | None:
        return self._ended(self.reference.next_retry_at(send_id, first_id, last_id))

    def finish_send_if_done(self, send_id: int, now: datetime) -> bool:
        return self._ended(self.reference.finish_send_if_done(send_id, now))

    def expire_leases(self, now: datetime) -> LeaseSweep:
        return self._ended(self.reference.expire_leases(now))

    def retry_unknown(self, send_id: int, now: datetime) -> int:
        """See ``SqlLedger.retry_unknown`` (operator command)."""
        return self._ended(self.reference.retry_unknown(send_id, now))

    def counts(self, send_id: int) -> dict[str, int]:
        return self._ended(self.reference.counts(send_id))

    def progress(
        self, send_id: int, since: datetime
    ) -> tuple[dict[str, int], int, datetime | None]:
        return self._ended(self.reference.progress(send_id, since))


def _sqlite_accept(db: LedgerConnection, params: Mapping[str, object]) -> tuple[int, Any]:
    """SQLite has no data-modifying CTE: the outcome, then the status, in the caller's
    transaction."""
    written = db.count(_ACCEPTED, params)
    rows = db.rows(_STATUS, params)
    return written, rows[0][0] if rows else None


__all__ = ["DriverLedger", "LedgerConnection"]
