"""What the desk's home page lists: the newsletter's editions with their latest send, and the
recent sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.models import Edition, EditionContentRow, Send


@dataclass(frozen=True)
class EditionLine:
    """One edition on the home page; ``send_status`` is its latest send's (None: never sent)."""

    key: str
    period_start: date | None
    period_end: date | None
    languages: tuple[str, ...]
    updated_at: datetime
    send_status: str | None
    send_id: int | None


@dataclass(frozen=True)
class SendLine:
    """One recent send."""

    id: int
    edition_key: str
    status: str
    created_at: datetime
    scheduled_for: datetime | None
    planned_count: int
    timezone: str | None = None  # the zone the send was scheduled in

    @property
    def planned(self) -> bool:
        """Whether its readers are counted yet: a send takes its list when it starts."""
        return self.status not in ("scheduled", "planning")


def editions(session: Session, newsletter_id: int | None, limit: int = 50) -> list[EditionLine]:
    """The newest ``limit`` editions of ``newsletter_id`` (all newsletters' when None), most
    recently changed first."""
    query = select(Edition).order_by(Edition.updated_at.desc(), Edition.id.desc()).limit(limit)
    if newsletter_id is not None:
        query = query.where(Edition.newsletter_id == newsletter_id)
    rows = list(session.scalars(query))
    ids = [row.id for row in rows]
    languages: dict[int, list[str]] = {}
    latest: dict[int, Send] = {}
    if ids:
        for edition_id, language in session.execute(
            select(EditionContentRow.edition_id, EditionContentRow.language)
            .where(EditionContentRow.edition_id.in_(ids))
            .order_by(EditionContentRow.language)
        ):
            languages.setdefault(edition_id, []).append(language)
        newest = select(func.max(Send.id)).where(Send.edition_id.in_(ids)).group_by(Send.edition_id)
        for send in session.scalars(select(Send).where(Send.id.in_(newest))):
            latest[send.edition_id] = send
    return [
        EditionLine(
            key=row.key,
            period_start=row.period_start,
            period_end=row.period_end,
            languages=tuple(languages.get(row.id, [])),
            updated_at=row.updated_at,
            send_status=str(latest[row.id].status) if row.id in latest else None,
            send_id=latest[row.id].id if row.id in latest else None,
        )
        for row in rows
    ]


def recent_sends(session: Session, newsletter_id: int | None, limit: int = 10) -> list[SendLine]:
    """The newest ``limit`` sends, newest first."""
    query = (
        select(Send, Edition.key)
        .join(Edition, Edition.id == Send.edition_id)
        .order_by(Send.id.desc())
        .limit(limit)
    )
    if newsletter_id is not None:
        query = query.where(Edition.newsletter_id == newsletter_id)
    return [
        SendLine(
            id=send.id,
            edition_key=key,
            status=str(send.status),
            created_at=send.created_at,
            scheduled_for=send.scheduled_for,
            planned_count=send.planned_count,
            timezone=send.timezone,
        )
        for send, key in session.execute(query)
    ]
