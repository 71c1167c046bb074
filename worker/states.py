"""The three state machines of the product: subscriber, send and delivery.

Each machine is an enum of its states and a transition table: for every target state, the states
it may be entered from. Every write of a state goes through this table — an UPDATE takes its
``WHERE state IN (…)`` from :func:`sources`, an in-memory change calls :func:`check` — so a state
can only change along an arrow drawn here. Pure: no database, no I/O.

Statuses are stored as plain strings (``worker.models.StateColumn``), so a new state needs no
migration.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar


class SubscriberStatus(StrEnum):
    """Where one address stands with its newsletter."""

    PENDING = "pending"  # signed up, confirmation mail sent, not yet confirmed
    CONFIRMED = "confirmed"  # double opt-in completed: receives editions
    UNSUBSCRIBED = "unsubscribed"  # asked to stop; a new signup starts double opt-in again
    SUPPRESSED = "suppressed"  # must not be mailed (hard bounce, complaint, erasure)


class SendStatus(StrEnum):
    """Where one dispatch run of an edition stands."""

    SCHEDULED = "scheduled"  # created, renditions may exist, nothing planned yet
    PLANNING = "planning"  # deliveries are being inserted
    SENDING = "sending"  # batches take deliveries
    PAUSED = "paused"  # batches return without sending; resume re-enqueues them
    FINISHED = "finished"  # every delivery has a final state
    CANCELLED = "cancelled"  # stopped by an operator; unsent deliveries stay unsent


class DeliveryState(StrEnum):
    """What became of one recipient's copy (the ledger row)."""

    QUEUED = "queued"  # planned, not yet attempted (or released after a throttle)
    SENDING = "sending"  # claimed by a worker, with a lease, SMTP transaction under way
    SUBMITTING = "submitting"  # recipient accepted, DATA under way: a lost outcome here is unknown
    SENT = "sent"  # the relay accepted it (2xx after DATA): submitted, not necessarily delivered
    DEFERRED = "deferred"  # 4xx: retried with backoff after next_attempt_at
    FAILED = "failed"  # 5xx or an address the relay cannot take; never retried
    EXPIRED = "expired"  # still deferred when the maximum retry age ran out (a soft outcome)
    SKIPPED = "skipped"  # no longer eligible when its turn came (unsubscribed, suppressed)
    UNKNOWN = "unknown"  # the lease ran out with the outcome unknown: resent only by an operator


S = TypeVar("S", SubscriberStatus, SendStatus, DeliveryState)

_Sub = SubscriberStatus
SUBSCRIBER_TRANSITIONS: Mapping[SubscriberStatus, frozenset[SubscriberStatus]] = {
    # a signup (new, or again after unsubscribing) waits for its confirmation
    _Sub.PENDING: frozenset({_Sub.PENDING, _Sub.UNSUBSCRIBED}),
    # the confirmation link; lifting a suppression restores a reader who had confirmed
    _Sub.CONFIRMED: frozenset({_Sub.PENDING, _Sub.SUPPRESSED}),
    # the reader asks to stop (page, one-click, mailto, complaint); or a lifted suppression
    _Sub.UNSUBSCRIBED: frozenset({_Sub.PENDING, _Sub.CONFIRMED, _Sub.SUPPRESSED}),
    # hard bounce, complaint, soft-bounce limit, erasure, an imported list: from anywhere
    _Sub.SUPPRESSED: frozenset(_Sub),
}

_Send = SendStatus
SEND_TRANSITIONS: Mapping[SendStatus, frozenset[SendStatus]] = {
    _Send.SCHEDULED: frozenset(),
    _Send.PLANNING: frozenset({_Send.SCHEDULED}),
    # planning done; resume after a pause; an operator's retry of unknown deliveries re-opens it
    _Send.SENDING: frozenset({_Send.PLANNING, _Send.PAUSED, _Send.FINISHED}),
    _Send.PAUSED: frozenset({_Send.PLANNING, _Send.SENDING}),
    _Send.FINISHED: frozenset({_Send.SENDING}),
    _Send.CANCELLED: frozenset({_Send.SCHEDULED, _Send.PLANNING, _Send.SENDING, _Send.PAUSED}),
}

_D = DeliveryState
DELIVERY_TRANSITIONS: Mapping[DeliveryState, frozenset[DeliveryState]] = {
    # released after a throttle or a lost lease before DATA; an operator's retry of unknown ones
    _D.QUEUED: frozenset({_D.SENDING, _D.UNKNOWN}),
    # claimed (first attempt, or a retry that came due)
    _D.SENDING: frozenset({_D.QUEUED, _D.DEFERRED}),
    # the relay accepted the recipient; DATA is under way
    _D.SUBMITTING: frozenset({_D.SENDING}),
    # the reply of the claim's attempt; from unknown when it arrives after the lease ran out
    # (the outcome is known after all: recording it keeps an operator's retry from resending)
    _D.SENT: frozenset({_D.SENDING, _D.SUBMITTING, _D.UNKNOWN}),
    _D.DEFERRED: frozenset({_D.SENDING, _D.SUBMITTING, _D.UNKNOWN}),
    _D.FAILED: frozenset({_D.SENDING, _D.SUBMITTING, _D.UNKNOWN}),
    _D.EXPIRED: frozenset({_D.SENDING, _D.SUBMITTING, _D.UNKNOWN, _D.DEFERRED}),
    # no longer eligible when its turn came
    _D.SKIPPED: frozenset({_D.QUEUED, _D.DEFERRED, _D.SENDING}),
    # a dropped connection after DATA, or a lease that ran out while submitting
    _D.UNKNOWN: frozenset({_D.SENDING, _D.SUBMITTING}),
}

UNFINISHED_STATES = (_D.QUEUED, _D.SENDING, _D.SUBMITTING, _D.DEFERRED)
"""Deliveries that still await a final outcome."""

_TABLES: dict[type[StrEnum], Mapping[Any, frozenset[Any]]] = {
    SubscriberStatus: SUBSCRIBER_TRANSITIONS,
    SendStatus: SEND_TRANSITIONS,
    DeliveryState: DELIVERY_TRANSITIONS,
}


class IllegalTransition(ValueError):
    """A state change that its machine does not allow; the message names both states."""


def sources(target: S) -> tuple[S, ...]:
    """The states ``target`` may be entered from, sorted, for an UPDATE's ``WHERE state IN (…)``."""
    return tuple(sorted(_TABLES[type(target)][target]))


def sources_among(target: S, *among: S) -> tuple[S, ...]:
    """``sources(target)`` narrowed to ``among``, for a write that only some arrows may take (a
    release only from ``sending``). Raises ``IllegalTransition`` if ``among`` names a state the
    table does not allow, so a narrowed WHERE can never widen the machine."""
    allowed_from = sources(target)
    extra = set(among) - set(allowed_from)
    if extra:
        raise IllegalTransition(f"{type(target).__name__}: {sorted(extra)} → {target}")
    return tuple(state for state in allowed_from if state in among)


def allowed(current: S, target: S) -> bool:
    """Whether its machine allows ``current`` → ``target``."""
    return current in sources(target)


def check(current: str, target: S) -> S:
    """Return ``target`` if ``current`` → ``target`` is allowed, else raise ``IllegalTransition``.

    ``current`` may be the plain string read from the database.
    """
    machine = type(target)
    if machine(current) not in sources(target):
        raise IllegalTransition(f"{machine.__name__}: {current} → {target} is not allowed")
    return target
