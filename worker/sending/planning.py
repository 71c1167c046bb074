"""Planning a send: one ``queued`` delivery per confirmed subscriber, and the batches (id ranges)
that have deliveries due."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, func, literal, literal_column, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from worker.models import Delivery, Send, Subscriber
from worker.sending.ledger import RETRYABLE
from worker.states import DeliveryState, SubscriberStatus


def plan_deliveries(
    session: Session,
    send: Send,
    *,
    newsletter_id: int,
    languages: tuple[str, ...],
    default_language: str,
    page_size: int = 10_000,
) -> int:
    """Insert one ``queued`` delivery per confirmed subscriber, in keyset pages of ``page_size``.

    Each page is one ``INSERT … SELECT`` inside the database (subscribers are never loaded into
    memory); the unique (send, subscriber) constraint with ``ON CONFLICT DO NOTHING`` makes
    planning twice a no-op. Subscribers whose language the edition lacks get ``default_language``.
    Commits after each page; returns the number of deliveries the send has.
    """
    lang_expr = (
        case(
            (Subscriber.language.in_(languages), Subscriber.language),
            else_=literal(default_language),
        )
        if languages
        else literal(default_language)
    )
    eligible = (
        Subscriber.newsletter_id == newsletter_id,
        Subscriber.status == SubscriberStatus.CONFIRMED,
    )
    insert_fn = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    after = 0
    while True:
        page = select(Subscriber.id).where(*eligible, Subscriber.id > after).order_by(Subscriber.id)
        last = session.scalar(select(func.max(page.limit(page_size).subquery().c.id)))
        if last is None:
            break
        rows = select(
            literal(send.id),
            Subscriber.id,
            lang_expr,
            Subscriber.domain,
            literal(DeliveryState.QUEUED.value),
            literal(0),
        ).where(*eligible, Subscriber.id > after, Subscriber.id <= last)
        stmt = insert_fn(Delivery).from_select(
            ["send_id", "subscriber_id", "language", "domain", "state", "attempts"], rows
        )
        session.execute(stmt.on_conflict_do_nothing())
        session.commit()  # a page at a time: planning 1M rows must not be one transaction
        after = last
    total = session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.send_id == send.id)
    )
    return int(total or 0)


def pending_batches(
    session: Session, send_id: int, size: int, now: datetime
) -> list[tuple[int, int]]:
    """The batches of ``send_id`` that have deliveries due at ``now``, as (first id, last id), in
    order. Reads only.

    Batches are fixed id ranges of ``size`` counted from the send's first delivery, so the same
    batch always has the same identity (the reconciler tracks its queue message by it). One
    ``GROUP BY`` query; deliveries deferred to a later time are left to their own batch message.
    """
    base = session.scalar(select(func.min(Delivery.id)).where(Delivery.send_id == send_id))
    if base is None:
        return []
    bucket = (Delivery.id - literal_column(str(int(base)))) // literal_column(str(int(size)))
    rows = session.execute(
        select(bucket)
        .where(
            Delivery.send_id == send_id,
            Delivery.state.in_(RETRYABLE),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    return [(base + k * size, base + (k + 1) * size - 1) for (k,) in rows]


__all__ = ["pending_batches", "plan_deliveries"]
