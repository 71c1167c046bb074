"""The desk's action log: who did what to which subject, and when.

Every desk action calls :func:`record` in the same transaction as the action itself, so an
action that rolled back leaves no line and a line never lacks its action. Logins, logouts and
failed logins are recorded too (a failed login names the name that was tried, never the
password). The log never holds a reader's address: subjects are edition keys, send ids and desk
user names, and anything that looks like an address in a subject or a detail is replaced by
``<address>`` before it is stored (a guard, not a licence to pass one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.models import DeskAction

LATEST = 200  # lines shown by /desk/log
_ADDRESS = re.compile(r"[^\s<>\"'@]+@[^\s<>\"'@]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # PostgreSQL refuses NUL in text; the rest is noise
_MAX_SUBJECT = 200
_MAX_DETAIL_VALUE = 500


@dataclass(frozen=True)
class Entry:
    """One line of the log, as shown."""

    at: datetime
    user_name: str
    action: str
    subject: str
    detail: dict[str, str]


def _clean(text: str, limit: int) -> str:
    return _ADDRESS.sub("<address>", _CONTROL.sub("", text))[:limit]


def record(
    session: Session,
    user_name: str,
    action: str,
    subject: str,
    detail: dict[str, str] | None = None,
    at: datetime | None = None,
) -> None:
    """Add one line: ``user_name`` (a desk user, or the name tried at a failed login) did
    ``action`` (a short verb phrase such as ``login``, ``edition.save``, ``send.pause``) to
    ``subject`` (an edition key, a send id, a user name; may be empty), with ``detail`` (short
    strings). ``at`` defaults to now (UTC). Committed with the caller's transaction."""
    session.add(
        DeskAction(
            at=at or datetime.now(UTC),
            user_name=_clean(user_name, 64),
            action=_CONTROL.sub("", action)[:64],
            subject=_clean(subject, _MAX_SUBJECT),
            detail={str(k)[:64]: _clean(str(v), _MAX_DETAIL_VALUE) for k, v in detail.items()}
            if detail
            else None,
        )
    )


def latest(
    session: Session, user_name: str | None = None, action: str | None = None, limit: int = LATEST
) -> list[Entry]:
    """The newest ``limit`` lines, newest first, of ``user_name`` and of ``action`` when given
    (exact match)."""
    query = select(DeskAction).order_by(DeskAction.at.desc(), DeskAction.id.desc()).limit(limit)
    if user_name:
        query = query.where(DeskAction.user_name == _CONTROL.sub("", user_name))
    if action:
        query = query.where(DeskAction.action == _CONTROL.sub("", action))
    return [
        Entry(row.at, row.user_name, row.action, row.subject, _strings(row.detail))
        for row in session.scalars(query)
    ]


def actions(session: Session) -> list[str]:
    """The distinct actions in the log, sorted (the log page's filter)."""
    return sorted(session.scalars(select(DeskAction.action).distinct()))


def _strings(detail: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): str(v) for k, v in (detail or {}).items()}
