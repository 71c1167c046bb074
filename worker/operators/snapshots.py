"""The dashboard's expensive aggregates, kept for a short time and shared by the web processes.

Counting a million readers by status and language, or a live send's million deliveries by
language and domain, takes 100–200 ms each on PostgreSQL (bench/dashboard_1m.py); a view that
repeats them cannot answer in 100 ms. ``remembered`` keeps each aggregate for ``seconds``
(``NEWSLETTER_DASHBOARD_CACHE_SECONDS``): first in this process's memory, then in the
``dashboard_snapshot`` table, so a fresh process (another web worker, a restart) reads one row
instead of counting. The page shows the oldest ``computed_at`` it used ("as of"), so a number is
never shown as newer than it is. Time comes from the caller's ``now`` (``Runtime.clock``): a
test moves the clock instead of sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from worker.models import DashboardSnapshot

log = logging.getLogger(__name__)

T = TypeVar("T")

_memory: dict[tuple[str, str], tuple[datetime, Any]] = {}
_MEMORY_SIZE = 256


def remembered(
    session: Session,
    key: str,
    *,
    now: datetime,
    seconds: float,
    compute: Callable[[], T],
    dump: Callable[[T], Any],
    load: Callable[[Any], T],
) -> tuple[T, datetime]:
    """The aggregate ``key`` and when it was computed: a copy younger than ``seconds`` at
    ``now`` (this process's, else the database's), else ``compute()`` at ``now``, stored for
    the next views.

    ``dump`` turns the value into JSON-able data and ``load`` back (a value read from memory is
    the same object: callers do not change it). A copy dated after ``now`` (a clock moved back)
    is not used. With ``seconds`` 0 nothing is kept. Storing is best effort in a transaction
    of its own (the caller's reads so far are committed first): a database user that may only
    read, or another process storing the same key at the same moment, is logged at most and
    the computed value is returned all the same. Raises what ``compute`` raises."""
    if seconds <= 0:
        return compute(), now
    fresh_after = now - timedelta(seconds=seconds)
    slot = (str(session.get_bind().engine.url), key)
    if (kept := _memory.get(slot)) is not None and fresh_after < kept[0] <= now:
        return kept[1], kept[0]
    row = session.scalar(select(DashboardSnapshot).where(DashboardSnapshot.key == key))
    if row is not None and fresh_after < row.computed_at <= now:
        value = load(row.value)
        _remember(slot, row.computed_at, value)
        return value, row.computed_at
    value = compute()
    _remember(slot, now, value)
    _store(session, key, now, dump(value))
    return value, now


def _remember(slot: tuple[str, str], computed_at: datetime, value: Any) -> None:
    _memory.pop(slot, None)
    _memory[slot] = (computed_at, value)
    while len(_memory) > _MEMORY_SIZE:
        del _memory[next(iter(_memory))]


def _store(session: Session, key: str, computed_at: datetime, value: Any) -> None:
    session.commit()  # what was read so far is read; the snapshot gets its own transaction
    try:
        row = session.get(DashboardSnapshot, key)
        if row is None:
            session.add(DashboardSnapshot(key=key, computed_at=computed_at, value=value))
        else:
            row.computed_at, row.value = computed_at, value
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        if not isinstance(exc, IntegrityError):  # another view stored it first: fine
            log.warning("dashboard snapshot %s not stored: %s", key, type(exc).__name__)


def forget() -> None:
    """Drop this process's copies (a fresh process; the database's rows stay)."""
    _memory.clear()


def stored(session: Session, key: str) -> Any | None:
    """The JSON value stored under ``key`` by ``store``, or None: what a view of another
    process already counted of what can no longer change (a send's settled feedback, its
    settled seconds), so that the first view of a fresh process reads one row instead of the
    whole ledger."""
    row = session.scalar(select(DashboardSnapshot).where(DashboardSnapshot.key == key))
    return None if row is None else row.value


def store(session: Session, key: str, now: datetime, value: Any) -> None:
    """Store ``value`` (JSON-able) under ``key`` for other processes, best effort in a
    transaction of its own (see ``remembered``)."""
    _store(session, key, now, value)


__all__ = ["forget", "remembered", "store", "stored"]
