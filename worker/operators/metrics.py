"""Prometheus metrics of the newsletter: what happened, counted in every process.

Names follow the Prometheus conventions: the ``newsletter_`` namespace, ``_total`` on counters,
the unit in the name (``_seconds``), and labels with small fixed sets of values (a state, a reply
class, a kind, a reason, a language). An address, a domain or an id is never a label value.

Multiprocess mode: dramatiq forks worker processes, so each process writes its samples to files
under ``PROMETHEUS_MULTIPROC_DIR`` and ``exposition()`` sums them. The variable must be set (and
the directory wiped) before any process starts, because prometheus-client reads it at import time
(see docs/operations.md). Without it, ``exposition()`` serves this process's own registry.

Feedback events and suppressions are counted by a SQLAlchemy session hook when their rows are
committed, whichever module records them (SMTP replies, DSNs, ARF reports, webhooks, unsubscribe
links); the other counters are incremented at their call sites.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from worker.models import FeedbackEvent, Suppression
from worker.sending.ports import Mailer, SmtpOutcome

# The families, created in the default registry on first use (``_family``), never at import: a
# process that only imports this module (the CLI, a test) registers nothing.
FAMILIES: dict[
    str, tuple[type[Counter] | type[Histogram], str, tuple[str, ...], tuple[float, ...]]
] = {
    "newsletter_signups_total": (
        Counter,
        "Signup events handled, by outcome (pending, already_confirmed, suppressed, "
        "duplicate_event, refused, limited).",
        ("outcome",),
        (),
    ),
    "newsletter_signup_refusals_total": (
        Counter,
        "Signup events refused or limited, by reason.",
        ("reason",),
        (),
    ),
    "newsletter_confirmations_total": (
        Counter,
        "Subscriptions confirmed through the confirmation page (double opt-in completed).",
        (),
        (),
    ),
    "newsletter_confirmation_mails_total": (
        Counter,
        "Confirmation mails handed to the relay, by result (sent, deferred, failed).",
        ("result",),
        (),
    ),
    "newsletter_deliveries_total": (
        Counter,
        "Delivery outcomes written to the ledger, by state (sent, deferred, failed, expired, "
        "unknown, skipped).",
        ("state",),
        (),
    ),
    "newsletter_smtp_replies_total": (
        Counter,
        "SMTP transactions by reply class (2xx, 4xx, 5xx; none when no reply came, uncertain "
        "when the connection dropped after the end of DATA).",
        ("reply_class",),
        (),
    ),
    "newsletter_smtp_transaction_duration_seconds": (
        Histogram,
        "Time to hand one message to the relay (MAIL FROM to the reply after DATA), in seconds.",
        (),
        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    ),
    "newsletter_rendition_render_duration_seconds": (
        Histogram,
        "Time to render one edition in one language (Jinja2, MJML, text), in seconds.",
        (),
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    ),
    "newsletter_feedback_events_total": (
        Counter,
        "Feedback events recorded, by kind (worker.feedback.classification.FeedbackKind) and "
        "source.",
        ("kind", "source"),
        (),
    ),
    "newsletter_slot_firings_total": (
        Counter,
        "Firings of the weekly send slot, by outcome (scheduled: an edition was sent; empty: no "
        "loaded edition was waiting, nothing was sent).",
        ("outcome",),
        (),
    ),
    "newsletter_reconcile_failures_total": (
        Counter,
        "Sends the scheduler's reconcile pass could not handle (each logged with the send id).",
        (),
        (),
    ),
    "newsletter_suppressions_total": (
        Counter,
        "Addresses added to the suppression list, by reason.",
        ("reason",),
        (),
    ),
}
_created: dict[str, Counter | Histogram] = {}
_created_lock = threading.Lock()


def _family(name: str) -> Any:
    """The metric family ``name`` of ``FAMILIES``, registered on the first call; raises
    ``KeyError`` for an unknown name."""
    with _created_lock:
        family = _created.get(name)
        if family is None:
            kind, documentation, labels, buckets = FAMILIES[name]
            if kind is Histogram:
                family = Histogram(name, documentation, labels, buckets=buckets)
            else:
                family = Counter(name, documentation, labels)
            _created[name] = family
        return family


_children: dict[tuple[str, str], Any] = {}


def _child(name: str, label: str, value: str) -> Any:
    """``name``'s series for ``label`` = ``value``, kept after the first call: the send path
    counts two per message, and each ``labels`` call checks and joins its arguments under a
    lock. Values are bounded by the callers (``_bounded``, ``reply_class``); a family's series
    are never removed."""
    key = (name, value)
    series = _children.get(key)
    if series is None:
        series = _children[key] = _family(name).labels(**{label: value})
    return series


def counter(name: str) -> Counter:
    """The counter family ``name`` (e.g. ``newsletter_signups_total``), created on first use."""
    family: Counter = _family(name)
    return family


def histogram(name: str) -> Histogram:
    """The histogram family ``name`` (in seconds), created on first use."""
    family: Histogram = _family(name)
    return family


# Label values outside these sets are folded into "other", so a bug elsewhere cannot blow up
# the number of time series.
_FEEDBACK_SOURCES = frozenset(
    {"smtp", "dsn", "arf", "one_click", "page", "mailto", "imap", "inbound", "manual"}
)
_SIGNUP_OUTCOMES = frozenset(
    {"pending", "already_confirmed", "suppressed", "duplicate_event", "refused", "limited"}
)
_DELIVERY_STATES = frozenset({"sent", "deferred", "failed", "expired", "unknown", "skipped"})


def _bounded(value: str | None, allowed: frozenset[str] | None = None, limit: int = 40) -> str:
    if not value:
        return "none"
    value = value[:limit]
    if allowed is not None and value not in allowed:
        return "webhook" if value.startswith("webhook") else "other"
    return value


def signup_handled(status: str, reason: str | None = None) -> None:
    """Count one handled signup event by its outcome
    (``worker.subscriptions.signups.SignupOutcome.status``:
    pending, already_confirmed, suppressed, duplicate_event, refused, limited) and, for refused
    and limited ones, its reason (a short code, never the address)."""
    counter("newsletter_signups_total").labels(outcome=_bounded(status, _SIGNUP_OUTCOMES)).inc()
    if status in ("refused", "limited"):
        counter("newsletter_signup_refusals_total").labels(reason=_bounded(reason)).inc()


def confirmation_mail(outcome: SmtpOutcome) -> None:
    """Count one confirmation mail by the relay's answer."""
    result = "sent" if outcome.accepted else "failed" if outcome.permanent else "deferred"
    counter("newsletter_confirmation_mails_total").labels(result=result).inc()


def subscription_confirmed() -> None:
    """Count one subscription confirmed through the confirmation page."""
    counter("newsletter_confirmations_total").inc()


def delivery_recorded(state: str) -> None:
    """Count one delivery outcome written to the ledger (``worker.models.DeliveryState``)."""
    _child("newsletter_deliveries_total", "state", _bounded(state, _DELIVERY_STATES)).inc()


def render_observed(seconds: float) -> None:
    """Record the time one rendition took to render, in seconds."""
    histogram("newsletter_rendition_render_duration_seconds").observe(seconds)


def slot_fired(outcome: str) -> None:
    """Count one firing of the weekly slot: ``scheduled`` or ``empty`` (nothing to send)."""
    value = outcome if outcome in ("scheduled", "empty") else "other"
    counter("newsletter_slot_firings_total").labels(outcome=value).inc()


def reconcile_failed() -> None:
    """Count one send the reconcile pass could not handle."""
    counter("newsletter_reconcile_failures_total").inc()


class SendingCounters:
    """The counters of ``worker.sending`` (``worker.sending.ports.SendingMetrics``) over these
    families; the runtime hands one to the ledger and to planning."""

    def delivery_recorded(self, state: str) -> None:
        """See ``delivery_recorded``."""
        delivery_recorded(state)

    def render_observed(self, seconds: float) -> None:
        """See ``render_observed``."""
        render_observed(seconds)


def reply_class(outcome: SmtpOutcome) -> str:
    """``2xx``/``4xx``/``5xx`` from the RFC 5321 §4.2.1 first digit; ``uncertain`` or ``none``
    when no reply came."""
    if outcome.uncertain:
        return "uncertain"
    if 200 <= outcome.code < 600:
        return f"{outcome.code // 100}xx"
    return "none"


class MeteredMailer:
    """A ``Mailer`` that counts reply classes and times each transaction; delegates the rest."""

    def __init__(self, inner: Mailer) -> None:
        self.inner = inner

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Callable[[], bool] | None = None,
    ) -> SmtpOutcome:
        """See ``worker.sending.ports.Mailer.send``; never raises for SMTP errors."""
        started = time.perf_counter()
        outcome = self.inner.send(
            envelope_from, recipient, message, smtputf8=smtputf8, before_data=before_data
        )
        histogram("newsletter_smtp_transaction_duration_seconds").observe(
            time.perf_counter() - started
        )
        _child("newsletter_smtp_replies_total", "reply_class", reply_class(outcome)).inc()
        return outcome

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # e.g. SmtpMailer.supports_smtputf8
        return getattr(self.inner, name)


# --- counting rows as they are committed ---

_PENDING = "worker.operators.metrics.pending"


def _after_flush(session: Session, _context: Any) -> None:
    pending = session.info.setdefault(_PENDING, [])
    for obj in session.new:
        if isinstance(obj, FeedbackEvent):
            labels = {"kind": _bounded(obj.kind), "source": _bounded(obj.source, _FEEDBACK_SOURCES)}
            pending.append((obj, "newsletter_feedback_events_total", labels))
        elif isinstance(obj, Suppression):
            pending.append((obj, "newsletter_suppressions_total", {"reason": _bounded(obj.reason)}))


def _after_commit(session: Session) -> None:
    for obj, metric, labels in session.info.pop(_PENDING, []):
        # Rows of a rolled-back savepoint (a duplicate event) lost their identity: not counted.
        if inspect(obj).has_identity:
            counter(metric).labels(**labels).inc()


def _after_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():  # the outer transaction: nothing of it was committed
        session.info.pop(_PENDING, None)


def install_session_hooks() -> None:
    """Count committed ``FeedbackEvent`` and ``Suppression`` rows of every session (idempotent).

    Installed by the entry points that open sessions (``worker.runtime.Runtime.engine``, the
    ``newsletter`` CLI), not by ``worker.db``, which sits below the domain layers."""
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", _after_rollback)


# --- exposition ---


def exposition(extra: list[Any] | None = None) -> tuple[bytes, str]:
    """The text exposition format of every process's metrics, and its content type.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set) the samples of all processes that
    share the directory are summed; otherwise this process's default registry is used. ``extra``
    collectors (e.g. ``worker.operators.dashboard.LedgerCollector``) are added to the output.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_DefaultRegistryView())
    for collector in extra or []:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


class _DefaultRegistryView:
    """The default registry's metrics as one collector (so extra collectors can be added)."""

    def collect(self) -> Any:
        return REGISTRY.collect()


__all__ = [
    "MeteredMailer",
    "SendingCounters",
    "confirmation_mail",
    "counter",
    "delivery_recorded",
    "exposition",
    "histogram",
    "install_session_hooks",
    "render_observed",
    "reply_class",
    "signup_handled",
    "subscription_confirmed",
]
