"""Consent evidence and abuse limits that cannot name a reader: the network (/24, /48) and the
user agent's family are stored, never the full IP or the raw User-Agent; Redis holds keyed
hashes only, each expiring with its window."""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.stub_worker import StubWorker
from worker import actors
from worker.devtools.outbox import OutboxServer
from worker.models import Consent, SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings
from worker.subscriptions.evidence import agent_family, network_of, scrub_payload
from worker.subscriptions.limits import AbuseLimits, RedisSignupLimiter, limit_key
from worker.subscriptions.signups import confirmation_token
from worker.web.app import create_app

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1"


@pytest.mark.parametrize(
    ("ip", "kept"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
        ("2001:DB8:abcd:12::1%eth0", "2001:db8:abcd::/48"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),  # IPv4-mapped: its IPv4 network
        ("198.51.100.0/24", "198.51.100.0/24"),  # already a network (a re-imported export)
        ("unknown", None),
        ("", None),
        (None, None),
    ],
)
def test_only_the_network_of_an_ip_is_kept(ip: str | None, kept: str | None) -> None:
    assert network_of(ip) == kept


@pytest.mark.parametrize(
    ("agent", "family"),
    [
        (FIREFOX, "Firefox"),
        (CHROME_ANDROID, "Chrome Mobile"),
        (THUNDERBIRD, "Thunderbird"),
        ("curl/8.5.0", "curl"),
        ("Website-Backend/1.0", "Other"),
        ("   ", None),
        (None, None),
    ],
)
def test_only_the_family_of_a_user_agent_is_kept(agent: str | None, family: str | None) -> None:
    assert agent_family(agent) == family


def test_a_refusal_payload_keeps_network_and_family_in_every_shape() -> None:
    event = {"email": "x", "ip": "203.0.113.77", "user_agent": FIREFOX, "language": "en"}

    for shape in (event, json.dumps(event), json.dumps(event).encode()):
        assert scrub_payload(shape) == {**event, "ip": "203.0.113.0/24", "user_agent": "Firefox"}
    assert scrub_payload("not json 203.0.113.77") == "not json 203.0.113.77"  # masked by caller


def test_consent_and_refusal_rows_hold_no_full_ip_and_no_raw_user_agent(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given a reader who signs up, confirms from another network, and a refused bad signup
    app = TestClient(create_app(rt), client=("2001:db8:77:1::5", 40000))
    actors.handle_signup(
        {
            "version": 1,
            "event_id": "ev-1",
            "email": "lesia@example.org",
            "language": "en",
            "ip": "198.51.100.23",
            "user_agent": CHROME_ANDROID,
        }
    )
    actors.handle_signup(
        {
            "version": 1,
            "event_id": "ev-2",
            "email": "not-an-address",
            "language": "en",
            "ip": "198.51.100.24",
            "user_agent": FIREFOX,
            "note": "from 192.0.2.200",
        }
    )
    stub_worker.join()
    with rt.session() as session:
        subscriber = session.scalars(select(Subscriber)).one()
        path = f"/confirm/{confirmation_token(rt.tokens, subscriber)}"

    # When the reader confirms
    assert app.post(path, headers={"User-Agent": THUNDERBIRD}).status_code == 200

    # Then the consent holds networks and families, the refusal the same, nothing more
    with rt.session() as session:
        consent = session.scalars(select(Consent)).one()
        refusal = session.scalars(select(SignupRefusal)).one()
    assert (consent.ip, consent.user_agent, consent.confirm_ip, consent.confirm_user_agent) == (
        "198.51.100.0/24", "Chrome Mobile", "2001:db8:77::/48", "Thunderbird",
    )  # fmt: skip
    stored = json.loads(refusal.payload)
    assert (stored["ip"], stored["user_agent"]) == ("198.51.100.0/24", "Firefox")
    assert stored["note"] == "from 192.0.2.0/24"
    for full in ("198.51.100.23", "198.51.100.24", "192.0.2.200", "2001:db8:77:1::5"):
        assert full not in refusal.payload and full not in repr(consent.__dict__)


def test_redis_holds_no_address_ip_or_domain_and_every_key_expires(redis_url: str) -> None:
    # Given the limiter under a secret key, used for one reader's signup and confirmation
    client = redis.Redis.from_url(redis_url)
    limits = RedisSignupLimiter(client, AbuseLimits(), "the-secret-key")
    limits.allow_signup("203.0.113.77")
    limits.allow_record("203.0.113.77")
    limits.allow_confirmation("anna.k@reader-owned.example")
    limits.allow_domain("reader-owned.example")

    # Then no key or value names the reader, and every key dies with its window
    keys: list[bytes] = list(client.keys("newsletter:*"))  # type: ignore[arg-type]
    members: list[bytes] = [m for key in keys for m in client.zrange(key, 0, -1)]  # type: ignore[misc]
    dump = b" ".join(keys + members)
    assert len(client.keys("newsletter:abuse:*")) == 6  # ip, record×2, resend, address, domain
    for secret in (b"203.0.113", b"anna", b"reader-owned", b"the-secret-key"):
        assert secret not in dump
    assert all(0 < client.pttl(key) <= 86_400_000 for key in client.keys("newsletter:abuse:*"))


def test_the_hash_key_is_derived_not_the_secret_itself() -> None:
    assert limit_key("s") != b"s" and len(limit_key("s")) == 32
    assert limit_key("s") != limit_key("t")


def test_every_export_says_it_is_the_only_way_addresses_leave(
    rt: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("database_url", "redis_url", "secret_key", "newsletter_path"):
        monkeypatch.setenv(f"NEWSLETTER_{name.upper()}", str(getattr(settings, name)))
    from click.testing import CliRunner

    from worker.cli import main
    from worker.subscriptions.people import EXPORT_NOTICE

    runner = CliRunner()
    for argv in (["subscribers", "export", "a@example.org"], ["suppressions", "export", "-"],
                 ["subscribers", "list"]):  # fmt: skip
        result = runner.invoke(main, argv)
        assert result.exit_code == 0, result.output
        assert EXPORT_NOTICE in result.stderr
        assert "only way addresses leave" in EXPORT_NOTICE
