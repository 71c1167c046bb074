"""Helpers for dispatch tests: seed a newsletter with subscribers, create and plan a send."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import insert, select

from tests.samples import SAMPLE_EDITION
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import Delivery, Subscriber
from worker.runtime import Runtime
from worker.sending.batch import BatchReport, send_batch
from worker.sending.ports import SmtpOutcome
from worker.sending.sends import create_send, plan_send
from worker.sending.throttle import LocalThrottle
from worker.states import SubscriberStatus
from worker.subscriptions.addresses import provider_bucket

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)

Reply = SmtpOutcome | Literal["crash"]


class ScriptedRelay:
    """A ``Mailer`` that answers as a relay would, from a reply per recipient (default 250), for
    tests that need no SMTP server.

    A refused reply (4xx, 5xx) comes at RCPT: DATA never starts, the fence is not run. Otherwise
    the fence runs before DATA (closed: nothing is sent); ``"crash"`` then raises, as a process
    that dies during DATA would. ``on_rcpt`` is called at each RCPT. Accepted messages are kept
    in ``sent`` as (envelope sender, recipient, message bytes).
    """

    def __init__(
        self,
        replies: Mapping[str, Reply] | None = None,
        on_rcpt: Callable[[], None] | None = None,
    ) -> None:
        self.replies = replies or {}
        self.on_rcpt = on_rcpt
        self.sent: list[tuple[str, str, bytes]] = []

    @property
    def accepted(self) -> list[str]:
        """The recipients whose message was accepted, in order."""
        return [recipient for _, recipient, _ in self.sent]

    def send(
        self,
        envelope_from: str,
        recipient: str,
        message: bytes,
        *,
        smtputf8: bool,
        before_data: Callable[[], bool] | None = None,
    ) -> SmtpOutcome:
        if self.on_rcpt is not None:
            self.on_rcpt()
        reply = self.replies.get(recipient, SmtpOutcome(250, "2.0.0 ok"))
        if reply != "crash" and not reply.accepted:
            return reply
        if before_data is not None and not before_data():
            return SmtpOutcome(0, "fence closed", local=True)
        if reply == "crash":
            raise RuntimeError("process died during DATA")
        self.sent.append((envelope_from, recipient, message))
        return reply

    def close(self) -> None:
        """Nothing to close: no connection."""


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
                "domain": provider_bucket(a.rsplit("@", 1)[1].lower().encode("idna").decode()),
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
