"""``DriverLedger``: the delivery ledger's hot path on the database driver itself (psycopg for
PostgreSQL, sqlite3), with no ORM session and no SQL built per message. See
``worker.sending.ledger.DeliveryLedger`` for the contract.

Per message the batch loop makes two writes, the fence and the outcome (with the send's status);
on PostgreSQL each is one prepared statement (psycopg ``prepare=True``) on an autocommit
connection: one round trip and its commit, where the ORM session took three (BEGIN, the
statement, COMMIT) and rebuilt parameters each time. The statements go through psycopg's
``RawCursor`` with ``$n`` placeholders and a tuple of arguments (``Statement``): no query
conversion and no mapping of named parameters per execution. On SQLite (named placeholders, as
before) a write that needs two statements runs in one ``BEGIN IMMEDIATE`` … ``COMMIT``.
Claims (one UPDATE … RETURNING per chunk), releases and the send's status take the same path.
The rest (the batch's read, judged outcomes with their feedback event, sweeps) runs once per
batch or on errors and is delegated to ``SqlLedger`` over the session, whose read transactions
are ended before the method returns (no transaction spans an SMTP exchange).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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


_NAMED = re.compile(r":([a-z_]+)")


def _among(states: Sequence[str]) -> str:
    """``('a', 'b')``: a state list inlined into the statement (enum values, never input)."""
    return "(" + ", ".join(f"'{state}'" for state in states) + ")"


@dataclass(frozen=True)
class Statement:
    """One statement in both forms: ``named`` with ``:name`` placeholders (sqlite3) and
    ``numbered`` with ``$n`` ones (psycopg's ``RawCursor``); ``names`` is the order of the
    positional arguments, each name's first appearance (a name used twice is one ``$n``)."""

    named: str
    numbered: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, sql: str, names: tuple[str, ...]) -> Statement:
        """``sql`` with ``:name`` placeholders; ``names`` must be their order of first
        appearance (checked here, so that callers can pass plain tuples in that order).
        Raises ``ValueError`` otherwise."""
        found: list[str] = []
        for name in _NAMED.findall(sql):
            if name not in found:
                found.append(name)
        if tuple(found) != names:
            raise ValueError(f"statement parameters are {tuple(found)}, not {names}")
        numbered = _NAMED.sub(lambda m: f"${found.index(m.group(1)) + 1}", sql)
        return cls(sql, numbered, names)


_SENDING = (
    f"EXISTS (SELECT 1 FROM send WHERE send.id = :send AND send.status = '{SendStatus.SENDING}')"
)
_STATUS_SQL = "SELECT status FROM send WHERE id = :send"
_STATUS = Statement.of(_STATUS_SQL, ("send",))
_CLAIM = f"""UPDATE delivery SET state = '{D.SENDING}', lease_until = :lease,
 attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, :now), updated_at = :now
 WHERE {{ids}} AND state IN {_among(sources(D.SENDING))}
 AND (next_attempt_at IS NULL OR next_attempt_at <= :now) AND {_SENDING}
 RETURNING id, attempts"""
_CLAIM_ARGS = ("lease", "now", "ids", "send")
_CLAIM_PG = Statement.of(_CLAIM.replace("{ids}", "id = ANY(:ids)"), _CLAIM_ARGS)
_CLAIM_SQLITE = Statement.of(
    _CLAIM.replace("{ids}", "id IN (SELECT value FROM json_each(:ids))"), _CLAIM_ARGS
)
_FENCE = Statement.of(
    f"""UPDATE delivery SET state = '{D.SUBMITTING}', lease_until = :lease, updated_at = :now
 WHERE id = :next AND attempts = :next_attempt AND state IN {_among(sources(D.SUBMITTING))}""",
    ("lease", "now", "next", "next_attempt"),
)
_ACCEPTED_SQL = f"""UPDATE delivery SET state = '{D.SENT}', sent_at = :now, reply_code = :code,
 reply_text = :text, lease_until = NULL, updated_at = :now
 WHERE id = :id AND attempts = :attempt AND state IN {_among(sources(D.SENT))}"""
_ACCEPTED_ARGS = ("now", "code", "text", "id", "attempt")
_ACCEPTED = Statement.of(_ACCEPTED_SQL, _ACCEPTED_ARGS)
# the send's status comes back with the outcome: a pause or cancel needs no query of its own
_ACCEPTED_STATUS = Statement.of(
    f"""WITH done AS ({_ACCEPTED_SQL} RETURNING 1)
 SELECT (SELECT count(*) FROM done), ({_STATUS_SQL})""",
    (*_ACCEPTED_ARGS, "send"),
)
_RELEASE = Statement.of(
    f"""UPDATE delivery SET state = '{D.QUEUED}', lease_until = NULL, updated_at = :now
 WHERE id = :id AND attempts = :attempt
 AND state IN {_among(sources_among(D.QUEUED, D.SENDING))}""",
    ("now", "id", "attempt"),
)


@dataclass
class LedgerConnection:
    """One DBAPI connection the ledger writes through: ``driver`` is "postgresql" (a psycopg
    connection in autocommit mode) or "sqlite" (a sqlite3 connection with ``isolation_level``
    None). Not thread-safe: one per worker thread (``Runtime.ledger``)."""

    driver: str
    connection: Any
    # PostgreSQL: one raw cursor for every statement (a new cursor per statement, as
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

    def rows(self, statement: Statement, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        """Run one statement that returns rows (a SELECT, or a write with RETURNING) with
        ``args`` in the order of ``statement.names`` (committed on return: autocommit); its
        rows."""
        if self.driver == "postgresql":
            # no look at ``cursor.description``: it builds its column objects on each access
            rows: list[tuple[Any, ...]] = self._pg(statement, args).fetchall()
            return rows
        cursor = self.connection.execute(statement.named, _sqlite_params(statement, args))
        return list(cursor.fetchall())

    def count(self, statement: Statement, args: tuple[object, ...]) -> int:
        """Run one writing statement (committed on return); the number of rows it changed."""
        if self.driver == "postgresql":
            return int(self._pg(statement, args).rowcount)
        return int(
            self.connection.execute(statement.named, _sqlite_params(statement, args)).rowcount
        )

    def _pg(self, statement: Statement, args: tuple[object, ...]) -> Any:
        """One prepared statement on this connection's raw cursor; the cursor, for its
        results."""
        if self._cursor is None or self._cursor.closed:
            import psycopg

            self._cursor = psycopg.RawCursor(self.connection)
        return self._cursor.execute(statement.numbered, args, prepare=True)

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


def _sqlite_params(statement: Statement, args: tuple[object, ...]) -> dict[str, object]:
    """``args`` by name, timestamps as SQLAlchemy stores them on SQLite (naive UTC,
    microseconds always written, so that text comparisons order them)."""
    return {
        k: _sqlite_time(v) if isinstance(v, datetime) else v
        for k, v in zip(statement.names, args, strict=True)
    }


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
        rows = self.db.rows(_STATUS, (send_id,))
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
        if self.db.driver == "postgresql":
            rows = self.db.rows(_CLAIM_PG, (lease, now, ids, send_id))
        else:
            rows = self.db.rows(_CLAIM_SQLITE, (lease, now, json.dumps(ids), send_id))
        return {int(d_id): int(attempt) for d_id, attempt in rows}

    def submit(self, delivery_id: int, attempt: int, now: datetime, lease_seconds: float) -> bool:
        """One prepared UPDATE, committed; True if the fence passed."""
        lease = now + timedelta(seconds=lease_seconds)
        return self.db.count(_FENCE, (lease, now, delivery_id, attempt)) == 1

    def record_accepted(
        self, send_id: int, delivery_id: int, attempt: int, outcome: SmtpOutcome, now: datetime
    ) -> Accepted:
        """The outcome and the send's status: one statement and its commit (PostgreSQL: a
        data-modifying CTE on an autocommit connection, one round trip)."""
        # the reply is written past the column type: sealed here (it may name the reader)
        text = keyring.current().seal(outcome.text[:1000], "delivery.reply_text")
        args = (now, outcome.code or None, text, delivery_id, attempt)  # _ACCEPTED.names
        if self.db.driver == "postgresql":
            written, status = self.db.rows(_ACCEPTED_STATUS, (*args, send_id))[0]
        else:
            written, status = self.db.in_transaction(lambda db: _sqlite_accept(db, args, send_id))
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
                db.count(_RELEASE, (now, d_id, attempt))

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


def _sqlite_accept(db: LedgerConnection, args: tuple[object, ...], send_id: int) -> tuple[int, Any]:
    """SQLite has no data-modifying CTE: the outcome, then the status, in the caller's
    transaction."""
    written = db.count(_ACCEPTED, args)
    rows = db.rows(_STATUS, (send_id,))
    return written, rows[0][0] if rows else None


__all__ = ["DriverLedger", "LedgerConnection"]
