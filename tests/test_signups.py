"""Signup ingestion (raw Redis message from a non-Python site, HTTP endpoint), no enumeration,
consent, lifecycle (language change, re-signup, purge) and the person's data (show/export/erase)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.event import listen as event_listen
from sqlalchemy.event import remove as event_remove

from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY_ENV
from tests.stub_worker import StubWorker
from worker import actors
from worker.cli import main
from worker.devtools.outbox import OutboxServer
from worker.models import Base, Consent, SignupRefusal, Subscriber, Suppression
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions import signups
from worker.subscriptions.lifecycle import purge_unconfirmed, unsubscribe_by_token
from worker.subscriptions.signups import confirm, confirmation_token
from worker.subscriptions.suppressions import email_hash, suppress
from worker.subscriptions.tokens import Purpose, unsubscribe_token
from worker.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent


JSON = {"Content-Type": "application/json"}


def event(n: int | str, address: object, language: str = "en", **extra: str) -> dict[str, object]:
    return {"version": 1, "event_id": f"s-{n}", "email": address, "language": language, **extra}


def count(rt: Runtime, model: type[Base]) -> int:
    with rt.session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def reasons(rt: Runtime) -> list[str]:
    with rt.session() as session:
        return list(session.scalars(select(SignupRefusal.reason).order_by(SignupRefusal.id)))


def raw_enqueue(client: redis.Redis, namespace: str, payload: dict[str, object] | str) -> str:
    """Exactly what a PHP or Node site does (docs/signup-event.md): one MULTI/EXEC."""
    rid = str(uuid.uuid4())
    message = {
        "queue_name": "signups",
        "actor_name": "handle_signup",
        "args": [payload],
        "kwargs": {},
        "options": {"redis_message_id": rid},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    pipe = client.pipeline(transaction=True)  # MULTI ... EXEC
    pipe.hset(f"{namespace}:signups.msgs", rid, json.dumps(message))
    pipe.rpush(f"{namespace}:signups", rid)
    pipe.execute()
    return rid


def test_raw_redis_message_from_another_language_is_processed_by_a_real_worker(
    pg_url: str, redis_url: str, smtp: OutboxServer, tmp_path: Path
) -> None:
    from worker.db import make_engine
    from worker.models import Base

    engine = make_engine(pg_url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()
    namespace = f"signup-test-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    # Given four messages written straight to Redis: a good event, one JSON-encoded twice (as
    # some PHP code does), one with a CR/LF header injection, and one that is not JSON at all
    raw_enqueue(client, namespace, event(1, "Olga@Example.COM", "ru", ip="203.0.113.1"))
    raw_enqueue(client, namespace, json.dumps(event(2, "chytach@ПРЫКЛАД.БЕЛ", "be")))
    raw_enqueue(
        client, namespace, event(3, "x@example.org", user_agent="UA\r\nBcc: victim@example.net")
    )
    raw_enqueue(client, namespace, "{not json")
    env = {
        **os.environ,
        "NEWSLETTER_BROKER": "redis",
        "NEWSLETTER_REDIS_URL": redis_url,
        "NEWSLETTER_QUEUE_NAMESPACE": namespace,
        "NEWSLETTER_DATABASE_URL": pg_url,
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
        "NEWSLETTER_PUBLIC_URL": "http://testserver",
        "NEWSLETTER_NEWSLETTER_PATH": str(SAMPLE_EDITION / "newsletter.yaml"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "worker.actors", "--processes", "1", "--threads", "2",
         "--queues", "signups", "transactional"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        rt = Runtime(
            Settings.from_env(
                DATA_KEY_ENV, database_url=pg_url, secret_key="test-secret-key-0123456789"
            )
        )
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if len(smtp.handler.received) >= 2 and count(rt, SignupRefusal) >= 2:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # let the worker ack
        # Then two confirmation mails went out, the two bad events are on record with reasons
        assert sorted(r.recipients[0] for r in smtp.handler.received) == [
            "Olga@example.com",
            "chytach@xn--80aiqesg1f.xn--90ais",
        ]
        got = reasons(rt)
        assert sorted(got) == ["malformed", "malformed"]
        with rt.session() as session:
            details = {r.event_id: r.detail for r in session.scalars(select(SignupRefusal))}
        assert "user_agent" in details["s-3"] and "control characters" in details["s-3"]
        assert details[None].startswith("event: not JSON")
        # And every message was acknowledged (none left in flight or queued)
        assert client.hlen(f"{namespace}:signups.msgs") == 0
        assert client.llen(f"{namespace}:signups") == 0
    finally:
        worker.terminate()
        worker.wait(20)
        for key in client.keys(f"{namespace}:*"):
            client.delete(key)


def test_http_endpoint_validates_with_the_same_schema_and_records_refusals(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    client = TestClient(create_app(rt), client=("198.51.100.23", 50000))
    ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Firefox/128.0"

    accepted = client.post(
        "/signup",
        json=event(1, "anna@example.org", source="footer", consent_version="v3"),
        headers={"User-Agent": ua},
    )
    cases = {
        "not JSON": client.post("/signup", content=b"email=anna@example.org", headers=JSON),
        "unknown field": client.post("/signup", json={**event(2, "a@example.org"), "emial": "x"}),
        "wrong type": client.post("/signup", json=event(3, ["a@example.org"])),
        "header injection": client.post(
            "/signup", json=event(4, "b@example.org", source="x\r\nBcc: y@z")
        ),
        "bad address": client.post("/signup", json=event(5, "reader@example.org.")),
        "language": client.post("/signup", json=event(6, "c@example.org", language="de")),
    }
    huge = client.post("/signup", content=b'{"email": "' + b"a" * 70_000 + b'"}', headers=JSON)
    stub_worker.join()

    assert (accepted.status_code, accepted.json()) == (202, {"status": "accepted"})
    assert {name: r.status_code for name, r in cases.items()} == {name: 400 for name in cases}
    assert [r.json()["reason"] for r in cases.values()] == [
        "malformed", "malformed", "malformed", "malformed", "invalid_address",
        "unsupported_language",
    ]  # fmt: skip
    # Over NEWSLETTER_SIGNUP_MAX_BYTES: 413 before the body is read, and nothing stored
    assert (huge.status_code, huge.json()) == (
        413,
        {"detail": "request body too large: at most 65536 bytes on /signup"},
    )
    assert "emial" in cases["unknown field"].json()["detail"]
    assert "domain_ends_with_dot" in cases["bad address"].json()["detail"]
    assert len(reasons(rt)) == 6  # every refusal recorded, none lost
    # The accepted one: a confirmation mail, consent with the request's IP and User-Agent
    assert [r.recipients for r in smtp.handler.received] == [["anna@example.org"]]
    with rt.session() as session:
        consent = session.scalars(select(Consent)).one()
        assert (consent.ip, consent.user_agent, consent.source, consent.consent_version) == (
            "198.51.100.0/24", "Firefox", "footer", "v3",
        )  # fmt: skip


def drain(queue_name: str) -> int:
    """Run the messages waiting on a StubBroker queue in this thread; returns how many."""
    import dramatiq

    from worker.broker import current

    broker = current()
    queue, done = broker.queues[queue_name], 0
    while not queue.empty():
        message = dramatiq.Message.decode(queue.get_nowait())
        queue.task_done()  # or the broker's join() waits for it forever
        broker.get_actor(message.actor_name)(*message.args)
        done += 1
    return done


def test_same_answer_for_new_pending_confirmed_and_suppressed_addresses(
    settings: Settings, smtp: OutboxServer
) -> None:
    from worker.broker import current

    broker = current()
    broker.flush_all()
    rt = Runtime(
        replace(settings, confirmations_per_domain_per_minute=0, signups_per_ip_per_hour=0)
    )
    actors.use_runtime(rt)
    client = TestClient(create_app(rt), client=("198.51.100.80", 50000))
    for n, address in enumerate(["pending@example.org", "confirmed@example.org"]):
        actors.handle_signup(event(f"pre-{n}", address))
    with rt.session() as session:
        confirmed = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "confirmed@example.org")
        ).one()
        confirm(session, rt.tokens, confirmation_token(rt.tokens, confirmed), max_age_seconds=60,
                now=rt.clock.now(), ip=None, user_agent=None)  # fmt: skip
        suppress(session, dedupe_key="suppressed@example.org", hash_key=rt.settings.secret_key,
                 reason="complaint", now=rt.clock.now())  # fmt: skip
    broker.flush_all()
    smtp.handler.received.clear()  # the two first mails, sent by handle_signup itself
    states = {
        "new": "new{}@example.org",
        "pending": "pending@example.org",
        "confirmed": "confirmed@example.org",
        "suppressed": "suppressed@example.org",
    }

    statements: list[str] = []

    def count_statement(*args: object) -> None:
        statements.append(str(args[2]))

    # When each state is signed up 50 times (interleaved), counting every SQL statement
    answers: dict[str, set[tuple[int, bytes, tuple[tuple[str, str], ...]]]] = {
        s: set() for s in states
    }
    event_listen(rt.engine, "before_cursor_execute", count_statement)
    try:
        for n in range(50):
            for state, address in states.items():
                response = client.post("/signup", json=event(f"{state}-{n}", address.format(n)))
                headers = tuple(sorted(response.headers.items()))
                answers[state].add((response.status_code, response.content, headers))
    finally:
        event_remove(rt.engine, "before_cursor_execute", count_statement)
    try:
        assert drain("signups") == 200
        drain("transactional")
    finally:
        broker.flush_all()
        actors.use_runtime(None)

    # Then the answers (status, body, every header) are byte for byte the same, and the
    # endpoint read nothing about any address (only, once, the newsletter's languages), so no
    # state of the address can shape the answer or its timing (timing is measured by bench/, not
    # asserted here: under load it is noise)
    assert {state: len(a) for state, a in answers.items()} == {s: 1 for s in states}
    assert len(set().union(*answers.values())) == 1
    assert len(statements) <= 1 and all("FROM newsletter" in sql for sql in statements)
    # And behind the same answer: each new address got one mail; the pending one none (its
    # first mail, sent before, holds the resend window); the confirmed and suppressed none
    recipients = [r.recipients[0] for r in smtp.handler.received]
    assert len(recipients) == 50 and all(r.startswith("new") for r in recipients)


def test_a_signup_naming_another_language_changes_a_confirmed_reader_only_once_they_confirm(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a confirmed reader of the Belarusian edition
    client = TestClient(create_app(rt), client=("198.51.100.31", 50000))
    client.post("/signup", json=event(1, "ales@example.net", "be"))
    stub_worker.join()
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        first_link = confirmation_token(rt.tokens, subscriber)
    assert client.post(f"/confirm/{first_link}").status_code == 200
    smtp.handler.received.clear()

    # When someone else signs the address up again naming Russian, over HTTP
    stranger = TestClient(create_app(rt), client=("203.0.113.66", 40000))
    assert stranger.post("/signup", json=event(2, "ALES@example.net", "ru-RU")).status_code == 202
    stub_worker.join()

    # Then nothing changed yet: the reader is confirmed in Belarusian and got one mail to confirm
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert (subscriber.status, subscriber.language) == ("confirmed", "be")
        nonce = subscriber.confirm_nonce
    assert [r.recipients for r in smtp.handler.received] == [["ales@example.net"]]
    mail = email.message_from_bytes(smtp.handler.received[0].data, policy=email.policy.default)
    texts = [p.get_content() for p in mail.walk() if p.get_content_maintype() == "text"]
    # The link in the mail (in the reader's language, Belarusian) carries the pending change's
    # nonce; compared by its claims, not as a string: the token holds the second it was issued.
    [change_link] = set(re.findall(r"/confirm/([\w.-]+)", texts[0]))
    assert "Пацвердзіць падпіску" in texts[0]
    assert nonce is not None and rt.tokens.check(Purpose.CONFIRM, change_link).nonce == nonce
    assert change_link != first_link and client.post(f"/confirm/{first_link}").status_code == 410

    # And when the reader confirms the change, the language is Russian and the link is spent
    assert client.post(f"/confirm/{change_link}").status_code == 200
    assert client.post(f"/confirm/{change_link}").status_code == 410
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert (subscriber.status, subscriber.language) == ("confirmed", "ru")
        assert subscriber.confirm_nonce is None
        assert [(c.language, c.confirmed_at is not None) for c in subscriber.consents] == [
            ("be", True),
            ("ru", True),
        ]


def test_a_signup_in_the_same_language_sends_a_confirmed_reader_nothing(
    rt: Runtime, smtp: OutboxServer
) -> None:
    actors.handle_signup(event(1, "same@example.net", "be"))
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        confirm(session, rt.tokens, confirmation_token(rt.tokens, subscriber), max_age_seconds=60,
                now=rt.clock.now(), ip=None, user_agent=None)  # fmt: skip
    smtp.handler.received.clear()
    actors.handle_signup(event(2, "Same@example.net", "be"))
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert (subscriber.status, subscriber.confirm_nonce) == ("confirmed", None)


def test_an_unsubscribed_person_signing_up_again_goes_through_double_opt_in(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    actors.handle_signup.send(event(1, "back@example.org"))
    stub_worker.join()
    smtp.handler.received.clear()
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        old_link = confirmation_token(rt.tokens, subscriber)
        confirm(
            session,
            rt.tokens,
            old_link,
            max_age_seconds=60,
            now=rt.clock.now(),
            ip=None,
            user_agent=None,
        )
        unsubscribe_by_token(
            session,
            rt.tokens,
            unsubscribe_token(rt.tokens, subscriber.id),
            source="page",
            now=rt.clock.now(),
        )

    actors.handle_signup.send(event(2, "back@example.org"))
    stub_worker.join()

    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert subscriber.status == "pending"
        new_link = confirmation_token(rt.tokens, subscriber)
    assert new_link != old_link
    assert [r.recipients for r in smtp.handler.received] == [["back@example.org"]]
    client = TestClient(create_app(rt))
    assert client.post(f"/confirm/{old_link}").status_code == 410  # the old link stays used
    assert client.post(f"/confirm/{new_link}").status_code == 200


def test_purge_unconfirmed_after_n_days(rt: Runtime) -> None:
    now = rt.clock.now()
    for n, address in enumerate(
        ["old@example.org", "fresh@example.org", "was.confirmed@example.org"]
    ):
        actors.handle_signup(event(n, address))
    with rt.session() as session:
        rows = {s.email: s for s in session.scalars(select(Subscriber))}
        rows["old@example.org"].updated_at = now - timedelta(days=15)
        was = rows["was.confirmed@example.org"]
        confirm(session, rt.tokens, confirmation_token(rt.tokens, was), max_age_seconds=60, now=now,
                ip=None, user_agent=None)  # fmt: skip
        unsubscribe_by_token(
            session, rt.tokens, unsubscribe_token(rt.tokens, was.id), source="page", now=now
        )
    actors.handle_signup(event(9, "was.confirmed@example.org"))  # signed up again, never confirmed
    with rt.session() as session:
        session.scalars(
            select(Subscriber).where(Subscriber.email_key == "was.confirmed@example.org")
        ).one().updated_at = now - timedelta(days=20)

    with rt.session() as session:
        purged = purge_unconfirmed(session, now=now, older_than=timedelta(days=14))

    assert purged == 2
    with rt.session() as session:
        left = {s.email: s.status for s in session.scalars(select(Subscriber))}
        assert left == {"fresh@example.org": "pending", "was.confirmed@example.org": "unsubscribed"}
        kept = session.scalars(select(Consent.event_id).order_by(Consent.event_id)).all()
        assert kept == [
            "s-1",
            "s-2",
        ]  # the stale unconfirmed consents went, the confirmed one stays


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in (
        "database_url",
        "redis_url",
        "smtp_url",
        "secret_key",
        "newsletter_path",
        "public_url",
    ):
        monkeypatch.setenv(f"NEWSLETTER_{name.upper()}", str(getattr(settings, name)))
    return settings


def test_show_export_erase_and_no_re_adding(
    rt: Runtime, cli_env: Settings, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    first = event(1, "Ivan.Petrov@Example.org", "be", ip="203.0.113.20", user_agent="UA/1")
    actors.handle_signup({**first, "source": "footer", "consent_version": "v2"})
    actors.handle_signup(event(2, "ivan.petrov@example.ORG.", "be"))  # refused, holds the address
    runner = CliRunner()

    shown = runner.invoke(main, ["subscribers", "show", "ivan.petrov@example.org"])
    exported = runner.invoke(main, ["subscribers", "export", "IVAN.PETROV@example.org"])

    assert shown.exit_code == 0, shown.output
    assert "Ivan.Petrov@example.org [weekly] pending, language be" in shown.output
    assert "from 203.0.113.0/24 via footer (text v2)" in shown.output
    record = json.loads(exported.stdout)  # the export notice is on stderr
    [sub] = record["subscribers"]
    assert sub["email"] == "Ivan.Petrov@example.org" and sub["consents"][0]["user_agent"] == "Other"
    assert [r["reason"] for r in record["refused_signups"]] == ["invalid_address"]

    erased = runner.invoke(main, ["subscribers", "erase", "ivan.petrov@example.org", "--yes"])
    assert erased.exit_code == 0, erased.output
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        assert subscriber.email.endswith("@erased.invalid") and subscriber.status == "suppressed"
        assert session.scalars(select(Consent)).all() == []
        assert session.scalars(select(SignupRefusal)).all() == []
        suppression = session.scalars(select(Suppression)).one()
        assert (suppression.email, suppression.reason) == (None, "erasure")
        assert suppression.email_hash == email_hash(
            "ivan.petrov@example.org", rt.settings.secret_key
        )
    after = json.loads(
        runner.invoke(main, ["subscribers", "export", "ivan.petrov@example.org"]).stdout
    )
    assert after["subscribers"] == [] and after["refused_signups"] == []
    assert [s["reason"] for s in after["suppressions"]] == ["erasure"]
    nothing = json.dumps(after, ensure_ascii=False).lower()
    assert "203.0.113.20" not in nothing and "ua/1" not in nothing

    # A new signup cannot add the person again
    stub_worker.join()
    smtp.handler.received.clear()  # the confirmation mail of the first signup
    actors.handle_signup.send(event(3, "IVAN.petrov@example.org", "en"))
    stub_worker.join()
    assert smtp.handler.received == []
    assert count(rt, Subscriber) == 1 and count(rt, Consent) == 0
    with rt.session() as session:  # the refused signup is on record, without the address
        refusal = session.scalars(select(SignupRefusal)).one()
        assert (refusal.reason, refusal.payload) == ("suppressed", "{}")


def test_scheduler_purges(rt: Runtime, cli_env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    actors.handle_signup(event(1, "stale@example.org"))
    actors.handle_signup(event(2, "broken@"))  # a refusal of 31 days ago, and one of today
    actors.handle_signup(event(3, "broken-too@"))
    with rt.session() as session:
        session.scalars(select(Subscriber)).one().updated_at = rt.clock.now() - timedelta(days=30)
        old = session.scalars(select(SignupRefusal).where(SignupRefusal.event_id == "s-2")).one()
        old.received_at = rt.clock.now() - timedelta(days=31)

    result = CliRunner().invoke(main, ["scheduler", "--once"])

    assert result.exit_code == 0, result.output
    assert "purged: 1 signups left unconfirmed" in result.output
    assert "purged: 1 signup refusals" in result.output  # NEWSLETTER_REFUSAL_RETENTION_DAYS=30
    assert count(rt, Subscriber) == 0
    with rt.session() as session:
        assert list(session.scalars(select(SignupRefusal.event_id))) == ["s-3"]


def test_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "NEWSLETTER_SIGNUPS_PER_IP_PER_HOUR": "7",
            "NEWSLETTER_CONFIRMATIONS_PER_ADDRESS_PER_DAY": "2",
            "NEWSLETTER_CONFIRMATIONS_PER_DOMAIN_PER_MINUTE": "30",
            "NEWSLETTER_CONFIRMATION_RESEND_MINUTES": "15",
            "NEWSLETTER_PURGE_UNCONFIRMED_DAYS": "10",
            "NEWSLETTER_WELCOME_MAIL": "yes",
            "NEWSLETTER_SMTPUTF8_RELAY": "no",
            "NEWSLETTER_STORED_REFUSALS_PER_HOUR": "50",
            "NEWSLETTER_STORED_REFUSALS_PER_SOURCE_PER_HOUR": "5",
            "NEWSLETTER_REFUSAL_RETENTION_DAYS": "7",
            "NEWSLETTER_SIGNUP_KEY": "website-key-1,website-key-0",
            "NEWSLETTER_TRUSTED_PROXIES": "10.0.0.0/8,::1",
        }
    )
    from worker.subscriptions.limits import AbuseLimits

    assert AbuseLimits.from_settings(settings) == AbuseLimits(2, 7, 30, 900.0, 5, 50)
    assert (settings.refusal_retention_days, settings.trusted_proxies) == (7.0, "10.0.0.0/8,::1")
    assert settings.signup_key == "website-key-1,website-key-0"
    assert "website-key" not in repr(settings)
    assert (settings.purge_unconfirmed_days, settings.welcome_mail, settings.smtputf8_relay) == (
        10.0,
        True,
        False,
    )
    assert replace(settings, confirmation_expiry_hours=1).confirmation_expiry_hours == 1


def test_a_signup_meeting_a_concurrent_insert_of_its_address_records_one_reader(
    rt: Runtime, smtp: OutboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reader already signed up, and a lookup that does not see the row (as when another
    # worker inserts it between this signup's lookup and its insert)
    actors.handle_signup(event(1, "race@example.net"))
    real = signups._look_up
    monkeypatch.setattr(signups, "_look_up", lambda *a: replace(real(*a), subscriber_id=None))
    # When a second signup event of the same address comes
    actors.handle_signup(event(2, "Race@example.net"))
    # Then the Core insert meets the row (ON CONFLICT DO NOTHING) and the signup goes the general
    # way: still one pending subscriber, and both events are recorded as consents
    with rt.session() as session:
        statuses = session.scalars(select(Subscriber.status)).all()
        events = sorted(session.scalars(select(Consent.event_id)).all())
    assert statuses == ["pending"]
    assert len(events) == 2


def test_one_line_refuses_exactly_the_control_characters() -> None:
    # The regex that replaced a category look-up per character refuses what it refused: every
    # character of Unicode's category Cc, and nothing else (tabs, NUL, DEL, C1 alike)
    import unicodedata

    from worker.subscriptions.signups import _one_line

    def refused(ch: str) -> bool:
        try:
            _one_line(f"a{ch}b")
        except ValueError:
            return True
        return False

    every = [chr(i) for i in range(0x110000) if not 0xD800 <= i <= 0xDFFF]
    assert [c for c in every if refused(c)] == [c for c in every if unicodedata.category(c) == "Cc"]
