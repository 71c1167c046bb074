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

from sqlalchemy import ColumnElement, Integer, and_, cast, func, select
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
    def complaint_rate(self) -> float | None:
        """Complaints per message accepted by the relay; None before anything was sent."""
        sent = self["sent"]
        return self["complained"] / sent if sent else None


@dataclass
class SendSummary:
    """One send with its totals (the send list and ``newsletter status``)."""

    id: int
    edition_key: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    states: dict[str, int]

    @property
    def planned(self) -> int:
        return sum(self.states.values())

    @property
    def done(self) -> int:
        """Deliveries with a final outcome (not queued, sending or deferred)."""
        return self.planned - sum(self.states.get(s, 0) for s in ("queued", "sending", "deferred"))


@dataclass
class SendReport:
    """The detail of one send: funnels, send rate, bounce reasons."""

    summary: SendSummary
    total: Funnel
    by_language: list[tuple[str, Funnel]]
    by_domain: list[tuple[str, Funnel]]  # the top domains by planned, then "other"
    rate_bucket_seconds: int
    rate: list[tuple[datetime, int]]  # (bucket start, messages accepted by the relay)
    bounce_reasons: list[tuple[str, str, int]]  # (kind, reason, deliveries)


@dataclass
class ComplaintRate:
    complaints: int
    sent: int

    @property
    def rate(self) -> float | None:
        return self.complaints / self.sent if self.sent else None

    @property
    def level(self) -> str:
        """``ok`` below 0.1 %, ``warn`` from 0.1 %, ``bad`` from 0.3 %; ``none`` if nothing sent."""
        rate = self.rate
        if rate is None:
            return "none"
        return "bad" if rate >= COMPLAINT_LIMIT else "warn" if rate >= COMPLAINT_WARN else "ok"


@dataclass
class UnsubscribeLatency:
    """Time from unsubscribe requests to their effect, in seconds, over a window."""

    requests: int
    honoured: list[float]
    open_ages: list[float]  # requests not (yet) honoured: their age

    def percentile(self, p: float) -> float | None:
        if not self.honoured:
            return None
        ordered = sorted(self.honoured)
        return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]

    @property
    def late(self) -> int:
        """Requests honoured after, or still open beyond, the 48-hour deadline."""
        limit = UNSUBSCRIBE_DEADLINE.total_seconds()
        return sum(1 for s in self.honoured if s > limit) + sum(
            1 for s in self.open_ages if s > limit
        )


@dataclass
class SignupDay:
    day: date
    signups: int
    confirmed: int

    @property
    def confirmation_rate(self) -> float | None:
        return self.confirmed / self.signups if self.signups else None


@dataclass
class Overview:
    """Everything the dashboard page shows."""

    now: datetime
    window_days: int
    sends: list[SendSummary]
    selected: SendReport | None
    complaints: ComplaintRate
    unsubscribes: UnsubscribeLatency
    signups: list[SignupDay]
    bounce_reasons: list[tuple[str, str, int]]


# --- queries --------------------------------------------------------------------------------------


def recent_sends(session: Session, limit: int = 10) -> list[SendSummary]:
    """The ``limit`` newest sends with their deliveries per state (newest first)."""
    rows = session.execute(
        select(Send, Edition.key)
        .join(Edition, Edition.id == Send.edition_id)
        .order_by(Send.id.desc())
        .limit(limit)
    ).all()
    if not rows:
        return []
    states: dict[int, dict[str, int]] = defaultdict(dict)
    for send_id, state, count in session.execute(
        select(Delivery.send_id, Delivery.state, func.count())
        .where(Delivery.send_id.in_([send.id for send, _ in rows]))
        .group_by(Delivery.send_id, Delivery.state)
    ):
        states[send_id][state] = int(count)
    return [
        SendSummary(
            send.id,
            key,
            send.status,
            send.created_at,
            send.started_at,
            send.finished_at,
            states.get(send.id, {}),
        )
        for send, key in rows
    ]


def send_report(session: Session, summary: SendSummary, now: datetime) -> SendReport:
    """Funnels, rate and bounce reasons of one send (see the module docstring for attribution)."""
    by_language: dict[str, Funnel] = defaultdict(Funnel)
    by_domain: dict[str, Funnel] = defaultdict(Funnel)
    for language, domain, state, count in session.execute(
        select(Delivery.language, Delivery.domain, Delivery.state, func.count())
        .where(Delivery.send_id == summary.id)
        .group_by(Delivery.language, Delivery.domain, Delivery.state)
    ):
        for funnel in (by_language[language], by_domain[domain]):
            funnel.add("planned", int(count))
            funnel.add(_STATE_COLUMN.get(state, "queued"), int(count))
    reasons: dict[tuple[str, str], int] = defaultdict(int)
    counted: set[tuple[int, str | None]] = set()
    for delivery_id, language, domain, column, kind, reason in _attributed_feedback(session, summary):
        if column is not None and (delivery_id, column) not in counted:
            counted.add((delivery_id, column))
            by_language[language].add(column)
            by_domain[domain].add(column)
        if kind in BOUNCE_KINDS:
            reasons[(kind, reason or "unclassified")] += 1
    total = Funnel()
    for funnel in by_language.values():
        total.merge(funnel)
    bucket, rate = _send_rate(session, summary, now)
    return SendReport(
        summary=summary,
        total=total,
        by_language=sorted(by_language.items(), key=lambda item: -item[1]["planned"]),
        by_domain=_top_domains(by_domain),
        rate_bucket_seconds=bucket,
        rate=rate,
        bounce_reasons=sorted(((k, r, n) for (k, r), n in reasons.items()), key=lambda x: -x[2])[
            :10
        ],
    )


def _attributed_feedback(
    session: Session, summary: SendSummary
) -> Iterable[tuple[int, str, str, str | None, str, str | None]]:
    """(delivery id, language, domain, funnel column or None, kind, reason) once per delivery
    and kind."""
    since = summary.started_at or summary.created_at
    direct = session.execute(
        select(
            Delivery.id,
            Delivery.language,
            Delivery.domain,
            FeedbackEvent.kind,
            FeedbackEvent.source,
            FeedbackEvent.reason,
        )
        .join(Delivery, Delivery.id == FeedbackEvent.delivery_id)
        .where(
            FeedbackEvent.kind.in_(FUNNEL_KINDS),
            FeedbackEvent.occurred_at >= since,
            Delivery.send_id == summary.id,
        )
    ).all()
    later = aliased(Delivery)
    newer_delivery = (
        select(later.id)
        .where(
            later.subscriber_id == Delivery.subscriber_id,
            later.sent_at > Delivery.sent_at,
            later.sent_at <= FeedbackEvent.occurred_at,
        )
        .exists()
    )
    by_subscriber = session.execute(
        select(
            Delivery.id,
            Delivery.language,
            Delivery.domain,
            FeedbackEvent.kind,
            FeedbackEvent.source,
            FeedbackEvent.reason,
        )
        .join(
            Delivery,
            and_(
                Delivery.subscriber_id == FeedbackEvent.subscriber_id,
                Delivery.send_id == summary.id,
            ),
        )
        .where(
            FeedbackEvent.kind.in_(("complaint", "unsubscribe")),
            FeedbackEvent.delivery_id.is_(None),
            FeedbackEvent.occurred_at >= since,
            Delivery.sent_at <= FeedbackEvent.occurred_at,
            ~newer_delivery,
        )
    ).all()
    seen: set[tuple[int, str]] = set()
    for delivery_id, language, domain, kind, source, reason in [*direct, *by_subscriber]:
        column = _feedback_column(kind, source)
        if (delivery_id, kind) in seen:
            continue
        seen.add((delivery_id, kind))
        yield delivery_id, language, domain, column, kind, reason


def _feedback_column(kind: str, source: str) -> str | None:
    if kind == "complaint":
        return "complained"
    if kind == "unsubscribe":
        return "unsubscribed"
    if kind in BOUNCE_KINDS and source != "smtp":
        return "bounced"
    return None


def _top_domains(by_domain: dict[str, Funnel]) -> list[tuple[str, Funnel]]:
    ranked = sorted(by_domain.items(), key=lambda item: (-item[1]["planned"], item[0]))
    top = ranked[:TOP_DOMAINS]
    if len(ranked) > TOP_DOMAINS:
        other = Funnel()
        for _, funnel in ranked[TOP_DOMAINS:]:
            other.merge(funnel)
        top.append((f"{len(ranked) - TOP_DOMAINS} other domains", other))
    return top


_NICE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400)


def rate_bucket(seconds: float, max_buckets: int = 60) -> int:
    """The smallest round bucket width (s) that shows ``seconds`` in at most ``max_buckets``."""
    for width in _NICE_BUCKETS:
        if seconds / width <= max_buckets:
            return width
    return _NICE_BUCKETS[-1]


def _send_rate(
    session: Session, summary: SendSummary, now: datetime
) -> tuple[int, list[tuple[datetime, int]]]:
    start = summary.started_at or summary.created_at
    width = rate_bucket(((summary.finished_at or now) - start).total_seconds())
    bucket = _epoch_bucket(session, Delivery.sent_at, width)
    rows = session.execute(
        select(bucket, func.count())
        .where(Delivery.send_id == summary.id, Delivery.state == "sent")
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    return width, [
        (datetime.fromtimestamp(int(b), tz=UTC), int(n)) for b, n in rows if b is not None
    ]


def _epoch_bucket(session: Session, column: Any, width: int) -> ColumnElement[Any]:
    """Unix time of ``column`` rounded down to ``width`` seconds, in SQL (UTC on both databases)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / width) * width, Integer)
    return cast(func.strftime("%s", column), Integer) / width * width


def _day(session: Session, column: Any) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


def complaint_rate(
    session: Session, sends: list[SendSummary], now: datetime, days: int
) -> ComplaintRate:
    """Complaints received in the last ``days`` days over messages accepted by sends started in
    the same window (the bulk-sender guideline's ratio; Gmail Postmaster Tools shows it daily)."""
    since = now - timedelta(days=days)
    complaints = session.scalar(
        select(func.count())
        .select_from(FeedbackEvent)
        .where(FeedbackEvent.kind == "complaint", FeedbackEvent.occurred_at >= since)
    )
    in_window = [s.id for s in sends if (s.started_at or s.created_at) >= since]
    sent = 0
    if in_window:
        sent = (
            session.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.send_id.in_(in_window), Delivery.state == "sent")
            )
            or 0
        )
    return ComplaintRate(int(complaints or 0), int(sent))


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
    sends = recent_sends(session)
    summary = next((s for s in sends if s.id == send_id), None)
    if summary is None and send_id is not None:
        summary = _one_send(session, send_id)
    if summary is None:
        summary = next((s for s in sends if s.planned), sends[0] if sends else None)
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
    states = dict(
        session.execute(
            select(Delivery.state, func.count())
            .where(Delivery.send_id == send_id)
            .group_by(Delivery.state)
        ).all()
    )
    return SendSummary(
        send.id,
        key,
        send.status,
        send.created_at,
        send.started_at,
        send.finished_at,
        {k: int(v) for k, v in states.items()},
    )


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
