"""Abuse limits on the real Redis: per IP, per address, per resend window, per recipient domain,
shared by processes; and what they mean end to end (mails actually sent)."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.models import Consent, SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.evidence import network_of
from worker.subscriptions.limits import (
    ALLOWED,
    AbuseLimits,
    MemorySignupLimiter,
    RedisSignupLimiter,
)
from worker.subscriptions.signups import MAX_REFUSAL_DETAIL, MAX_REFUSAL_PAYLOAD
from worker.web.app import create_app
from worker.web.callers import SIGNATURE_HEADER, signature


def limiter(redis_url: str, **limits: Any) -> RedisSignupLimiter:
    return RedisSignupLimiter(redis.Redis.from_url(redis_url), AbuseLimits(**limits), "k")


def test_signups_per_ip_per_hour(redis_url: str) -> None:
    limits = limiter(redis_url, signups_per_ip_per_hour=3)

    verdicts = [limits.allow_signup("203.0.113.7") for _ in range(5)]

    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert verdicts[3].reason == "ip_limit"
    assert 3590 < verdicts[3].retry_after <= 3600
    assert limits.allow_signup("203.0.113.8").allowed  # another IP has its own window
    client = redis.Redis.from_url(redis_url)
    assert not any(b"203.0.113" in key for key in client.keys("*"))  # keys are keyed hashes


def test_confirmations_per_address_per_day_and_resend_window(redis_url: str) -> None:
    limits = limiter(redis_url, confirmations_per_address_per_day=2, resend_window_seconds=1.5)

    first, again = (
        limits.allow_confirmation("a@example.org"),
        limits.allow_confirmation("a@example.org"),
    )
    time.sleep(1.6)
    second = limits.allow_confirmation("a@example.org")
    time.sleep(1.6)
    third = limits.allow_confirmation("a@example.org")

    assert (first.allowed, again.allowed, again.reason) == (True, False, "resend_window")
    assert 0 < again.retry_after <= 1.5
    assert second.allowed
    assert (third.allowed, third.reason) == (False, "address_limit")
    assert 86_390 < third.retry_after <= 86_400


def test_refused_call_counts_in_no_window(redis_url: str) -> None:
    # The resend window refuses first; the daily count must not be used up by refused calls.
    limits = limiter(redis_url, confirmations_per_address_per_day=2, resend_window_seconds=2.0)
    assert limits.allow_confirmation("b@example.org").allowed
    for _ in range(10):
        assert limits.allow_confirmation("b@example.org").reason == "resend_window"
    time.sleep(2.1)
    assert limits.allow_confirmation("b@example.org").allowed


def test_confirmations_per_domain_per_minute(redis_url: str) -> None:
    limits = limiter(redis_url, confirmations_per_domain_per_minute=4)
    verdicts = [limits.allow_domain("gmail.com") for _ in range(6)]
    assert [v.allowed for v in verdicts] == [True] * 4 + [False] * 2
    assert verdicts[4].reason == "domain_limit" and 59 < verdicts[4].retry_after <= 60
    assert limits.allow_domain("mail.ru").allowed


def test_zero_means_unlimited(redis_url: str) -> None:
    limits = limiter(
        redis_url,
        signups_per_ip_per_hour=0,
        confirmations_per_address_per_day=0,
        confirmations_per_domain_per_minute=0,
        resend_window_seconds=0,
    )
    assert all(limits.allow_signup("198.51.100.1").allowed for _ in range(50))
    assert all(limits.allow_confirmation("c@example.org").allowed for _ in range(50))
    assert all(limits.allow_domain("example.org").allowed for _ in range(50))


def _hammer(redis_url: str, rounds: int, results: Any) -> None:
    limits = limiter(redis_url, confirmations_per_address_per_day=7, resend_window_seconds=0)
    results.put(sum(limits.allow_confirmation("victim@example.org").allowed for _ in range(rounds)))


def test_limit_holds_across_processes(redis_url: str) -> None:
    # Given 6 processes each asking 50 times for a mail to the same address
    results: Any = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(target=_hammer, args=(redis_url, 50, results))
        for _ in range(6)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    # Then exactly the daily limit was granted, in total
    assert sum(results.get(timeout=5) for _ in workers) == 7


def test_memory_limiter_has_the_same_rules() -> None:
    now = [1000.0]
    limits = MemorySignupLimiter(
        AbuseLimits(confirmations_per_address_per_day=2, resend_window_seconds=600),
        "k",
        lambda: now[0],
    )
    assert limits.allow_confirmation("d@example.org").allowed
    assert limits.allow_confirmation("D@EXAMPLE.ORG").reason == "resend_window"
    now[0] += 601
    assert limits.allow_confirmation("d@example.org").allowed
    now[0] += 601
    verdict = limits.allow_confirmation("d@example.org")
    assert verdict.reason == "address_limit" and verdict.retry_after == pytest.approx(86_400 - 1202)


# End to end: the actor, real Redis limits, real SMTP server.


def signup(n: int, address: str, ip: str | None = None, language: str = "en") -> dict[str, Any]:
    event = {"version": 1, "event_id": f"abuse-{n}", "email": address, "language": language}
    return {**event, "ip": ip} if ip else event


@pytest.fixture
def limited_rt(settings: Settings, stub_worker: StubWorker) -> Iterator[Runtime]:
    # After stub_worker, whose ``rt`` fixture installs the default runtime for the actors.
    from worker.db import dispose_engines

    rt = Runtime(
        replace(
            settings,
            signups_per_ip_per_hour=5,
            confirmations_per_address_per_day=3,
            confirmations_per_domain_per_minute=100,
            confirmation_resend_minutes=10,
        )
    )
    actors.use_runtime(rt)
    with rt.session() as session:  # created before concurrent actors would race to create it
        rt.newsletter(session)
    yield rt
    actors.use_runtime(None)
    dispose_engines()


def refusals(rt: Runtime) -> dict[str, int]:
    with rt.session() as session:
        rows = session.execute(
            select(SignupRefusal.reason, func.count()).group_by(SignupRefusal.reason)
        )
        return {reason: n for reason, n in rows.all()}


def test_a_bombed_address_gets_one_mail_per_window(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a bot signing the same stranger up 40 times from 40 addresses in one window
    for n in range(40):
        actors.handle_signup.send(signup(n, "Stranger@Example.org", ip=f"198.51.100.{n}"))
    stub_worker.join()

    # Then the stranger got one confirmation mail, and 39 limited signups are on record
    assert [r.recipients for r in smtp.handler.received] == [["Stranger@example.org"]]
    assert refusals(limited_rt) == {"resend_window": 39}
    with limited_rt.session() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 1


def test_one_ip_signing_up_many_addresses_is_stopped_after_the_hourly_limit(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    for n in range(12):
        actors.handle_signup.send(signup(n, f"person{n}@example.net", ip="203.0.113.9"))
    stub_worker.join()

    assert len(smtp.handler.received) == 5
    assert refusals(limited_rt) == {"ip_limit": 7}
    with limited_rt.session() as session:  # refused signups store no subscriber
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 5


def test_suppressed_address_gets_nothing(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    from worker.subscriptions.suppressions import suppress

    with limited_rt.session() as session:
        suppress(
            session,
            dedupe_key="bounced@example.org",
            hash_key=limited_rt.settings.secret_key,
            reason="hard_bounce",
            now=limited_rt.clock.now(),
        )
    actors.handle_signup.send(signup(1, "Bounced@Example.org"))
    stub_worker.join()

    assert smtp.handler.received == []
    with limited_rt.session() as session:
        assert session.scalars(select(Subscriber)).all() == []
        refusal = session.scalars(select(SignupRefusal)).one()
        assert (refusal.event_id, refusal.reason, refusal.payload) == (
            "abuse-1",
            "suppressed",
            "{}",
        )


def test_domain_limit_paces_confirmation_mails(settings: Settings, smtp: OutboxServer) -> None:
    from worker.broker import current

    broker = current()
    broker.flush_all()
    rt = Runtime(replace(settings, confirmations_per_domain_per_minute=3))
    actors.use_runtime(rt)
    try:
        # Given six signups, five at gmail.com, run by the actors one by one
        for n in range(5):
            actors.handle_signup(signup(n, f"reader{n}@gmail.com"))
        actors.handle_signup(signup(9, "reader@mail.ru", language="ru"))
        queued = broker.queues["transactional"]
        while not queued.empty():
            message = dramatiq.Message.decode(queued.get_nowait())
            queued.task_done()  # or the broker's join() waits for it forever
            actors.send_confirmation(*message.args)

        # Then three went to gmail.com (the per-minute limit) and one to mail.ru at once
        domains = sorted(r.recipients[0].split("@")[1] for r in smtp.handler.received)
        assert domains == ["gmail.com"] * 3 + ["mail.ru"]
        # And the other two wait in dramatiq's delay queue for the next free slot (<= 60 s)
        delayed = [
            dramatiq.Message.decode(m) for m in list(broker.queues["transactional.DQ"].queue)
        ]
        assert len(delayed) == 2
        assert all(0 < m.options["eta"] - m.message_timestamp <= 60_010 for m in delayed)
        with rt.session() as session:
            unsent = session.scalars(
                select(Subscriber).where(Subscriber.confirmation_sent_at.is_(None))
            ).all()
            assert sorted(s.id for s in unsent) == sorted(m.args[0] for m in delayed)
    finally:
        broker.flush_all()
        actors.use_runtime(None)


# Attacks on POST /signup over HTTP (issue 13): the app, the actor, real Redis, both databases.


JSON = {"Content-Type": "application/json"}


def http_signup(n: int, address: str, **extra: object) -> dict[str, object]:
    return {"version": 1, "event_id": f"http-{n}", "email": address, "language": "en", **extra}


def consents(rt: Runtime) -> list[tuple[str | None, str | None]]:
    with rt.session() as session:
        rows = session.execute(select(Consent.ip, Consent.user_agent).order_by(Consent.id))
        return [(ip, agent) for ip, agent in rows.all()]


def test_a_forged_or_null_ip_field_does_not_bypass_the_ip_limit(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given one client (limit: 5 signups per IP per hour) that writes its own evidence fields
    client = TestClient(create_app(limited_rt), client=("203.0.113.50", 40000))
    forged: list[dict[str, object]] = [
        {"ip": None},
        {"ip": "192.0.2.1"},
        {"user_agent": "Forged/1.0"},
        {"occurred_at": "2020-01-01T00:00:00Z"},
    ]

    # When it posts 12 signups for 12 addresses
    answers = [
        client.post(
            "/signup",
            json=http_signup(n, f"p{n}@example.net", **forged[n % 4]),
            headers={"User-Agent": "Bot/2.0"},
        ).status_code
        for n in range(12)
    ]
    stub_worker.join()

    # Then 5 got through, 7 were refused by the per-IP limit, and the evidence is the request's
    assert answers == [202] * 12
    assert len(smtp.handler.received) == 5
    assert refusals(limited_rt) == {"ip_limit": 7}
    assert consents(limited_rt) == [("203.0.113.0/24", "Bot")] * 5  # network, family
    with limited_rt.session() as session:
        assert all(c.year >= 2026 for c in session.scalars(select(Consent.signed_up_at)))


def test_only_the_signing_website_is_believed_about_ip_and_user_agent(
    settings: Settings, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    rt = Runtime(replace(settings, signup_key="new-website-key,old-website-key"))
    actors.use_runtime(rt)
    website = TestClient(create_app(rt), client=("192.0.2.10", 40000))
    now = int(rt.clock.now().timestamp())

    def post(n: int, key: str | None, stamp: int = now) -> int:
        body = json.dumps(
            http_signup(n, f"w{n}@example.net", ip="198.51.100.77", user_agent="Reader's Firefox")
        ).encode()
        headers = {**JSON, "User-Agent": "Website-Backend/1.0"}
        if key is not None:
            headers[SIGNATURE_HEADER] = signature(key, stamp, body)
        response = website.post("/signup", content=body, headers=headers)
        return int(response.status_code)

    answers = {
        "signed": post(1, "new-website-key"),
        "old key": post(2, "old-website-key"),
        "wrong key": post(3, "guessed-key"),
        "replayed late": post(4, "new-website-key", now - 301),
        "unsigned": post(5, None),
    }
    stub_worker.join()

    assert answers == {"signed": 202, "old key": 202, "wrong key": 401, "replayed late": 401,
                       "unsigned": 202}  # fmt: skip
    # (sorted: the stub worker's threads record the three signups in any order)
    assert sorted(consents(rt)) == [
        ("192.0.2.0/24", "Other"),  # unsigned: its own ip and user_agent ignored
        *[("198.51.100.0/24", "Other")] * 2,
    ]
    actors.use_runtime(None)


@pytest.mark.parametrize(
    ("peer", "forwarded", "seen"),
    [
        ("198.51.100.9", "203.0.113.1", "198.51.100.9"),  # not a proxy: its header is ignored
        ("10.0.0.5", "203.0.113.1, 198.51.100.20", "198.51.100.20"),  # rightmost untrusted hop
        ("10.0.0.5", "198.51.100.21, 10.0.0.6", "198.51.100.21"),  # through two proxies
        ("10.0.0.5", "not-an-ip, 198.51.100.22", "198.51.100.22"),
        ("10.0.0.5", "198.51.100.23, not-an-ip", "10.0.0.5"),  # nothing left of junk counts
    ],
)
def test_x_forwarded_for_counts_only_from_trusted_proxies(
    limited_rt: Runtime, stub_worker: StubWorker, peer: str, forwarded: str, seen: str
) -> None:
    behind_proxy = Runtime(replace(limited_rt.settings, trusted_proxies="10.0.0.0/8"))
    client = TestClient(create_app(behind_proxy), client=(peer, 40000))

    response = client.post(
        "/signup", json=http_signup(1, "xff@example.net"), headers={"X-Forwarded-For": forwarded}
    )
    stub_worker.join()

    assert response.status_code == 202
    assert [ip for ip, _ in consents(limited_rt)] == [network_of(seen)]  # kept: the network


def test_ipv6_clients_are_limited_per_64(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given one attacker rotating through addresses of its /64 (limit: 5 per IP per hour)
    app = create_app(limited_rt)
    for n in range(8):
        client = TestClient(app, client=(f"2001:db8:1:2::{n + 1:x}", 40000))
        client.post("/signup", json=http_signup(n, f"v{n}@example.net"))
    # And a neighbour in the next /64
    TestClient(app, client=("2001:db8:1:3::1", 40000)).post(
        "/signup", json=http_signup(9, "neighbour@example.net")
    )
    stub_worker.join()

    assert len(smtp.handler.received) == 6
    assert refusals(limited_rt) == {"ip_limit": 3}


def test_plus_tags_and_gmail_dots_do_not_multiply_confirmation_mails(
    limited_rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a bot signing up variants of one mailbox from 12 IPs
    app = create_app(limited_rt)
    variants = [f"target+{n}@example.org" for n in range(6)] + [
        "t.arget@gmail.com", "ta.rget+x@googlemail.com", "TARGET@gmail.com",
        "t-a-r-g-e-t@ya.ru", "t.a.r.g.e.t@yandex.by", "t-a.r-g.e-t+1@yandex.ru",
    ]  # fmt: skip
    for n, address in enumerate(variants):
        client = TestClient(app, client=(f"198.51.100.{n + 1}", 40000))
        assert client.post("/signup", json=http_signup(n, address)).status_code == 202
    stub_worker.join()

    # Then each mailbox got one confirmation mail in the resend window, not 12 (which variant
    # got it depends on which the worker's threads took first)
    mailbox = {"example.org": "example", "gmail.com": "gmail", "googlemail.com": "gmail"}
    mailbox |= {domain: "yandex" for domain in ("ya.ru", "yandex.by", "yandex.ru")}
    mailboxes = sorted(mailbox[r.recipients[0].split("@")[1]] for r in smtp.handler.received)
    assert mailboxes == ["example", "gmail", "yandex"]
    assert refusals(limited_rt) == {"resend_window": 9}
    with limited_rt.session() as session:  # limit refusals keep no address
        assert set(session.scalars(select(SignupRefusal.payload))) == {"{}"}


def test_a_flood_of_refusals_cannot_grow_the_database_without_bound(
    settings: Settings, stub_worker: StubWorker
) -> None:
    # Given a limit of 20 stored refusals per source and 50 per hour in all
    rt = Runtime(
        replace(settings, stored_refusals_per_source_per_hour=20, stored_refusals_per_hour=50)
    )
    actors.use_runtime(rt)
    app = create_app(rt)
    junk = b'{"email": "' + b"x" * 60_000 + b'"}'  # just under the body limit

    # When 10 clients post 30 refused bodies of 60 KB each (18 MB in all)
    answers = []
    for source in range(10):
        client = TestClient(app, client=(f"203.0.113.{source + 1}", 40000))
        answers += [
            client.post("/signup", content=junk, headers=JSON).status_code for _ in range(30)
        ]
    stub_worker.join()

    # Then every one was answered 400, and at most 50 rows of at most 1.6 KB (sealed) were stored
    assert answers == [400] * 300
    with rt.session() as session:
        rows, stored = session.execute(
            select(
                func.count(),
                func.sum(func.length(SignupRefusal.payload) + func.length(SignupRefusal.detail)),
            )
        ).one()
    print(f"\n300 refused 60 KB POSTs stored {rows} rows, {stored} characters")
    assert rows == 50
    # each stored sealed (worker/safety/keyring.py): the size of the largest allowed ones
    from worker.safety import keyring

    largest = len(keyring.current().seal("x" * MAX_REFUSAL_PAYLOAD, "payload")) + len(
        keyring.current().seal("x" * MAX_REFUSAL_DETAIL, "detail")
    )
    assert stored <= 50 * largest
    actors.use_runtime(None)


def test_refusals_are_purged_after_the_retention_days(rt: Runtime) -> None:
    from worker.subscriptions.signups import SignupRefused, purge_refusals, record_refusal

    now = rt.clock.now()
    with rt.session() as session:
        for age in (31, 29, 0):
            refusal = SignupRefused("malformed", f"{age} days old")
            record_refusal(session, refusal, {}, now - timedelta(days=age))
    with rt.session() as session:
        assert purge_refusals(session, now=now, older_than=timedelta(days=30)) == 1
        details = sorted(session.scalars(select(SignupRefusal.detail)))
    assert details == ["0 days old", "29 days old"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "text/plain",
            b'{"version": 1, "event_id": "x", "email": "v@example.org", "language": "en"}',
        ),
        ("application/x-www-form-urlencoded", b"email=v%40example.org&language=en"),
        ("multipart/form-data; boundary=x", b"--x\r\n\r\nv@example.org\r\n--x--\r\n"),
        (None, b'{"version": 1, "event_id": "x", "email": "v@example.org", "language": "en"}'),
    ],
)
def test_cross_origin_simple_requests_are_refused(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker, content_type: str | None, body: bytes
) -> None:
    # A page on another site can post these without a CORS preflight (Fetch standard, "CORS-
    # safelisted request-header"): a victim's browser would sign them up from their own IP.
    client = TestClient(create_app(rt), client=("198.51.100.99", 40000))
    headers = {"Origin": "https://evil.example"}
    if content_type:
        headers["Content-Type"] = content_type

    response = client.post("/signup", content=body, headers=headers)
    stub_worker.join()

    assert (response.status_code, response.json()["reason"]) == (415, "unsupported_media_type")
    assert smtp.handler.received == []
    assert refusals(rt) == {}
    with rt.session() as session:
        assert session.scalars(select(Subscriber)).all() == []


def test_a_too_long_address_is_refused_naming_the_rule(rt: Runtime) -> None:
    client = TestClient(create_app(rt), client=("198.51.100.98", 40000))
    cases = {
        "reader" * 41 + "@example.org": "local_part_too_long",
        "a" * 330: "too_long",
        "reader@" + "b" * 64 + ".org": "domain_label_too_long",
        "reader@": "no_domain",
    }
    answers = {
        address: client.post("/signup", json=http_signup(n, address)).json()
        for n, address in enumerate(cases)
    }
    assert {a: (r["reason"], r["code"]) for a, r in answers.items()} == {
        a: ("invalid_address", code) for a, code in cases.items()
    }


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_the_ip_and_the_mailbox_in_one_call_count_as_two_calls_would(
    redis_url: str, kind: str
) -> None:
    # Given one signup per IP and one confirmation per mailbox a day
    settings = AbuseLimits(
        signups_per_ip_per_hour=1, confirmations_per_address_per_day=1, resend_window_seconds=0
    )
    limits = (
        RedisSignupLimiter(redis.Redis.from_url(redis_url), settings, "k")
        if kind == "redis"
        else MemorySignupLimiter(settings, "k")
    )
    # When a new reader signs up, Then both are allowed and both counted
    assert limits.allow_signup_and_confirmation("203.0.113.9", "e@example.org") == (
        ALLOWED,
        ALLOWED,
    )
    assert limits.allow_confirmation("e@example.org").reason == "address_limit"
    # When the IP is refused, Then the mailbox is neither checked nor counted
    ip, mailbox = limits.allow_signup_and_confirmation("203.0.113.9", "f@example.org")
    assert (ip.reason, mailbox) == ("ip_limit", None)
    assert limits.allow_confirmation("f@example.org").allowed
    # When the IP is allowed and the mailbox refused, Then the IP is counted all the same
    ip, mailbox = limits.allow_signup_and_confirmation("198.51.100.9", "f@example.org")
    assert ip.allowed and mailbox is not None and mailbox.reason == "address_limit"
    assert limits.allow_signup("198.51.100.9").reason == "ip_limit"


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_a_new_readers_limits_and_domain_slot_in_one_call_count_as_three_calls_would(
    redis_url: str, kind: str
) -> None:
    # Given one signup per IP, one confirmation per mailbox a day and one mail per domain a minute
    settings = AbuseLimits(
        signups_per_ip_per_hour=1,
        confirmations_per_address_per_day=1,
        confirmations_per_domain_per_minute=1,
        resend_window_seconds=0,
    )
    limits = (
        RedisSignupLimiter(redis.Redis.from_url(redis_url), settings, "k")
        if kind == "redis"
        else MemorySignupLimiter(settings, "k")
    )
    # When a new reader signs up, Then all three are allowed and counted
    assert limits.allow_new_reader("203.0.113.9", "a@example.org", "example.org") == (
        ALLOWED,
        ALLOWED,
        ALLOWED,
    )
    assert limits.allow_domain("example.org").reason == "domain_limit"
    assert limits.allow_confirmation("a@example.org").reason == "address_limit"
    # When the IP is refused, Then neither the mailbox nor the domain is checked or counted
    ip, mailbox, slot = limits.allow_new_reader("203.0.113.9", "b@example.org", "example.net")
    assert (ip.reason, mailbox, slot) == ("ip_limit", None, None)
    # When the mailbox is refused, Then the domain's slot is not taken
    ip, mailbox, slot = limits.allow_new_reader("198.51.100.1", "a@example.org", "example.net")
    assert ip.allowed and mailbox is not None and mailbox.reason == "address_limit"
    assert slot is None
    # When only the domain is full, Then the IP and the mailbox are counted and the slot waits
    ip, mailbox, slot = limits.allow_new_reader("198.51.100.2", "c@example.org", "example.org")
    assert ip.allowed and mailbox == ALLOWED
    assert slot is not None and slot.reason == "domain_limit" and 0 < slot.retry_after <= 60
    assert limits.allow_confirmation("c@example.org").reason == "address_limit"
    # Without an IP (an event through the queue), Then the mailbox and the domain only
    assert limits.allow_new_reader(None, "d@example.org", "example.net") == (
        ALLOWED,
        ALLOWED,
        ALLOWED,
    )
    assert limits.allow_domain("example.net").reason == "domain_limit"
    # (the "example.net" slot stayed free for d@ above: the refused calls took none)
