"""Signup → confirm → send through the real Redis broker, with worker processes started by the
dramatiq CLI exactly as an operator starts them, on SQLite and on PostgreSQL.

The test process plays the website (it writes dramatiq messages to Redis: once through
``RedisBroker.enqueue``, once as the raw ``MULTI/HSET/RPUSH`` a PHP or Node site writes) and the
reader (it presses the buttons behind the confirmation links through the web app)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY_ENV, redis_url
from worker.db import dispose_engines
from worker.devtools.outbox import OutboxServer
from worker.editions.files import read_edition
from worker.editions.store import find_edition, save_edition
from worker.models import Delivery, Send, SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.sending.sends import create_send
from worker.settings import Settings
from worker.web.app import create_app

pytestmark = pytest.mark.slow  # two dramatiq worker processes per test: 10–30 s each

BROKER_REDIS = redis_url(2)
SECRET = "real-broker-test-secret-0123456789"
NAMESPACE = "dramatiq"  # the default of NEWSLETTER_QUEUE_NAMESPACE
QUEUES = ("signups", "transactional", "sends", "deliveries")
WAIT = 45.0  # seconds for any one step; a step takes 1–3 s on an idle machine

READERS = [
    ("anna@example.org", "en"),
    ("Ivan.Petrov@Example.ORG", "en"),
    ("chytach@ПРЫКЛАД.БЕЛ", "be"),
    ("ales@example.net", "be"),
    ("olga@example.com", "ru"),
    ("pending.only@example.com", "ru"),
]
CONFIRMED = {
    "anna@example.org": "en",
    "Ivan.Petrov@example.org": "en",
    "chytach@xn--80aiqesg1f.xn--90ais": "be",
    "ales@example.net": "be",
    "olga@example.com": "ru",
}
INVALID: list[tuple[Any, str]] = [
    ({"version": 1, "event_id": "bad-1", "email": "broken@", "language": "en"}, "invalid_address"),
    (
        {"version": 1, "event_id": "bad-2", "email": "x@example.org", "language": "xx"},
        "unsupported_language",
    ),
    ({"version": 1, "event_id": "bad-3", "language": "en"}, "malformed"),  # no email
    ({"version": 1, "event_id": "bad-4", "email": 42, "language": "en"}, "malformed"),
    (
        {"version": 1, "event_id": "bad-5", "email": "y@example.org", "language": ["en"]},
        "malformed",
    ),
    ("not an object", "malformed"),
    ([1, 2, 3], "malformed"),
]


def event(n: int, address: str, language: str) -> dict[str, Any]:
    return {
        "version": 1,
        "event_id": f"rb-{n}",
        "email": address,
        "language": language,
        "source": "test",
        "ip": f"192.0.2.{n + 1}",
        "consent_version": "2024-07",
    }


def worker_env(db_url: str, smtp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        NEWSLETTER_BROKER="redis",
        NEWSLETTER_REDIS_URL=BROKER_REDIS,
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_SMTP_URL=smtp_url,
        NEWSLETTER_SECRET_KEY=SECRET,
        NEWSLETTER_PUBLIC_URL="http://testserver",
        NEWSLETTER_BOUNCE_DOMAIN="news.example.org",
        NEWSLETTER_NEWSLETTER_PATH=str(SAMPLE_EDITION / "newsletter.yaml"),
        NEWSLETTER_SEND_BATCH_SIZE="2",
    )
    return env


class Website:
    """Writes messages to the workers' Redis the way a website would."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(BROKER_REDIS)
        self.broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=BROKER_REDIS, namespace=NAMESPACE
        )

    def enqueue(self, queue: str, actor: str, *args: Any) -> None:
        self.broker.enqueue(
            dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
        )

    def enqueue_raw_signup(self, payload: Any) -> None:
        """The exact write a non-Python site makes (HSET before RPUSH, in one transaction)."""
        rid = str(uuid.uuid4())
        message = {
            "queue_name": "signups",
            "actor_name": "handle_signup",
            "args": [payload],
            "kwargs": {},
            "options": {"redis_message_id": rid},
            "message_id": rid,
            "message_timestamp": int(time.time() * 1000),
        }
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{NAMESPACE}:signups.msgs", rid, json.dumps(message))
            pipe.rpush(f"{NAMESPACE}:signups", rid)
            pipe.execute()

    def idle(self) -> bool:
        """No message waiting, delayed or unacknowledged on any queue (dramatiq keeps each
        message in ``<queue>.msgs`` until its actor returned)."""
        return all(
            self.client.hlen(f"{NAMESPACE}:{q}{suffix}.msgs") == 0
            for q in QUEUES
            for suffix in ("", ".DQ")
        )

    def dead_letters(self) -> int:
        return sum(int(self.client.zcard(f"{NAMESPACE}:{q}.XQ")) for q in QUEUES)

    def close(self) -> None:
        self.broker.close()
        self.client.close()


@pytest.fixture
def website() -> Iterator[Website]:
    client = redis.Redis.from_url(BROKER_REDIS)
    client.flushdb()
    site = Website()
    yield site
    site.close()
    client.flushdb()
    client.close()


@pytest.fixture
def workers(db_url: str, smtp: OutboxServer, website: Website, tmp_path: Path) -> Iterator[Any]:
    """``python -m dramatiq worker.actors --processes 2 --threads 2``; killed at teardown."""
    log = (tmp_path / "workers.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "worker.actors", "--processes", "2", "--threads", "2"],
        env=worker_env(db_url, smtp.url),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the teardown kills every process in it
    )
    try:
        yield process
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture
def runtime(db_url: str, smtp: OutboxServer) -> Iterator[Runtime]:
    """The test's own view of the database (same secret key as the workers)."""
    settings = Settings.from_env(
        DATA_KEY_ENV,
        database_url=db_url,
        broker="stub",
        redis_url="",
        smtp_url=smtp.url,
        secret_key=SECRET,
        public_url="http://testserver",
        bounce_domain="news.example.org",
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    rt = Runtime(settings)
    yield rt
    dispose_engines()


def wait_for(what: str, condition: Callable[[], bool], process: Any, tmp_path: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        log = (tmp_path / "workers.log").read_text(errors="replace")
        assert process.poll() is None, f"the workers died while waiting for {what}:\n{log}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log[-3000:]}"
        time.sleep(0.1)


def edition_mails(smtp: OutboxServer) -> list[tuple[str, email.message.EmailMessage]]:
    out = []
    for received in list(smtp.handler.received):
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        if message["X-Newsletter-Edition"]:
            out.append((received.recipients[0], message))
    return out


def confirmation_links(smtp: OutboxServer) -> dict[str, str]:
    links = {}
    for received in list(smtp.handler.received):
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        match = re.search(r"http://testserver(/confirm/\S+)", body_text(message, "plain"))
        if match:
            links[received.recipients[0]] = match.group(1)
    return links


def count(rt: Runtime, model: Any) -> int:
    with rt.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_signup_confirm_send_through_redis_and_worker_processes(
    workers: Any, website: Website, smtp: OutboxServer, runtime: Runtime, tmp_path: Path
) -> None:
    def wait(what: str, condition: Callable[[], bool]) -> None:
        wait_for(what, condition, workers, tmp_path)

    with runtime.session() as session:
        save_edition(session, read_edition(SAMPLE_EDITION), runtime.clock.now())

    # signups: one confirmation mail per valid signup
    for n, (address, language) in enumerate(READERS):
        website.enqueue("signups", "handle_signup", event(n, address, language))
    wait("confirmation mails", lambda: len(confirmation_links(smtp)) == len(READERS))
    links = confirmation_links(smtp)
    assert set(links) == {*CONFIRMED, "pending.only@example.com"}

    # confirmation through the page: GET shows a button, POST confirms
    client = TestClient(create_app(runtime))
    for address, path in links.items():
        if address in CONFIRMED:
            assert 'method="post"' in client.get(path).text
            assert client.post(path, data={"confirm": "1"}).status_code == 200
    wait("queues to drain", website.idle)
    smtp.handler.received.clear()

    # the send: exactly one message per confirmed subscriber, in their language
    edition = read_edition(SAMPLE_EDITION)
    with runtime.session() as session:
        stored = find_edition(session, "2024-W28")
        assert stored is not None
        send_id = int(create_send(session, stored, runtime.clock.now(), 2).id)
    website.enqueue("sends", "plan_send", send_id)

    def finished() -> bool:
        with runtime.session() as session:
            send = session.get(Send, send_id, populate_existing=True)
            return send is not None and send.status == "finished"

    wait("the send to finish", finished)
    wait("queues to drain", website.idle)
    mails = edition_mails(smtp)
    assert sorted(rcpt for rcpt, _ in mails) == sorted(CONFIRMED)
    for rcpt, message in mails:
        assert message["Subject"] == edition.contents[CONFIRMED[rcpt]].subject
    with runtime.session() as session:
        states = dict(
            session.execute(
                select(Delivery.state, func.count())
                .where(Delivery.send_id == send_id)
                .group_by(Delivery.state)
            ).all()
        )
    assert states == {"sent": len(CONFIRMED)}

    # the same send again: nothing more
    website.enqueue("sends", "plan_send", send_id)
    wait("queues to drain", website.idle)
    time.sleep(0.5)
    assert len(edition_mails(smtp)) == len(CONFIRMED)

    # invalid signups are refused and recorded; the workers keep going
    for payload, _ in INVALID:
        website.enqueue("signups", "handle_signup", payload)
    wait("refusals", lambda: count(runtime, SignupRefusal) == len(INVALID))
    with runtime.session() as session:
        reasons = sorted(r.reason for r in session.scalars(select(SignupRefusal)))
    assert reasons == sorted(reason for _, reason in INVALID)
    assert website.dead_letters() == 0
    assert workers.poll() is None

    # ...and a valid signup afterwards, written raw as a PHP or Node site would, is processed
    smtp.handler.received.clear()
    website.enqueue_raw_signup(event(50, "late@example.org", "ru"))
    wait("the late signup's confirmation", lambda: "late@example.org" in confirmation_links(smtp))
    wait("queues to drain", website.idle)
    with runtime.session() as session:
        late = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "late@example.org")
        ).one()
        assert (late.status, late.language) == ("pending", "ru")
    assert len(smtp.handler.received) == 1  # handled once: the raw message was acknowledged
