"""The signup path's hot statements, run on the session's own DBAPI connection (issue 16).

A signup runs five tiny statements (the look-up, the subscriber and consent inserts, the
confirmation mail's read and its outcome). Through ``Session.execute`` each paid the session's
compiled-cache look-up, parameter and result processing: 37 % of a signup's CPU. Here they are
plain SQL text run on the DBAPI connection the session has checked out — in the session's
transaction, committed or rolled back with it — as prepared statements on PostgreSQL (psycopg,
``prepare=True``: parsed and planned once per pooled connection) and with ``sqlite3`` on SQLite.
As ``worker.sending.driver_ledger`` does for the send path.

Values are bound exactly as the ORM's column types bind them (``worker.models``): addresses
sealed by ``EncryptedText``, the address key replaced by its blind index (``BlindIndex``),
timestamps in UTC (SQLite: the text form SQLAlchemy writes, so comparisons still order them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Table, TypeDecorator
from sqlalchemy.orm import Session

from worker.models import Subscriber

_SUBSCRIBER = cast(Table, Subscriber.__table__)
_KEY = "newsletter.signup_driver"

LOOK_UP = (
    "SELECT (SELECT id FROM consent WHERE event_id = :event_id LIMIT 1), "
    "(SELECT id FROM suppression WHERE email_hash = :hashed AND removed_at IS NULL LIMIT 1), "
    "(SELECT id FROM subscriber WHERE newsletter_id = :newsletter_id AND email_key = :email_key)"
)
"""(a consent of this event, an active suppression of this hash, this address's subscriber)."""

INSERT_PENDING = (
    "INSERT INTO subscriber (newsletter_id, email, email_key, ascii_email, domain, language, "
    "status, confirm_nonce, created_at, updated_at) VALUES (:newsletter_id, :email, :email_key, "
    ":ascii_email, :domain, :language, :status, :confirm_nonce, :created_at, :updated_at) "
    "ON CONFLICT (newsletter_id, email_key) DO NOTHING RETURNING id"
)

INSERT_CONSENT = (
    "INSERT INTO consent (subscriber_id, event_id, signed_up_at, ip, user_agent, source, "
    "consent_version, language, method, confirmed_at, confirm_ip, confirm_user_agent) VALUES "
    "(:subscriber_id, :event_id, :signed_up_at, :ip, :user_agent, :source, :consent_version, "
    ":language, :method, :confirmed_at, :confirm_ip, :confirm_user_agent)"
)

AWAITING = (
    "SELECT id, language, email, ascii_email, status, confirm_nonce, EXISTS (SELECT 1 FROM "
    "consent WHERE consent.subscriber_id = subscriber.id AND consent.method = 're_permission' "
    "AND consent.confirmed_at IS NULL) FROM subscriber WHERE id = :subscriber_id"
)
"""The columns a confirmation mail needs, and whether it is a re-permission."""

CONFIRMATION_SENT = (
    "UPDATE subscriber SET confirmation_sent_at = :now, confirmation_error = NULL, "
    "confirmation_failed_at = NULL WHERE id = :subscriber_id"
)

_NAMED = re.compile(r":(\w+)")


@cache
def _pyformat(sql: str) -> str:
    """``:name`` → ``%(name)s`` (psycopg's placeholders); once per statement text."""
    return _NAMED.sub(r"%(\1)s", sql)


class SignupDriver:
    """The DBAPI connection of one pooled connection, for the statements above. One per pooled
    connection (kept in its ``info``), so PostgreSQL's prepared statements and the cursor are
    reused across sessions; used by one thread at a time, as the session that checked it out."""

    def __init__(self, session: Session, dbapi: Any) -> None:
        self.dialect = session.get_bind().dialect
        self.postgresql = self.dialect.name == "postgresql"
        self.dbapi = dbapi
        self._cursor = dbapi.cursor()

    def rows(self, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``:name`` placeholders) in the session's transaction; its rows."""
        if self.postgresql:
            cursor = self._cursor.execute(_pyformat(sql), params, prepare=True)
            return list(cursor.fetchall()) if cursor.description else []
        self._cursor.execute(sql, {k: _sqlite_value(v) for k, v in params.items()})
        return list(self._cursor.fetchall())

    def seal(self, column: str, value: str | None) -> str | None:
        """``value`` as ``subscriber.<column>``'s type binds it (sealed, or its blind index)."""
        return cast(str | None, _column_type(column).process_bind_param(value, self.dialect))

    def open(self, column: str, value: str | None) -> str | None:
        """A ``subscriber.<column>`` value read back as the ORM reads it (opened)."""
        return _column_type(column).process_result_value(value, self.dialect)


@cache
def _column_type(column: str) -> TypeDecorator[str]:
    """The type of ``subscriber.<column>``: ``EncryptedText`` or ``BlindIndex``."""
    return cast(TypeDecorator[str], _SUBSCRIBER.c[column].type)


def driver(session: Session) -> SignupDriver:
    """The :class:`SignupDriver` of the connection ``session`` has checked out (checking one
    out, and beginning the session's transaction, if it has none yet). Kept in the session for
    the rest of its transaction (one connection look-up per transaction, not per statement)."""
    transaction = session.get_transaction()
    kept = session.info.get(_KEY)
    if transaction is not None and kept is not None and kept[0] is transaction:
        return cast(SignupDriver, kept[1])
    proxied = session.connection().connection
    dbapi = proxied.driver_connection
    found = proxied.info.get(_KEY)
    if not isinstance(found, SignupDriver) or found.dbapi is not dbapi:
        found = proxied.info[_KEY] = SignupDriver(session, dbapi)
    session.info[_KEY] = (session.get_transaction(), found)
    return found


def _sqlite_value(value: object) -> object:
    """Timestamps as SQLAlchemy stores them on SQLite (naive UTC, microseconds always written)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC datetime")
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value
