"""A real send for the operators' tests: signups through the actors, confirmations through the web
app, the sample edition sent through the stub-broker worker to a real SMTP server that refuses
one recipient with ``550 5.1.1``."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.runtime import Runtime
from worker.sending.sends import create_send

READERS = [
    ("anna@example.org", "en"),
    ("ivan@example.org", "en"),
    ("nobody@example.org", "en"),  # refused by the relay: 550 5.1.1
    ("ales@example.net", "be"),
    ("olga@example.com", "ru"),
    ("pending.only@example.com", "ru"),  # never confirms
]
REFUSED = "nobody@example.org"


@dataclass
class SentScenario:
    send_id: int
    client: TestClient
    unsubscribe_paths: dict[str, str]


def refusing(smtp: OutboxServer) -> set[str]:
    """Make the SMTP server answer ``550 5.1.1`` (RFC 3463: bad mailbox) to RCPT TO any address
    later added to the returned set. Installed before the first connection: aiosmtpd looks its
    hooks up once per connection."""
    refused: set[str] = set()

    async def handle_RCPT(  # aiosmtpd hook name
        server: SMTP, session: Session, envelope: Envelope, rcpt: str, options: list[str]
    ) -> str:
        if rcpt.lower() in refused:
            return f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(rcpt)
        return "250 OK"

    smtp.handler.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]
    return refused


def more_readers(count: int) -> list[tuple[str, str]]:
    """``count`` more readers spread over a few domains and the three languages."""
    domains = (
        "gmail.com",
        "yandex.ru",
        "mail.ru",
        "outlook.com",
        "tut.by",
        "example.org",
        "пошта.бел",
    )
    languages = ("be", "ru", "en", "ru")
    return [
        (f"reader{n}@{domains[n % len(domains)]}", languages[n % len(languages)])
        for n in range(count)
    ]


def run_send(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, app: FastAPI, extra: int = 0
) -> SentScenario:
    """Sign up READERS and ``extra`` more (+1 invalid event), confirm all but one, send the
    sample edition."""
    refused = refusing(smtp)
    with rt.session() as session:
        edition = save_edition(session, read_edition(SAMPLE_EDITION), rt.clock.now())
    for n, (address, language) in enumerate(READERS + more_readers(extra)):
        actors.handle_signup.send(
            {"version": 1, "event_id": f"e{n}", "email": address, "language": language}
        )
    actors.handle_signup.send(
        {"version": 1, "event_id": "bad", "email": "broken@", "language": "en"}
    )
    stub_worker.join()
    client = TestClient(app)
    for recipient, path in _links(smtp, r"http://testserver(/confirm/\S+)").items():
        if not recipient.startswith("pending.only"):
            assert client.post(path, data={"confirm": "1"}).status_code == 200
    smtp.handler.received.clear()
    refused.add(REFUSED)  # the mailbox disappears between confirmation and the send
    with rt.session() as session:
        send_id = create_send(session, edition, rt.clock.now(), 2).id
    actors.plan_send.send(send_id)
    stub_worker.join()
    return SentScenario(
        send_id, client, _links(smtp, r"<http://testserver(/u/[^>]+)>", header=True)
    )


def _links(smtp: OutboxServer, pattern: str, header: bool = False) -> dict[str, str]:
    links = {}
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        text = str(message["List-Unsubscribe"]) if header else body_text(message, "plain")
        match = re.search(pattern, text)
        if match:
            links[received.recipients[0]] = match.group(1)
    return links
