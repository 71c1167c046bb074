"""The standing weekly send slot of a newsletter ("monday 09:00 Europe/Minsk").

At each firing the newest loaded edition that was never sent becomes a scheduled send due at the
slot's time; the scheduler then starts it like any scheduled send. A firing is claimed by moving
``SendSlot.next_at`` on with a compare-and-set UPDATE, in the same transaction as the new send,
so two schedulers fire a slot once and a crash leaves either both or neither.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, time

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.orm import Session

from worker.models import Edition, Send, SendSlot
from worker.sending.schedule import WeeklyTime, zone
from worker.sending.sends import EditionHasProblems, create_send
from worker.states import SendStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Firing:
    """What one firing of a slot did: ``send_id`` of the send it scheduled, or None when no
    edition was waiting (``edition_key`` None too)."""

    slot_id: int
    due: datetime
    send_id: int | None
    edition_key: str | None


def set_slot(
    session: Session, newsletter_id: int, weekly: WeeklyTime, zone_name: str, now: datetime
) -> SendSlot:
    """Create or replace the newsletter's slot; its next firing is the first after ``now``.
    Raises ``worker.sending.schedule.ScheduleError`` for an unknown zone. Flushes."""
    zone(zone_name)
    slot = get_slot(session, newsletter_id)
    if slot is None:
        slot = SendSlot(newsletter_id=newsletter_id, created_at=now)
        session.add(slot)
    slot.weekday, slot.local_time, slot.timezone = weekly.weekday, f"{weekly.at:%H:%M}", zone_name
    slot.next_at = weekly.next_after(now, zone_name)
    session.flush()
    return slot


def get_slot(session: Session, newsletter_id: int) -> SendSlot | None:
    """The newsletter's slot, or None."""
    return session.scalar(select(SendSlot).where(SendSlot.newsletter_id == newsletter_id))


def clear_slot(session: Session, newsletter_id: int) -> bool:
    """Remove the newsletter's slot; returns whether there was one."""
    result = session.execute(delete(SendSlot).where(SendSlot.newsletter_id == newsletter_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def weekly_time(slot: SendSlot) -> WeeklyTime:
    """The slot's weekday and local time."""
    return WeeklyTime(slot.weekday, time.fromisoformat(slot.local_time))


def newest_unsent(session: Session, newsletter_id: int) -> Edition | None:
    """The most recently loaded edition of the newsletter with no send that counts as sent
    (``worker.sending.sends.earlier_sends``), or None."""
    counted = exists().where(
        Send.edition_id == Edition.id,
        or_(Send.status != SendStatus.CANCELLED, Send.started_at.is_not(None)),
    )
    return session.scalar(
        select(Edition)
        .where(Edition.newsletter_id == newsletter_id, ~counted)
        .order_by(Edition.created_at.desc(), Edition.id.desc())
        .limit(1)
    )


def fire_due_slots(session: Session, now: datetime, batch_size: int) -> list[Firing]:
    """Fire every slot due at ``now``: move its ``next_at`` to the first firing after ``now``
    (compare-and-set on the old value) and, if that won, schedule the newest unsent edition at
    the due time. One commit per slot. Returns what each firing this call won did."""
    fired: list[Firing] = []
    due_slots = session.scalars(select(SendSlot).where(SendSlot.next_at <= now)).all()
    for slot in due_slots:
        due, slot_id, tz = slot.next_at, slot.id, slot.timezone
        following = weekly_time(slot).next_after(now, tz)
        won = session.execute(
            update(SendSlot)
            .where(SendSlot.id == slot_id, SendSlot.next_at == due)
            .values(next_at=following)
            .execution_options(synchronize_session=False)
        )
        if not won.rowcount:  # type: ignore[attr-defined]
            session.rollback()  # another scheduler fired it
            continue
        edition = newest_unsent(session, slot.newsletter_id)
        send_id = None
        if edition is not None:
            # due is in the past by now; the send is due at once and started by this pass
            try:
                send = create_send(session, edition, now, batch_size)
            except EditionHasProblems as exc:
                log.warning("weekly slot %s sends nothing: %s", slot_id, exc)
                edition = None
            else:
                send.scheduled_for, send.timezone = due, tz
                send_id = send.id
        session.commit()
        fired.append(Firing(slot_id, due, send_id, edition.key if edition else None))
    return fired
