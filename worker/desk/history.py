"""Past and running sends as the desk shows them: the list, one send's progress, its funnel.

The numbers are the operators' dashboard's (:mod:`worker.operators.dashboard`): the same queries,
the same stored tallies of finished sends, so the desk and the dashboard never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.models import Send
from worker.operators.dashboard import SendReport, SendSummary, recent_sends, send_detail
from worker.states import SendStatus

# Deliveries that still wait for an outcome; the rest are done (sent, failed, ...).
WAITING = ("queued", "sending", "deferred")
# Statuses in which the send will still change by itself: the progress page keeps refreshing.
LIVE = (SendStatus.SCHEDULED, SendStatus.PLANNING, SendStatus.SENDING)


@dataclass(frozen=True)
class PastSend:
    """One send in the desk's list: the dashboard's summary plus when it is or was due."""

    summary: SendSummary
    scheduled_for: datetime | None
    timezone: str | None


def past_sends(session: Session, limit: int = 50) -> list[PastSend]:
    """The ``limit`` newest sends, newest first, with their deliveries per state."""
    summaries = recent_sends(session, limit=limit)
    due = {
        send_id: (at, zone)
        for send_id, at, zone in session.execute(
            select(Send.id, Send.scheduled_for, Send.timezone).where(
                Send.id.in_([summary.id for summary in summaries])
            )
        )
    }
    return [PastSend(s, *due.get(s.id, (None, None))) for s in summaries]


@dataclass(frozen=True)
class Progress:
    """One send now: its status, deliveries per state, how many are done of how many planned,
    whether it still moves by itself (``live``), and its funnels (the dashboard's report)."""

    send_id: int
    edition_key: str
    status: str
    planned: int
    done: int
    states: dict[str, int]
    live: bool
    scheduled_for: datetime | None
    timezone: str | None
    report: SendReport

    @property
    def percent(self) -> int:
        """Done of planned, in whole percent (0 before planning)."""
        return int(100 * self.done / self.planned) if self.planned else 0


def progress(session: Session, send_id: int, now: datetime) -> Progress | None:
    """The progress and funnel of ``send_id``, or None for an unknown send. Reads (a finished
    send's tally may be stored, as the dashboard does)."""
    report = send_detail(session, send_id, now)
    send = session.get(Send, send_id, populate_existing=True)
    if report is None or send is None:
        return None
    states = dict(report.summary.states)
    planned = max(send.planned_count or 0, sum(states.values()))
    done = sum(n for state, n in states.items() if state not in WAITING)
    return Progress(
        send_id=send.id,
        edition_key=report.summary.edition_key,
        status=str(send.status),
        planned=planned,
        done=done,
        states=states,
        live=send.status in LIVE,
        scheduled_for=send.scheduled_for,
        timezone=send.timezone,
        report=report,
    )
