"""The operators' dashboard numbers, derived on read from the ledger (deliveries, feedback events,
consents, subscribers): nothing is stored twice, so the numbers cannot drift from the truth.

Each send's funnel by language and by recipient domain, its send rate over time, the top bounce
reasons, the complaint rate against the bulk-sender thresholds (Gmail and Yahoo, February 2024:
keep spam complaints under 0.1 %, never reach 0.3 %), the time from an unsubscribe request to the
moment it was honoured (RFC 8058 one-click and the same sender guidelines: within two days), and
signups with their confirmation rate per day.

Attribution: a feedback event linked to a delivery counts for that delivery. An unsubscribe or a
complaint that names only the subscriber (the unsubscribe link carries no delivery) counts for the
last delivery sent to that subscriber before the event. "bounced" means a bounce that came back
after the relay accepted the message (DSN, ARF, webhook); a refusal during the SMTP transaction is
"failed".

Cost on a 1M-delivery ledger: one index-only scan of the selected send's deliveries for the funnel,
one for the rate; everything else reads the small feedback, consent and send tables (see
bench/dashboard_1m.py and docs/operations.md for the indexes this relies on).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session, aliased

from worker.models import (
    Consent,
    Delivery,
    Edition,
    FeedbackEvent,
    Send,
    SendStatus,
    Subscriber,
)

COMPLAINT_WARN = 0.001  # 0.1 %: Gmail/Yahoo bulk-sender guideline, keep below
COMPLAINT_LIMIT = 0.003  # 0.3 %: never reach (delivery suffers, mitigation is refused)
UNSUBSCRIBE_DEADLINE = timedelta(hours=48)  # honour unsubscribes within two days
BOUNCE_KINDS = ("hard_bounce", "soft_bounce", "policy_block")
FUNNEL_KINDS = (*BOUNCE_KINDS, "complaint", "unsubscribe")
FUNNEL_COLUMNS = (
    "planned",
    "queued",
    "sent",
    "deferred",
    "failed",
    "unknown",
    "skipped",
    "bounced",
    "complained",
    "unsubscribed",
)
_STATE_COLUMN = {
    "queued": "queued",
    "sending": "queued",
    "sent": "sent",
    "deferred": "deferred",
    "failed": "failed",
    "expired": "failed",
    "unknown": "unknown",
    "skipped": "skipped",
}
TOP_DOMAINS = 10


@dataclass
class Funnel:
    """Deliveries of one group at each step. ``queued`` includes claimed (``sending``) ones and
    ``failed`` includes ``expired`` (deferred past the maximum age)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FUNNEL_COLUMNS, 0))

    def add(self, column: str, n: int = 1) -> None:
        self.counts[column] = self.counts.get(column, 0) + n

    def __getitem__(self, column: str) -> int:
        return self.counts.get(column, 0)

    def merge(self, other: Funnel) -> None:
        for column, n in other.counts.items():
            self.add(column, n)

    @property
    def complaint_rate(
    session: Session, sends: list[SendSummary], now: datetime, days: int
) -> ComplaintRate:
    """Complaints received in the last ``days`` days over messages accepted by the sends (of
    ``sends``, with their states) started in the same window: the bulk-sender guideline's ratio
    (Gmail Postmaster Tools shows it per day)."""
    since = now - timedelta(days=days)
    complaints = session.scalar(
        select(func.count())
        .select_from(FeedbackEvent)
        .where(FeedbackEvent.kind == "complaint", FeedbackEvent.occurred_at >= since)
    )
    sent = sum(s.states.get("sent", 0) for s in sends if (s.started_at or s.created_at) >= since)
    return ComplaintRate(int(complaints or 0), sent)


def unsubscribe_latency(session: Session, now: datetime, days: int) -> UnsubscribeLatency:
    """For each unsubscribe request of the last ``days`` days: seconds until the subscriber was
    unsubscribed (or suppressed), or the age of a request still not honoured."""
    rows = session.execute(
        select(FeedbackEvent.occurred_at, Subscriber.unsubscribed_at, Subscriber.status)
        .join(Subscriber, Subscriber.id == FeedbackEvent.subscriber_id, isouter=True)
        .where(
            FeedbackEvent.kind == "unsubscribe",
            FeedbackEvent.occurred_at >= now - timedelta(days=days),
        )
    ).all()
    honoured: list[float] = []
    open_ages: list[float] = []
    for requested, done, status in rows:
        if status in ("unsubscribed", "suppressed") and done is not None:
            honoured.append(max((done - requested).total_seconds(), 0.0))
        elif status is None:  # the subscriber was erased: nothing left to mail
            honoured.append(0.0)
        else:
            open_ages.append((now - requested).total_seconds())
    return UnsubscribeLatency(len(rows), honoured, open_ages)


def signups_per_day(session: Session, now: datetime, days: int) -> list[SignupDay]:
    """Signups (consent records) per UTC day of the last ``days`` days and how many confirmed."""
    day = _day(session, Consent.signed_up_at)
    rows = session.execute(
        select(day, func.count(), func.count(Consent.confirmed_at))
        .where(Consent.signed_up_at >= now - timedelta(days=days))
        .group_by(day)
        .order_by(day)
    ).all()
    counts = {str(d): (int(n), int(c)) for d, n, c in rows}
    first = (now - timedelta(days=days - 1)).date()
    out = []
    for offset in range(days):
        current = first + timedelta(days=offset)
        signups, confirmed = counts.get(current.isoformat(), (0, 0))
        out.append(SignupDay(current, signups, confirmed))
    return out


def bounce_reasons(
    session: Session, now: datetime, days: int, limit: int = 10
) -> list[tuple[str, str, int]]:
    """The most frequent (kind, reason) of bounces in the last ``days`` days."""
    rows = session.execute(
        select(FeedbackEvent.kind, FeedbackEvent.reason, func.count())
        .where(
            FeedbackEvent.kind.in_(BOUNCE_KINDS),
            FeedbackEvent.occurred_at >= now - timedelta(days=days),
        )
        .group_by(FeedbackEvent.kind, FeedbackEvent.reason)
        .order_by(func.count().desc())
        .limit(limit)
    ).all()
    return [(kind, reason or "unclassified", int(n)) for kind, reason, n in rows]


def overview(
    session: Session, now: datetime, send_id: int | None = None, days: int = 30
) -> Overview:
    """The whole dashboard: recent sends, the detail of ``send_id`` (default: the newest send
    that has deliveries), and the window's complaint rate, unsubscribe latency, signups and
    bounce reasons. Raises nothing for an empty database."""
    if send_id is None:  # the newest send that has started
        send_id = session.scalar(
            select(func.max(Send.id)).where(Send.status != SendStatus.SCHEDULED)
        ) or session.scalar(select(func.max(Send.id)))
    sends = recent_sends(session, skip=send_id)
    summary = next((s for s in sends if s.id == send_id), None)
    if summary is None and send_id is not None:
        summary = _one_send(session, send_id)
    if summary is not None and not summary.states:
        # one scan for both: the funnel rows add up to the send's states
        for _, _, state, count in _funnel_rows(session, summary):
            summary.states[state] = summary.states.get(state, 0) + count
    return Overview(
        now=now,
        window_days=days,
        sends=sends,
        selected=send_report(session, summary, now) if summary else None,
        complaints=complaint_rate(session, sends, now, days),
        unsubscribes=unsubscribe_latency(session, now, days),
        signups=signups_per_day(session, now, days),
        bounce_reasons=bounce_reasons(session, now, days),
    )


def _one_send(session: Session, send_id: int) -> SendSummary | None:
    row = session.execute(
        select(Send, Edition.key)
        .join(Edition, Edition.id == Send.edition_id)
        .where(Send.id == send_id)
    ).first()
    if row is None:
        return None
    send, key = row
    states = session.execute(
        select(Delivery.state, func.count())
        .where(Delivery.send_id == send_id)
        .group_by(Delivery.state)
    ).all()
    return SendSummary(
        send.id, key, send.status, send.created_at, send.started_at, send.finished_at,
        {state: int(n) for state, n in states},
    )  # fmt: skip


class LedgerCollector:
    """A Prometheus collector for ``/metrics``: deliveries per state of the active sends (planning,
    sending, paused), read from the ledger at scrape time. Gauges, since they go down too."""

    def __init__(self, session_factory: Any) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        active = (SendStatus.PLANNING, SendStatus.SENDING, SendStatus.PAUSED)
        with self.session_factory() as session:
            sends = session.scalar(
                select(func.count()).select_from(Send).where(Send.status.in_(active))
            )
            rows = session.execute(
                select(Delivery.state, func.count())
                .join(Send, Send.id == Delivery.send_id)
                .where(Send.status.in_(active))
                .group_by(Delivery.state)
            ).all()
        yield GaugeMetricFamily(
            "newsletter_active_sends", "Sends planning, sending or paused.", value=sends or 0
        )
        family = GaugeMetricFamily(
            "newsletter_active_send_deliveries",
            "Deliveries of the active sends by state, from the ledger at scrape time.",
            labels=["state"],
        )
        for state, count in rows:
            family.add_metric([state], int(count))
        yield family


__all__ = [
    "COMPLAINT_LIMIT",
    "COMPLAINT_WARN",
    "UNSUBSCRIBE_DEADLINE",
    "ComplaintRate",
    "Funnel",
    "LedgerCollector",
    "Overview",
    "SendReport",
    "SendSummary",
    "SignupDay",
    "UnsubscribeLatency",
    "bounce_reasons",
    "complaint_rate",
    "overview",
    "rate_bucket",
    "recent_sends",
    "send_report",
    "signups_per_day",
    "unsubscribe_latency",
]
