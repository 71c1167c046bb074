"""The subscriber lifecycle: the one module that writes ``Subscriber.status``.

Every change follows ``SUBSCRIBER_TRANSITIONS`` (:mod:`worker.states`): an in-memory change calls
:func:`~worker.states.check` (``IllegalTransition`` on a refused arrow), a bulk UPDATE takes
``WHERE status IN sources(target)``. Callers (signups, people, feedback policy, suppressions, web,
CLI) decide *why*; this module decides *whether* and records *when*.

===================  ==============================  ===============================================
function             arrow                           caller
===================  ==============================  ===============================================
:func:`enrol`        new/pending/unsubscribed →      a signup (double opt-in again after leaving)
                     pending
:func:`insert_...`   new → confirmed / pending       an import of readers who confirmed elsewhere
                                                     (their evidence kept) / a re-permission
:func:`confirm`      pending → confirmed             the confirmation page's POST
:func:`request_...`  confirmed (a change waits)      a signup asking a confirmed reader for a change
:func:`confirm_...`  confirmed (the change applied)  the confirmation page's POST
:func:`unsubscribe`  pending/confirmed →             link page, RFC 8058 one-click, mailto,
                     unsubscribed                    feedback (one path, one feedback event)
:func:`suppress`     any → suppressed                bounce, complaint, soft-bounce limit, import
:func:`erase`        any → suppressed                erasure (the row is anonymised by the caller)
:func:`purge_...`    pending → unsubscribed/deleted  the periodic purge of unconfirmed signups
:func:`lift_...`     suppressed → confirmed/unsub.   an operator lifts a suppression
===================  ==============================  ===============================================
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, Update, bindparam, delete, func, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from worker.db import insert_rows
from worker.models import Consent, FeedbackEvent, Newsletter, Subscriber
from worker.safety.keyring import blind_index
from worker.states import IllegalTransition, SubscriberStatus, check, sources
from worker.subscriptions.addresses import Address, provider_bucket
from worker.subscriptions.tokens import TokenError, Tokens, unsubscribe_subscriber_id

_LEAVING = (SubscriberStatus.PENDING, SubscriberStatus.CONFIRMED)
"""Statuses an unsubscribe request moves to ``unsubscribed`` (the others already get nothing)."""


def insert_pending(
    session: Session, newsletter_id: int, address: Address, language: str, now: datetime
) -> tuple[Subscriber, bool]:
    """Insert a pending subscriber unless a concurrent signup of the same address just did.

    Returns the row and whether this call inserted it. ON CONFLICT DO NOTHING rather than catching
    IntegrityError: no rollback, no retried message, the abuse limits asked once per event.
    RETURNING tells whether a row was inserted (``rowcount`` is not reliable for it on every
    driver) and gives the new row itself: one statement for a new reader. A new row has its
    confirmation nonce already (what :func:`enrol` would give it), so that enrolling it changes
    nothing more to write.
    """
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = pending_values(newsletter_id, address, language, now)
    inserted = session.scalars(
        insert(Subscriber)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["newsletter_id", "email_key"])
        .returning(Subscriber)
    ).one_or_none()
    if inserted is not None:
        return inserted, True
    row = session.scalars(
        select(Subscriber).where(
            Subscriber.newsletter_id == newsletter_id, Subscriber.email_key == address.dedupe_key
        )
    ).one()
    return row, False


def pending_values(
    newsletter_id: int, address: Address, language: str, now: datetime
) -> dict[str, Any]:
    """A new pending subscriber's column values (plain: the column types seal the address and
    replace its key by the blind index when bound), with a fresh confirmation nonce."""
    return {
        "newsletter_id": newsletter_id,
        "email": address.normalized,
        "email_key": address.dedupe_key,
        "ascii_email": address.ascii_email,
        "domain": provider_bucket(address.ascii_domain),
        "language": language,
        "status": SubscriberStatus.PENDING.value,
        "confirm_nonce": secrets.token_urlsafe(9),
        "created_at": now,
        "updated_at": now,
    }


def insert_imported(
    session: Session, rows: Sequence[dict[str, object]], status: SubscriberStatus
) -> dict[str, int]:
    """Insert imported readers (one executemany); returns their ids by de-duplication key.

    ``rows``: the columns of ``Subscriber`` but ``status`` and ``confirm_nonce`` (``email``,
    ``email_key``, ``ascii_email``, ``domain``, ``language``, ``newsletter_id``, times). Only two
    ways in: ``confirmed`` (the reader confirmed with the old system; ``confirmed_at`` must be
    set, so that lifting a later suppression sees the consent) or ``pending`` (a re-permission:
    a fresh confirmation nonce each). Raises ``IllegalTransition`` for another status and
    ``ValueError`` for a confirmed row without ``confirmed_at``. Rows whose key exists already
    are left alone (ON CONFLICT DO NOTHING) and are absent from the result.
    """
    if status not in (SubscriberStatus.CONFIRMED, SubscriberStatus.PENDING):
        raise IllegalTransition(f"an import makes readers confirmed or pending, not {status}")
    if not rows:
        return {}
    values = []
    for row in rows:
        if status == SubscriberStatus.CONFIRMED and row.get("confirmed_at") is None:
            raise ValueError("an imported confirmed reader needs confirmed_at")
        nonce = secrets.token_urlsafe(9) if status == SubscriberStatus.PENDING else None
        values.append({**row, "status": status.value, "confirm_nonce": nonce})
    inserted = insert_rows(
        session,
        Subscriber.__table__,
        values,
        conflict=("newsletter_id", "email_key"),
        returning=("id", "email_key"),
    )
    # RETURNING gives the blind index (worker.models.BlindIndex): back to the caller's keys
    keys = {blind_index(str(row["email_key"])): str(row["email_key"]) for row in rows}
    return {keys[row.email_key]: row.id for row in inserted}


def enrol(subscriber: Subscriber, now: datetime) -> None:
    """Make ``subscriber`` pending (a new signup); keeps a live confirmation nonce, else makes one.

    Raises ``IllegalTransition`` for a confirmed or suppressed subscriber.
    """
    subscriber.status = check(subscriber.status, SubscriberStatus.PENDING)
    if subscriber.confirm_nonce is None:
        subscriber.confirm_nonce = secrets.token_urlsafe(9)
    subscriber.updated_at = now


def confirm(subscriber: Subscriber, now: datetime) -> None:
    """Complete the double opt-in of a pending subscriber; the confirmation token stops working.

    Raises ``IllegalTransition`` unless ``subscriber`` is pending (the table's other way into
    ``confirmed``, from ``suppressed``, is :func:`lift_suppression`'s, never a link's).
    """
    if subscriber.status != SubscriberStatus.PENDING:
        raise IllegalTransition(f"only a pending subscriber confirms, not {subscriber.status}")
    subscriber.status = check(subscriber.status, SubscriberStatus.CONFIRMED)
    subscriber.confirm_nonce = None
    subscriber.confirmed_at = subscriber.updated_at = now


def request_change(subscriber: Subscriber, now: datetime) -> None:
    """A confirmed reader was asked for a change (a signup naming another language): the status
    stays ``confirmed`` and nothing changes but a confirmation nonce, kept if one is live.

    Raises ``IllegalTransition`` unless ``subscriber`` is confirmed.
    """
    if subscriber.status != SubscriberStatus.CONFIRMED:
        raise IllegalTransition(f"only a confirmed subscriber has changes, not {subscriber.status}")
    if subscriber.confirm_nonce is None:
        subscriber.confirm_nonce = secrets.token_urlsafe(9)


def confirm_change(subscriber: Subscriber, language: str, now: datetime) -> None:
    """The reader confirmed the change: ``language`` applies and the nonce is spent.

    Raises ``IllegalTransition`` unless ``subscriber`` is confirmed with a change waiting.
    """
    if subscriber.status != SubscriberStatus.CONFIRMED or subscriber.confirm_nonce is None:
        raise IllegalTransition("no change is waiting for this subscriber's confirmation")
    subscriber.language = language
    subscriber.confirm_nonce = None
    subscriber.updated_at = now


def unsubscribe(
    session: Session,
    subscriber: Subscriber,
    *,
    source: str,
    now: datetime,
    event: FeedbackEvent | None = None,
    request_id: str | None = None,
) -> bool:
    """The one unsubscribe path (link page, RFC 8058 one-click, mailto, feedback); True if the
    subscriber left now.

    Pending and confirmed subscribers become ``unsubscribed``; a suppressed one keeps its status
    but the request is remembered in ``unsubscribed_at`` (so lifting the suppression later does
    not restore someone who asked to leave); an unsubscribed one is left as it is. Exactly one
    feedback event stands for the request: ``event`` when the caller has recorded it already
    (feedback reports), otherwise one is added here (``source``: ``page``, ``one_click``,
    ``mailto``; id ``request_id`` or a generated one) when the subscriber left now. Not a
    suppression: transactional mail (a new double opt-in) stays possible.
    """
    left = subscriber.status in _LEAVING
    if subscriber.status == SubscriberStatus.CONFIRMED:
        subscriber.confirm_nonce = None  # a change waiting for confirmation dies with the leave
    if left:
        subscriber.status = check(subscriber.status, SubscriberStatus.UNSUBSCRIBED)
        subscriber.unsubscribed_at = subscriber.updated_at = now
    elif subscriber.unsubscribed_at is None:
        subscriber.unsubscribed_at = now  # a suppressed reader has still asked to leave
    if event is not None:
        event.subscriber_id = subscriber.id
    elif left:
        session.add(_unsubscribe_event(subscriber, source, now, request_id))
    session.flush()
    return left


def _unsubscribe_event(
    subscriber: Subscriber, source: str, now: datetime, request_id: str | None
) -> FeedbackEvent:
    return FeedbackEvent(
        source_event_id=request_id or f"unsubscribe:{subscriber.id}:{now.isoformat()}",
        kind="unsubscribe",
        source=source[:32],
        subscriber_id=subscriber.id,
        recipient=None,  # the address is on the subscriber row; no second copy
        occurred_at=now,
        recorded_at=now,
    )


def unsubscribe_by_token(
    session: Session,
    tokens: Tokens,
    token: str,
    *,
    source: str,
    now: datetime,
    request_id: str | None = None,
) -> Subscriber:
    """Unsubscribe the subscriber an unsubscribe token names (see :func:`unsubscribe`).

    Idempotent: a second request records no second event. Raises ``TokenError`` (``forged``).
    """
    subscriber = session.get(Subscriber, unsubscribe_subscriber_id(tokens, token))
    if subscriber is None:
        raise TokenError("forged", "this link is not valid")
    unsubscribe(session, subscriber, source=source, now=now, request_id=request_id)
    return subscriber


def suppress(session: Session, dedupe_key: str, now: datetime) -> None:
    """Mark every subscriber with de-duplication key ``dedupe_key`` suppressed (one bulk UPDATE)."""
    target = SubscriberStatus.SUPPRESSED
    session.execute(
        update(Subscriber)
        .where(Subscriber.email_key == dedupe_key, Subscriber.status.in_(sources(target)))
        .values(status=target, updated_at=now)
    )


def suppress_keys(session: Session, dedupe_keys: Sequence[str], now: datetime) -> None:
    """:func:`suppress` for many keys, in every newsletter (bulk UPDATEs of at most 500 keys;
    on PostgreSQL one, see :func:`suppress_keys_statement`)."""
    if session.get_bind().dialect.name != "postgresql":
        _suppress_among(session, Subscriber.email_key, dedupe_keys, now)
    elif dedupe_keys:
        session.execute(suppress_keys_statement([blind_index(k) for k in dedupe_keys], now))


def suppress_keys_statement(indexes: Sequence[str], now: datetime) -> Update:
    """PostgreSQL: the UPDATE that suppresses the readers whose blind index (``email_key``) is
    in ``indexes``, in every newsletter, from the states that may become ``suppressed``.

    The readers are found by one probe of the unique (newsletter_id, email_key) index per
    newsletter and key (``unnest(:keys)``, ``LATERAL … LIMIT 1``): ``email_key IN (…)`` alone
    cannot use that index (email_key is its second column) and read every reader of the table
    for each 500 keys (measured on 100,000 readers: 104 ms per 500 keys, issue 14)."""
    target = SubscriberStatus.SUPPRESSED
    keys = (
        func.unnest(bindparam("keys", list(indexes), type_=ARRAY(Text())))
        .table_valued("key")
        .render_derived("keys")
    )
    found = (
        select(Subscriber.id)
        .where(Subscriber.newsletter_id == Newsletter.id, Subscriber.email_key == keys.c.key)
        .limit(1)
        .lateral("found")
    )
    readers = select(found.c.id).select_from(
        Newsletter.__table__.join(keys, true()).join(found, true())
    )
    return (
        update(Subscriber)
        .where(Subscriber.id.in_(readers), Subscriber.status.in_(sources(target)))
        .values(status=target, updated_at=now)
    )


def suppress_ids(session: Session, subscriber_ids: Sequence[int], now: datetime) -> None:
    """Mark the subscribers with these ids suppressed (bulk UPDATEs of at most 500 ids)."""
    _suppress_among(session, Subscriber.id, subscriber_ids, now)


def _suppress_among(
    session: Session, column: Any, values: Sequence[Any], now: datetime, chunk: int = 500
) -> None:
    target = SubscriberStatus.SUPPRESSED
    for start in range(0, len(values), chunk):
        session.execute(
            update(Subscriber)
            .where(
                column.in_(values[start : start + chunk]), Subscriber.status.in_(sources(target))
            )
            .values(status=target, updated_at=now)
        )


def erase(subscriber: Subscriber, now: datetime) -> None:
    """Suppress an erased subscriber for good and void its confirmation link (any status)."""
    subscriber.status = check(subscriber.status, SubscriberStatus.SUPPRESSED)
    subscriber.confirm_nonce = None
    subscriber.updated_at = now


def purge_unconfirmed(session: Session, *, now: datetime, older_than: timedelta) -> int:
    """Forget signups left unconfirmed for longer than ``older_than``; returns how many.

    A pending subscriber who never confirmed is deleted with its consents. One who was once
    confirmed (unsubscribed, then signed up again without confirming) returns to
    ``unsubscribed``: the ledger rows of past editions stay, the unconfirmed consents go.
    """
    stale = session.scalars(
        select(Subscriber).where(
            Subscriber.status == SubscriberStatus.PENDING, Subscriber.updated_at < now - older_than
        )
    ).all()
    for subscriber in stale:
        session.execute(
            delete(Consent).where(
                Consent.subscriber_id == subscriber.id, Consent.confirmed_at.is_(None)
            )
        )
        if subscriber.confirmed_at is None:
            session.delete(subscriber)
            continue
        subscriber.status = check(subscriber.status, SubscriberStatus.UNSUBSCRIBED)
        subscriber.confirm_nonce = None
        subscriber.updated_at = now
    session.flush()
    return len(stale)


def lift_suppression(session: Session, dedupe_key: str, now: datetime) -> tuple[int, int]:
    """Restore the suppressed subscribers with ``dedupe_key``; returns (confirmed, unsubscribed).

    Back to ``confirmed`` only if they had confirmed and had not asked to leave since (a complaint
    also unsubscribes); otherwise ``unsubscribed``: lifting never subscribes anyone who did not
    consent.
    """
    confirmed = unsubscribed = 0
    for subscriber in session.scalars(
        select(Subscriber).where(
            Subscriber.email_key == dedupe_key, Subscriber.status == SubscriberStatus.SUPPRESSED
        )
    ):
        if _consent_stands(subscriber):
            subscriber.status = check(subscriber.status, SubscriberStatus.CONFIRMED)
            confirmed += 1
        else:
            subscriber.status = check(subscriber.status, SubscriberStatus.UNSUBSCRIBED)
            unsubscribed += 1
        subscriber.updated_at = now
    session.flush()
    return confirmed, unsubscribed


def _consent_stands(subscriber: Subscriber) -> bool:
    confirmed, left = subscriber.confirmed_at, subscriber.unsubscribed_at
    return confirmed is not None and (left is None or left < confirmed)
