"""Contracts between the domain and its adapters (SMTP, Redis throttle, clock, metrics, feedback).

The domain modules depend on these protocols only; ``worker.sending.smtp`` and
``worker.sending.throttle`` implement the first ones, ``worker.operators.metrics`` and
``worker.feedback.refusals`` (higher layers) the last two, wired by ``worker.runtime.Runtime``;
tests may pass their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

# The session a refusal is recorded in (``sqlalchemy.orm.Session`` in production); a type
# variable so that this module stays free of sqlalchemy.
SessionT_contra = TypeVar("SessionT_contra", contravariant=True)


@dataclass(frozen=True)
class SmtpOutcome:
    """What the relay said about one message to one recipient.

    ``code`` is the SMTP reply code (RFC 5321 §4.2), 0 when no reply came (connection failed or
    dropped). ``uncertain`` is True when the connection dropped after the message's final dot was
    sent but before the reply was read: the relay may or may not have accepted it.
    """

    code: int
    text: str
    uncertain: bool = False
    local: bool = False  # refused by us, not the relay (e.g. no SMTPUTF8): no recipient feedback
    at_connect: bool = False  # the relay refused the session (greeting, AUTH), not the message

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def transient(self) -> bool:
        return not self.accepted and not self.permanent and not self.uncertain


class Mailer(Protocol):
    """Hands messages to an SMTP relay, reusing its connection between calls."""

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Callable[[], bool] | None = None,
    ) -> SmtpOutcome:
        """Send ``message`` (bytes with CRLF line ends) to one ``recipient``; never raises for SMTP
        or network errors, which come back as an outcome. ``before_data`` runs after the relay
        accepted the recipient and before DATA; if it returns False the transaction is reset and
        nothing is sent (the outcome then has ``local=True``)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Reservation:
    """A send slot: ``granted`` means send after sleeping ``wait`` seconds; otherwise nothing was
    reserved and the caller should try again in ``wait`` seconds. ``token`` (granted under a
    global rate) names the message in the rate window until ``Throttle.sent`` reports its reply."""

    granted: bool
    wait: float
    token: str = ""


class Throttle(Protocol):
    """The sending rate shared by every worker process (global and per recipient domain)."""

    def reserve(self, domain: str, max_wait: float, done: str = "") -> Reservation:
        """Reserve the next slot for a message to ``domain`` if it comes within ``max_wait`` s.
        ``done``: the token of a message whose reply has come (``sent`` in the same call)."""
        ...

    def sent(self, token: str) -> None:
        """The reply to the message of reservation ``token`` has been read ("" is ignored)."""
        ...

    def unlimited(self, domains: Collection[str]) -> bool:
        """True when no rate applies right now to a message for any of ``domains`` (the global
        rate and each domain's rate are 0, overrides included): such a message needs no slot
        and ``reserve`` would grant one at once without recording anything."""
        ...

    def slow_down(self, domain: str) -> None:
        """The domain answered 421/451 about the rate: lower its rate for a while."""
        ...

    def acquire_connection(self, holder: str, ttl: float) -> bool:
        """Take one of the shared SMTP connection slots for ``holder`` for ``ttl`` seconds (call
        again to extend); False when all are taken."""
        ...

    def release_connection(self, holder: str) -> None:
        """``holder``'s connection is closed: its slot frees after a settle time."""
        ...

    def fewer_connections(self) -> int:
        """The relay refused a session with 421 (too many connections): lower the cap for a
        while. Returns by how much it is lowered now."""
        ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SendingMetrics(Protocol):
    """The counters sending keeps (``worker.operators.metrics.SendingCounters`` in production)."""

    def delivery_recorded(self, state: str) -> None:
        """Count one delivery outcome written to the ledger (a ``worker.states.DeliveryState``)."""
        ...

    def render_observed(self, seconds: float) -> None:
        """Record the time one rendition took to render, in seconds."""
        ...


class NoMetrics:
    """Counts nothing: for tools and tests that build a ledger without the runtime."""

    def delivery_recorded(self, state: str) -> None:
        """Counts nothing."""

    def render_observed(self, seconds: float) -> None:
        """Records nothing."""


@dataclass(frozen=True)
class Refusal:
    """The relay's permanent refusal (5xx, RFC 5321 §4.2.1) of one delivery attempt, as it is
    written to the ledger: ``attempt`` is the delivery's attempt number, ``at`` the time (UTC)."""

    delivery_id: int
    attempt: int
    subscriber_id: int
    outcome: SmtpOutcome
    at: datetime


class RefusalRecorder(Protocol[SessionT_contra]):
    """Records a refusal as a feedback event (bounce classification, suppression); implemented by
    ``worker.feedback.refusals.RefusalFeedback``."""

    def record(self, session: SessionT_contra, refusal: Refusal) -> None:
        """Record ``refusal`` in ``session``'s open transaction: flushes, never commits, so the
        caller's commit makes the failed delivery and its feedback event durable together."""
        ...
