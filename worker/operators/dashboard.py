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

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from worker.feedback.classification import BOUNCE_KINDS as FEEDBACK_BOUNCE_KINDS
from worker.models import Consent, Delivery, Edition, FeedbackEvent, Send, SendTally, Subscriber
from worker.operators.snapshots import remembered, store, stored
from worker.states import DeliveryState, SendStatus, SubscriberStatus
from worker.subscriptions.imports import IMPORT_METHODS

log = logging.getLogger(__name__)

COMPLAINT_WARN = 0.001  # 0.1 %: Gmail/Yahoo bulk-sender guideline, keep below
COMPLAINT_LIMIT = 0.003  # 0.3 %: never reach (delivery suffers, mitigation is refused)
UNSUBSCRIBE_DEADLINE = timedelta(hours=48)  # honour unsubscribes within two days
BOUNCE_KINDS = tuple(kind.value for kind in FEEDBACK_BOUNCE_KINDS)  # plain strings for SQL and HTML
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
    """One send with its deliveries per state (the send list and ``newsletter status``)."""

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
        """The ``p`` quantile (0–1, nearest rank) of the honoured requests' delays, in seconds."""
        if not self.honoured:
            return None
        ordered = sorted(self.honoured)
        return ordered[min(len(ordered) - 1, max(math.ceil(p * len(ordered)) - 1, 0))]

    @property
    def late(self) -> int:
        """Requests honoured after, or still open beyond, the 48-hour deadline."""
        limit = UNSUBSCRIBE_DEADLINE.total_seconds()
        late = sum(1 for s in self.honoured if s > limit)
        return late + sum(1 for s in self.open_ages if s > limit)


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
    confirmation_failures: list[tuple[str, int]]  # (reply code and status, subscribers)
    readers: Readers = field(default_factory=lambda: Readers({}, {}))
    # the oldest moment the numbers shown were counted at (``worker.operators.snapshots``);
    # ``now`` when everything was counted for this view
    as_of: datetime | None = None


@dataclass(frozen=True)
class Readers:
    """The roster's numbers (what ``newsletter subscribers count --by status --by language`` and
    ``--by source`` print): readers per (status, language) and per source."""

    by_status_language: dict[tuple[str, str], int]
    by_source: dict[str, int]

    @property
    def languages(self) -> list[str]:
        return sorted({language for _, language in self.by_status_language})

    @property
    def statuses(self) -> list[str]:
        present = {status for status, _ in self.by_status_language}
        return [s.value for s in SubscriberStatus if s.value in present]

    def total(self, status: str | None = None, language: str | None = None) -> int:
        return sum(
            n
            for (s, lang), n in self.by_status_language.items()
            if status in (None, s) and language in (None, lang)
        )


def readers(session: Session) -> Readers:
    """Readers by status × language and by source, as ``worker.subscriptions.roster.count``
    gives them: one index-only GROUP BY over ``ix_subscriber_status_language``, and the sources
    from the import consents alone (index-only over ``ix_consent_method_source``): a reader with
    no import consent is a ``signup``, so the subscribers are not joined to their consents one
    by one (1M readers: a second)."""
    grid = {
        (str(status), language): int(n)
        for status, language, n in session.execute(
            select(Subscriber.status, Subscriber.language, func.count()).group_by(
                Subscriber.status, Subscriber.language
            )
        )
    }  # ``count(*)``, not roster's ``count(id)``: the index alone answers it
    imports = (
        select(Consent.source, Consent.subscriber_id)
        .where(Consent.method.in_(IMPORT_METHODS))
        .subquery()
    )
    sources: dict[str, int] = defaultdict(int)
    for source, pairs in session.execute(
        select(imports.c.source, func.count()).group_by(imports.c.source)
    ):
        sources[source if source is not None else "signup"] += int(pairs)
    imported = (
        session.scalar(select(func.count(func.distinct(imports.c.subscriber_id)))) if sources else 0
    )
    if (others := sum(grid.values()) - int(imported or 0)) > 0:
        sources["signup"] += others
    return Readers(
        dict(sorted(grid.items(), key=lambda item: (-item[1], item[0]))),
        dict(sorted(sources.items(), key=lambda item: (-item[1], item[0]))),
    )


# --- remembering what cannot change ---

FINAL_STATUSES = (SendStatus.FINISHED, SendStatus.CANCELLED)
SETTLE = timedelta(seconds=120)  # a ledger row is committed within this long after its timestamp
SHARE_EVERY = timedelta(minutes=10)  # a process refreshes a stored settled part this often

_FeedbackRow = tuple[int, str, str, str, str, "str | None", datetime]


class _SendCache:
    """Per-process memory of what the ledger can no longer change, so that a 1M-delivery send
    is aggregated once, not on every page view: the delivery counts of sends in a final status
    (finished, cancelled), the per-second sent counts of seconds older than ``SETTLE``, and the
    attributed feedback recorded more than ``SETTLE`` ago.

    Keys carry the database URL, and for final sends their status and ``finished_at``: a send
    that changes (``retry-unknown`` reopens a finished send) gets a new key. Bounded: the oldest
    entries go first.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.funnels: dict[tuple[Any, ...], Counts] = {}
        self.states: dict[tuple[Any, ...], dict[str, int]] = {}
        self.rates: dict[tuple[Any, ...], tuple[datetime | None, dict[int, int]]] = {}
        self.feedback: dict[tuple[Any, ...], tuple[datetime, _FeedbackCounts]] = {}
        # when this process last stored a settled part in ``dashboard_snapshot``, per key
        self.shared: dict[tuple[Any, ...], datetime] = {}

    def put(self, table: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > self.size:
            del table[next(iter(table))]

    def clear(self) -> None:
        for table in (self.funnels, self.states, self.rates, self.feedback, self.shared):
            table.clear()

    def share_due(self, key: tuple[Any, ...], boundary: datetime) -> bool:
        """Whether the settled part under ``key`` (up to ``boundary``) is to be stored for
        other processes: on this process's first count of it, then every ``SHARE_EVERY``."""
        last = self.shared.get(key)
        if last is not None and boundary - last < SHARE_EVERY:
            return False
        self.put(self.shared, key, boundary)
        return True


_cache = _SendCache()


def _final_key(session: Session, send: Send | SendSummary) -> tuple[Any, ...] | None:
    if send.status not in FINAL_STATUSES:
        return None
    return (str(session.get_bind().engine.url), send.id, send.status, send.finished_at)


# --- queries ---


@dataclass
class Counts:
    """A send's deliveries per state, per language and state, and per recipient domain and
    state (the funnel before feedback is attributed)."""

    states: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, dict[str, int]] = field(default_factory=dict)
    by_domain: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, language: str, domain: str, state: str, n: int) -> None:
        for table, key in ((self.by_language, language), (self.by_domain, domain)):
            row = table.setdefault(key, {})
            row[state] = row.get(state, 0) + n
        self.states[state] = self.states.get(state, 0) + n


def recent_sends(session: Session, limit: int = 10, skip: int | None = None) -> list[SendSummary]:
    """The ``limit`` newest sends with their deliveries per state (newest first); the states of
    send ``skip`` are left empty when it is not final (the caller derives them otherwise).

    A final send's states come from this process's memory or its ``SendTally`` row when it has
    one; the others are counted from the ledger (one GROUP BY for all of them)."""
    rows = session.execute(
        select(Send, Edition.key)
        .join(Edition, Edition.id == Send.edition_id)
        .order_by(Send.id.desc())
        .limit(limit)
    ).all()
    states: dict[int, dict[str, int]] = {}
    for send, _ in rows:
        key = _final_key(session, send)
        if key is not None and key in _cache.states:
            states[send.id] = _cache.states[key]
    final = [send for send, _ in rows if send.id not in states and send.status in FINAL_STATUSES]
    for send_id, counts in _stored_tallies(session, final).items():
        states[send_id] = counts.states
    missing = [
        send.id
        for send, _ in rows
        if send.id not in states and (send.id != skip or send.status in FINAL_STATUSES)
    ]
    if missing:
        for send_id, state, count in session.execute(
            select(Delivery.send_id, Delivery.state, func.count())
            .where(Delivery.send_id.in_(missing))
            .group_by(Delivery.send_id, Delivery.state)
        ):
            states.setdefault(send_id, {})[state] = int(count)
    out = []
    for send, edition_key in rows:
        key = _final_key(session, send)
        if key is not None:
            _cache.put(_cache.states, key, states.get(send.id, {}))
        out.append(
            SendSummary(
                send.id, edition_key, send.status, send.created_at, send.started_at,
                send.finished_at, dict(states.get(send.id, {})),
            )
        )  # fmt: skip
    return out


def _stored_tallies(session: Session, sends: list[Send]) -> dict[int, Counts]:
    """The ``SendTally`` of each of the final ``sends`` that has a valid one (counted at the
    send's current status and ``finished_at``), remembered in this process; one query."""
    if not sends:
        return {}
    wanted = {send.id: send for send in sends}
    out: dict[int, Counts] = {}
    for tally in session.scalars(select(SendTally).where(SendTally.send_id.in_(list(wanted)))):
        send = wanted[tally.send_id]
        if tally.status != send.status or tally.finished_at != send.finished_at:
            continue  # reopened and final again since: counted anew by ``_final_counts``
        counts = Counts(dict(tally.tally["states"]), tally.tally["language"], tally.tally["domain"])
        key = _final_key(session, send)
        if key is not None:
            _cache.put(_cache.funnels, key, counts)
            rate = {int(second): int(n) for second, n in tally.tally["sent_per_second"].items()}
            _cache.put(_cache.rates, _rate_key(session, send), (None, rate))
        out[send.id] = counts
    return out


def _count(session: Session, summary: SendSummary) -> Counts:
    """The send's (language, domain, state) counts from the ledger: one index-only scan of
    ``ix_delivery_send_funnel``."""
    counts = Counts()
    for language, domain, state, n in session.execute(
        select(Delivery.language, Delivery.domain, Delivery.state, func.count())
        .where(Delivery.send_id == summary.id)
        .group_by(Delivery.language, Delivery.domain, Delivery.state)
    ):
        counts.add(language, domain, str(state), int(n))
    return counts


def _funnel_counts(session: Session, summary: SendSummary, now: datetime) -> Counts:
    """The send's counts. A final send's are read once: from this process's memory, else from
    its ``SendTally``, else counted and, once the send has been final for ``SETTLE`` (a batch
    in flight when it was cancelled has recorded its outcome), stored as its ``SendTally``."""
    key = _final_key(session, summary)
    if key is None:
        return _count(session, summary)
    if key in _cache.funnels:
        return _cache.funnels[key]
    send = session.get(Send, summary.id)
    if send is not None and send.status == summary.status:
        stored = _stored_tallies(session, [send])
        if summary.id in stored:
            return stored[summary.id]
    counts = _count(session, summary)
    _cache.put(_cache.funnels, key, counts)
    if summary.finished_at is not None and summary.finished_at + SETTLE < now:
        _store_tally(session, summary, counts, now)
    return counts


def _store_tally(session: Session, summary: SendSummary, counts: Counts, now: datetime) -> None:
    """Write the final send's ``SendTally`` (its counts and its messages per second) in a
    transaction of its own. A concurrent view that stored it first wins; a database that
    refuses the write is logged; nothing is raised."""
    rate = _sent_per_second(session, summary, now)
    tally = {
        "states": counts.states,
        "language": counts.by_language,
        "domain": counts.by_domain,
        "sent_per_second": {str(second): n for second, n in rate.items()},
    }
    session.commit()  # what was read so far is read; the tally gets its own transaction
    try:
        session.execute(delete(SendTally).where(SendTally.send_id == summary.id))
        session.add(
            SendTally(
                send_id=summary.id,
                status=summary.status,
                finished_at=summary.finished_at,
                tally=tally,
                counted_at=now,
            )
        )
        session.commit()
    except SQLAlchemyError as exc:
        # another process stored the same tally at the same moment, or the dashboard's database
        # user may only read: the page is shown all the same, counted from the ledger
        session.rollback()
        if not isinstance(exc, IntegrityError):
            log.warning("send %s: tally not stored: %s", summary.id, type(exc).__name__)


def send_report(
    session: Session, summary: SendSummary, now: datetime, counts: Counts | None = None
) -> SendReport:
    """Funnels, rate and bounce reasons of one send (see the module docstring for attribution).
    ``counts``: the send's ``Counts``, if the caller has them."""
    by_language: dict[str, Funnel] = defaultdict(Funnel)
    by_domain: dict[str, Funnel] = defaultdict(Funnel)
    if counts is None:
        counts = _funnel_counts(session, summary, now)
    for table, funnels in ((counts.by_language, by_language), (counts.by_domain, by_domain)):
        for name, states in table.items():
            funnels[name] = _funnel_of(states)
    feedback = _attributed_feedback(session, summary, now)
    for table, funnels in ((feedback.by_language, by_language), (feedback.by_domain, by_domain)):
        for name, columns in table.items():
            for column, n in columns.items():
                funnels[name].add(column, n)
    reasons = feedback.reasons
    total = Funnel()
    for funnel in by_language.values():
        total.merge(funnel)
    bucket, rate = _send_rate(session, summary, now)
    ranked = sorted(((k, r, n) for (k, r), n in reasons.items()), key=lambda x: (-x[2], x[0], x[1]))
    return SendReport(
        summary=summary,
        total=total,
        by_language=sorted(by_language.items(), key=lambda item: -item[1]["planned"]),
        by_domain=_top_domains(by_domain),
        rate_bucket_seconds=bucket,
        rate=rate,
        bounce_reasons=ranked[:10],
    )


def _funnel_of(states: dict[str, int]) -> Funnel:
    """The funnel of deliveries counted per state (before feedback)."""
    counts = dict.fromkeys(FUNNEL_COLUMNS, 0)
    for state, n in states.items():
        counts["planned"] += n
        column = _STATE_COLUMN.get(state, "queued")
        counts[column] = counts.get(column, 0) + n
    return Funnel(counts)


@dataclass
class _FeedbackCounts:
    """Feedback attributed to a send's deliveries, counted once per delivery and kind: the
    funnel columns it adds per language and per domain, and the bounces per (kind, reason)."""

    # delivery ids per kind, and per funnel column (sets of ints: a stored copy loads in
    # milliseconds, where a set of (id, kind) tuples took a third of a second for 28,800 rows)
    seen: dict[str, set[int]] = field(default_factory=dict)
    counted: dict[str, set[int]] = field(default_factory=dict)
    by_language: dict[str, dict[str, int]] = field(default_factory=dict)
    by_domain: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, row: _FeedbackRow) -> None:
        delivery_id, language, domain, kind, source, reason, _ = row
        seen = self.seen.setdefault(kind, set())
        if delivery_id in seen:
            return
        seen.add(delivery_id)
        column = _feedback_column(kind, source)
        counted = self.counted.setdefault(column, set()) if column is not None else set()
        if column is not None and delivery_id not in counted:
            counted.add(delivery_id)
            for table, name in ((self.by_language, language), (self.by_domain, domain)):
                columns = table.setdefault(name, {})
                columns[column] = columns.get(column, 0) + 1
        if kind in BOUNCE_KINDS:
            key = (kind, reason or "unclassified")
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def copy(self) -> _FeedbackCounts:
        return _FeedbackCounts(
            {kind: set(ids) for kind, ids in self.seen.items()},
            {column: set(ids) for column, ids in self.counted.items()},
            {name: dict(columns) for name, columns in self.by_language.items()},
            {name: dict(columns) for name, columns in self.by_domain.items()},
            dict(self.reasons),
        )


def _attributed_feedback(session: Session, summary: SendSummary, now: datetime) -> _FeedbackCounts:
    """The feedback attributed to the send's deliveries (see the module docstring). What was
    recorded more than ``SETTLE`` ago is remembered per send, already counted, so a page view
    reads and counts only the feedback that arrived since the previous one."""
    key = (str(session.get_bind().engine.url), summary.id, summary.created_at)
    shared = f"feedback:{summary.id}:{summary.created_at.timestamp():.0f}"
    if key not in _cache.feedback and (loaded := stored(session, shared)) is not None:
        _cache.put(_cache.feedback, key, _load_feedback(loaded))  # counted by another process
        _cache.put(_cache.shared, ("feedback", *key), _cache.feedback[key][0])
    settled, remembered = _cache.feedback.get(key, (None, _FeedbackCounts()))
    fresh = _feedback_rows(session, summary, settled)
    boundary = (now - SETTLE).replace(microsecond=0)
    later = [row for row in fresh if row[6] >= boundary]
    if len(later) < len(fresh):
        remembered = remembered.copy()  # the cached one may be in use by another view
        for row in fresh:
            if row[6] < boundary:
                remembered.add(row)
    _cache.put(_cache.feedback, key, (boundary, remembered))
    if _cache.share_due(("feedback", *key), boundary):
        store(session, shared, now, _dump_feedback(boundary, remembered))
    if not later:
        return remembered
    view = remembered.copy()
    for row in later:
        view.add(row)
    return view


def _dump_feedback(settled: datetime, counts: _FeedbackCounts) -> dict[str, Any]:
    return {
        "settled": settled.isoformat(),
        "seen": {kind: sorted(ids) for kind, ids in counts.seen.items()},
        "counted": {column: sorted(ids) for column, ids in counts.counted.items()},
        "language": counts.by_language,
        "domain": counts.by_domain,
        "reasons": [[kind, reason, n] for (kind, reason), n in counts.reasons.items()],
    }


def _load_feedback(value: dict[str, Any]) -> tuple[datetime, _FeedbackCounts]:
    return datetime.fromisoformat(value["settled"]), _FeedbackCounts(
        {str(kind): set(ids) for kind, ids in value["seen"].items()},
        {str(column): set(ids) for column, ids in value["counted"].items()},
        value["language"],
        value["domain"],
        {(str(k), str(r)): int(n) for k, r, n in value["reasons"]},
    )


def _feedback_rows(
    session: Session, summary: SendSummary, recorded_since: datetime | None
) -> list[_FeedbackRow]:
    """Feedback about the send's deliveries: linked by delivery id, or (complaints and
    unsubscribes that name only the subscriber) by the last delivery sent before the event."""
    since = summary.started_at or summary.created_at
    columns = (
        Delivery.id, Delivery.language, Delivery.domain, FeedbackEvent.kind,
        FeedbackEvent.source, FeedbackEvent.reason, FeedbackEvent.recorded_at,
    )  # fmt: skip
    recent = (FeedbackEvent.recorded_at >= recorded_since,) if recorded_since is not None else ()
    direct = session.execute(
        select(*columns)
        .join(Delivery, Delivery.id == FeedbackEvent.delivery_id)
        .where(
            FeedbackEvent.kind.in_(FUNNEL_KINDS),
            FeedbackEvent.occurred_at >= since,
            Delivery.send_id == summary.id,
            *recent,
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
        select(*columns)
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
            *recent,
        )
    ).all()
    return [tuple(row) for row in [*direct, *by_subscriber]]  # type: ignore[misc]


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
    buckets: dict[int, int] = defaultdict(int)
    for second, count in _sent_per_second(session, summary, now).items():
        buckets[second // width * width] += count
    return width, [(datetime.fromtimestamp(b, tz=UTC), n) for b, n in sorted(buckets.items())]


def _sent_per_second(session: Session, summary: SendSummary, now: datetime) -> dict[int, int]:
    """Messages accepted per second (Unix time), reading only the seconds not yet remembered:
    a range scan of ``ix_delivery_send_state_sent_at`` from the last settled second."""
    key = _rate_key(session, summary)
    finished_ts = f"{summary.finished_at.timestamp():.0f}" if summary.finished_at else "-"
    shared = f"rate:{summary.id}:{summary.created_at.timestamp():.0f}:{finished_ts}"
    if key not in _cache.rates and (loaded := stored(session, shared)) is not None:
        seconds = {int(second): int(n) for second, n in loaded["seconds"].items()}
        settled_at = datetime.fromisoformat(loaded["settled"])
        _cache.put(_cache.rates, key, (settled_at, seconds))
        _cache.put(_cache.shared, ("rate", *key), settled_at)
    settled, counts = _cache.rates.get(key, (None, {}))
    finished = summary.finished_at
    if key in _cache.rates and settled is None:
        return counts  # from the send's ``SendTally``: final, nothing can arrive any more
    if settled is not None and finished is not None and settled > finished + SETTLE:
        return counts  # finished long enough ago: nothing can arrive any more
    second = _second(session, Delivery.sent_at)
    query = select(second, func.count()).where(
        Delivery.send_id == summary.id, Delivery.state == "sent"
    )
    if settled is not None:
        query = query.where(Delivery.sent_at >= settled)
    fresh: dict[int, int] = {}
    for value, count in session.execute(query.group_by(second)):
        if value is not None:
            fresh[_epoch(value)] = int(count)
    boundary = int(settled.timestamp()) if settled is not None else None
    merged = {s: n for s, n in counts.items() if boundary is None or s < boundary} | fresh
    settle_at = (now - SETTLE).replace(microsecond=0)
    _cache.put(_cache.rates, key, (settle_at, merged))
    if _cache.share_due(("rate", *key), settle_at):
        store(session, shared, now, {"settled": settle_at.isoformat(), "seconds": merged})
    return merged


def _rate_key(session: Session, send: Send | SendSummary) -> tuple[Any, ...]:
    return (str(session.get_bind().engine.url), send.id, send.created_at, send.finished_at)


def _second(session: Session, column: Any) -> ColumnElement[Any]:
    """``column`` truncated to the second, in SQL (cheaper than epoch arithmetic on PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("second", column)
    return func.strftime("%Y-%m-%d %H:%M:%S", column)


def _epoch(value: Any) -> int:
    if isinstance(value, str):  # SQLite: UTC without a zone
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return int(value.timestamp())


def _day(session: Session, column: Any) -> ColumnElement[Any]:
    """The UTC calendar day of ``column``, in SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)


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
    unsubscribed (or suppressed), or the age of a request still not honoured. A request is
    honoured once the reader left after it, even if the reader has since signed up again."""
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
        # honoured when the reader left on or after the request: a reader who has since signed
        # up again (confirmed, ``unsubscribed_at`` kept) had the request honoured all the same
        left = status in ("unsubscribed", "suppressed") or (done is not None and done >= requested)
        if left and done is not None:
            honoured.append(max((done - requested).total_seconds(), 0.0))
        elif status is None:  # the subscriber was erased: nothing left to mail
            honoured.append(0.0)
        else:
            open_ages.append((now - requested).total_seconds())
    return UnsubscribeLatency(len(rows), honoured, open_ages)


def signups_per_day(session: Session, now: datetime, days: int) -> list[SignupDay]:
    """Signups (consent records) per UTC day of the last ``days`` days and how many confirmed.
    Imported readers are no signups here: their consents (``IMPORT_METHODS``) are left out."""
    day = _day(session, Consent.signed_up_at)
    rows = session.execute(
        select(day, func.count(), func.count(Consent.confirmed_at))
        .where(
            Consent.signed_up_at >= now - timedelta(days=days),
            Consent.method.not_in(IMPORT_METHODS),
        )
        .group_by(day)  # no ORDER BY: a hash of 30 days, not a sort of every signup
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
    session: Session,
    now: datetime,
    send_id: int | None = None,
    days: int = 30,
    cache_seconds: float = 0,
) -> Overview:
    """The whole dashboard: recent sends, the detail of ``send_id`` (default: the newest send
    that has deliveries), and the window's complaint rate, unsubscribe latency, signups and
    bounce reasons. Raises nothing for an empty database.

    ``cache_seconds`` (``NEWSLETTER_DASHBOARD_CACHE_SECONDS``; 0: count everything now): the
    readers, signups per day, unsubscribe latency, bounce reasons and a live send's funnel may
    be that old (``worker.operators.snapshots``); ``Overview.as_of`` says how old they are."""
    counted: list[datetime] = [now]

    def kept(key: str, compute: Callable[[], Any], dump: Any, load: Any) -> Any:
        value, at = remembered(
            session, key, now=now, seconds=cache_seconds, compute=compute, dump=dump, load=load
        )
        counted.append(at)
        return value

    if send_id is None:  # the newest send that has started
        send_id = session.scalar(
            select(func.max(Send.id)).where(Send.status != SendStatus.SCHEDULED)
        ) or session.scalar(select(func.max(Send.id)))
    sends = recent_sends(session, skip=send_id)
    summary = next((s for s in sends if s.id == send_id), None)
    if summary is None and send_id is not None:
        summary = _one_send(session, send_id)
    if summary is None:
        counts = Counts()
    elif summary.status in FINAL_STATUSES:  # counted once: memory or its ``SendTally``
        counts = _funnel_counts(session, summary, now)
    else:
        live = summary
        counts = kept(f"funnel:{live.id}", lambda: _count(session, live), _dump_counts, _counts)
    if summary is not None and not summary.states:
        summary.states.update(counts.states)  # one scan for both: the funnel adds up to them
    unsubscribes = kept(
        f"unsubscribes:{days}",
        lambda: unsubscribe_latency(session, now, days),
        lambda u: [u.requests, u.honoured, u.open_ages],
        lambda v: UnsubscribeLatency(int(v[0]), list(v[1]), list(v[2])),
    )
    signups = kept(
        f"signups:{days}",
        lambda: signups_per_day(session, now, days),
        lambda days_: [[d.day.isoformat(), d.signups, d.confirmed] for d in days_],
        lambda v: [SignupDay(date.fromisoformat(d), int(n), int(c)) for d, n, c in v],
    )
    reasons = kept(
        f"bounces:{days}",
        lambda: bounce_reasons(session, now, days),
        lambda rows: [list(row) for row in rows],
        lambda v: [(str(k), str(r), int(n)) for k, r, n in v],
    )
    roster = kept(
        "readers",
        lambda: readers(session),
        lambda r: [[[s, lang, n] for (s, lang), n in r.by_status_language.items()], r.by_source],
        lambda v: Readers({(s, lang): int(n) for s, lang, n in v[0]}, dict(v[1])),
    )
    return Overview(
        now=now,
        window_days=days,
        sends=sends,
        selected=send_report(session, summary, now, counts) if summary else None,
        complaints=complaint_rate(session, sends, now, days),
        unsubscribes=unsubscribes,
        signups=signups,
        bounce_reasons=reasons,
        confirmation_failures=confirmation_failures(session, now, days),
        readers=roster,
        as_of=min(counted),
    )


def _dump_counts(counts: Counts) -> dict[str, Any]:
    return {"states": counts.states, "language": counts.by_language, "domain": counts.by_domain}


def _counts(value: dict[str, Any]) -> Counts:
    return Counts(dict(value["states"]), value["language"], value["domain"])


def confirmation_failures(session: Session, now: datetime, days: int) -> list[tuple[str, int]]:
    """Subscribers whose last confirmation mail the relay refused or deferred in the last
    ``days`` days, by reply code and enhanced status (``553 5.6.7``; RFC 5321 §4.2, RFC 3463),
    most frequent first. The rest of the reply stays out: it may name the address."""
    errors = session.scalars(
        select(Subscriber.confirmation_error).where(
            Subscriber.confirmation_failed_at >= now - timedelta(days=days),
            Subscriber.confirmation_error.is_not(None),
        )
    )
    counts: dict[str, int] = defaultdict(int)
    for error in errors:
        counts[" ".join((error or "").split()[:2]) or "no reply"] += 1
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


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


def send_detail(session: Session, send_id: int, now: datetime) -> SendReport | None:
    """The report of one send (what the dashboard shows for ``?send=``: its funnels per
    language and domain, rate, bounce reasons), or None for an unknown send."""
    summary = _one_send(session, send_id)
    if summary is None:
        return None
    counts = _funnel_counts(session, summary, now)
    return send_report(session, summary, now, counts)


class LedgerCollector:
    """A Prometheus collector for ``/metrics``: deliveries per state of the active sends (planning,
    sending, paused), read from the ledger at scrape time (gauges, since they go down too), and
    ``newsletter_ledger_up`` (0 when the database did not answer: the other metrics of the scrape
    are still served).

    ``sent`` is final, and the bulk of a send: it is summed from the per-second counts the
    dashboard's send rate remembers (seconds older than ``SETTLE``; only the newer part of
    ``ix_delivery_send_state_sent_at`` is read), the other states are counted from their own
    ranges of that index. ``now``: the clock (``Runtime.clock.now``)."""

    def __init__(
        self, session_factory: Any, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.session_factory = session_factory
        self.now = now

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        active = (SendStatus.PLANNING, SendStatus.SENDING, SendStatus.PAUSED)
        counts: dict[str, int] = defaultdict(int)
        try:
            with self.session_factory() as session:
                sends = session.scalars(select(Send).where(Send.status.in_(active))).all()
                now = self.now()
                for send in sends:
                    summary = SendSummary(
                        send.id, "", send.status, send.created_at, send.started_at,
                        send.finished_at, {},
                    )  # fmt: skip
                    counts["sent"] += sum(_sent_per_second(session, summary, now).values())
                if sends:
                    for state, n in session.execute(
                        select(Delivery.state, func.count())
                        .where(
                            Delivery.send_id.in_([send.id for send in sends]),
                            Delivery.state.in_(_UNSENT),
                        )
                        .group_by(Delivery.state)
                    ):
                        counts[str(state)] += int(n)
        except SQLAlchemyError:
            yield GaugeMetricFamily("newsletter_ledger_up", "1 if the ledger was read.", value=0)
            return
        yield GaugeMetricFamily("newsletter_ledger_up", "1 if the ledger was read.", value=1)
        yield GaugeMetricFamily(
            "newsletter_active_sends", "Sends planning, sending or paused.", value=len(sends)
        )
        family = GaugeMetricFamily(
            "newsletter_active_send_deliveries",
            "Deliveries of the active sends by state, from the ledger at scrape time.",
            labels=["state"],
        )
        for state, count in sorted(counts.items()):
            if count or state != "sent":
                family.add_metric([state], count)
        yield family


_UNSENT = tuple(state.value for state in DeliveryState if state != DeliveryState.SENT)


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
