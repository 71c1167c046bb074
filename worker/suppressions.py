"""The suppression list: addresses we must not mail, each with a reason and its source event.

Entries are looked up by a keyed hash (HMAC-SHA256 of the case-folded address) so that an erased
person stays suppressed without their address being kept, and so that hashed lists can be imported.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.models import Subscriber, SubscriberStatus, Suppression


def email_hash(dedupe_key: str, hash_key: str) -> str:
    """Hex HMAC-SHA256 of a de-duplication key (see ``worker.addresses.Address.dedupe_key``)."""
    return hmac.new(hash_key.encode(), dedupe_key.encode(), hashlib.sha256).hexdigest()


def is_suppressed(session: Session, hashed: str) -> bool:
    """Whether an active (not removed) suppression exists for the hashed address."""
    return (
        session.scalar(
            select(Suppression.id).where(
                Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
            )
        )
        is not None
    )


def suppress(
    session: Session,
    *,
    dedupe_key: str,
    hash_key: str,
    reason: str,
    now: datetime,
    source_event_id: int | None = None,
    keep_address: bool = True,
) -> Suppression:
    """Add a suppression (or return the active one) and mark matching subscribers suppressed.

    ``reason``: ``hard_bounce``, ``complaint``, ``soft_bounce_limit``, ``erasure``, ``manual``,
    ``import``.
    """
    hashed = email_hash(dedupe_key, hash_key)
    existing = session.scalar(
        select(Suppression).where(
            Suppression.email_hash == hashed, Suppression.removed_at.is_(None)
        )
    )
    if existing is None:
        existing = Suppression(
            email_hash=hashed,
            email=dedupe_key if keep_address else None,
            reason=reason,
            source_event_id=source_event_id,
            created_at=now,
        )
        session.add(existing)
    session.execute(
        update(Subscriber)
        .where(Subscriber.email_key == dedupe_key)
        .values(status=SubscriberStatus.SUPPRESSED, updated_at=now)
    )
    session.flush()
    return existing
