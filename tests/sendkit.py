"""Helpers for dispatch tests: seed a newsletter with subscribers, create and plan a send."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from tests.samples import SAMPLE_EDITION
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import Delivery, Subscriber
from worker.runtime import Runtime
from worker.sending.batch import BatchReport, send_batch
from worker.sending.sends import create_send, plan_send
from worker.sending.throttle import LocalThrottle
from worker.states import SubscriberStatus

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def seed(
    rt: Runtime, addresses: Iterable[str], language: str = "en", status: str = "confirmed"
) -> int:
    """Store the sample edition and one subscriber per ASCII address; returns the newsletter id."""
    now = rt.clock.now()
    with rt.session() as session:
        edition = save_edition(session, read_edition(SAMPLE_EDITION), now)
        newsletter_id = edition.newsletter_id
        rows = [
            {
                "newsletter_id": newsletter_id,
                "email": a,
                "email_key": a.lower(),
                "ascii_email": a if a.isascii() else None,
                "domain": a.rsplit("@", 1)[1].lower().encode("idna").decode(),
                "language": language,
                "status": status,
                "created_at": now,
                "updated_at": now,
                "confirmed_at": now if status == SubscriberStatus.CONFIRMED else None,
            }
            for a in addresses
        ]
        for start in range(0, len(rows), 5000):
            session.execute(insert(Subscriber), rows[start : start + 5000])
        session.commit()
    return int(newsletter_id)


def start_send(rt: Runtime, batch_size: int = 10) -> int:
    """Create a send of the sample edition and plan it (status ``sending``); returns its id."""
    with rt.session() as session:
        from worker.editions.store import find_edition

        edition = find_edition(session, "2024-W28")
        assert edition is not None
        send_id = create_send(session, edition, rt.clock.now(), batch_size).id
        session.commit()
        plan_send(session, send_id, rt.links.public_url, rt.clock.now())
    return int(send_id)


def states(rt: Runtime, send_id: int) -> dict[str, str]:
    """Recipient address → delivery state."""
    with rt.session() as session:
        rows = session.execute(
            select(Subscriber.email, Delivery.state)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.send_id == send_id)
        ).all()
    return {email: state for email, state in rows}


def run_batch(
    rt: Runtime, send_id: int, first: int = 0, last: int = 10**12, **ports: Any
) -> BatchReport:
    """Run ``send_batch`` in this process with the runtime's ports (``ports`` replace some)."""
    with rt.session() as session:
        parts: dict[str, Any] = {
            "composer": rt.composer(session, send_id),
            "mailer": rt.mailer,
            "throttle": LocalThrottle(),
            "clock": rt.clock,
            "policy": rt.policy,
        }
        parts.update(ports)
        return send_batch(rt.ledger(session), send_id, first, last, **parts)
