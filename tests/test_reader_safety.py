"""A seized database or Redis names no reader (issue 17).

The operators' scenario runs for real (signups through the actors, confirmations through the
web app, a send through the worker with one recipient refused ``550 5.1.1 <address>``), then a
bounce and a complaint come back through the SMTP receiver, one reader unsubscribes in one
click and one signup event is refused. Then the whole database (``pg_dump``; the SQLite file
and its journal) and every Redis key and value are searched for the readers' addresses: in any
case, in Unicode and as A-labels, and distinctive local parts alone. Also: with the data key
missing or wrong, no process starts and nothing is written.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import idna
import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import func, select, text

from tests.operator_scenario import READERS, more_readers, run_send
from tests.sendkit import seed
from tests.services import DATA_KEY_ENV
from tests.stub_worker import StubWorker
from worker import actors
from worker.cli import main
from worker.db import dispose_engines, engine_for, make_engine
from worker.devtools.outbox import OutboxServer, free_port
from worker.feedback.smtp_receiver import InboundServer
from worker.models import FeedbackEvent, SignupRefusal, Subscriber, Suppression
from worker.runtime import Runtime
from worker.safety import keyring
from worker.safety.data_keys import rotate
from worker.safety.keyring import new_data_key
from worker.settings import Settings
from worker.web.app import create_app

REFUSED_EVENT_ADDRESS = "Refused.Reader@example.org"  # in a signup event refused as invalid
DISTINCTIVE_LOCAL_PARTS = ("pending.only", "refused.reader")


def _forms(address: str) -> set[str]:
    """The ways ``address`` may be written: as given, lower, upper, with the domain as A-labels
    or in Unicode."""
    local, _, domain = address.rpartition("@")
    domains = {domain, domain.lower()}
    with contextlib.suppress(idna.IDNAError):
        domains.add(idna.encode(domain.lower(), uts46=True).decode())
    if domain.lower().startswith("xn--") or ".xn--" in domain.lower():
        domains.add(idna.decode(domain.lower()))
    forms = set()
    for d in domains:
        for text_ in (f"{local}@{d}", f"{local.lower()}@{d.lower()}"):
            forms |= {text_, text_.lower(), text_.upper()}
    return forms


def _leaks(blob: bytes, addresses: list[str]) -> list[str]:
    """The needles found in ``blob`` (case-insensitive for ASCII, every form for Unicode)."""
    lowered = blob.lower()
    found = []
    for address in addresses:
        for form in _forms(address):
            if form.encode() in blob or form.lower().encode() in lowered:
                found.append(form)
    for local in DISTINCTIVE_LOCAL_PARTS:
        if local.encode() in lowered:
            found.append(local)
    return sorted(set(found))


def _database_bytes(url: str) -> bytes:
    dispose_engines()  # SQLite: checkpoint the WAL into the file; PostgreSQL: nothing pending
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return b"".join(
            Path(f"{path}{suffix}").read_bytes()
            for suffix in ("", "-wal", "-journal")
            if Path(f"{path}{suffix}").exists()
        )
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", plain], check=True, capture_output=True).stdout


def _redis_bytes(url: str) -> bytes:
    client = redis.Redis.from_url(url)
    try:
        parts = []
        for key in client.scan_iter(count=1000):
            parts.append(key)
            parts.append(client.dump(key) or b"")
        return b"\n".join(parts)
    finally:
        client.close()


def _deliver(server: InboundServer, raw: str, to: str) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=120) as client:
        client.sendmail("", [to], raw.replace("\n", "\r\n").encode())


def _dsn(verp: str, recipient: str) -> str:
    return (
        f"From: MAILER-DAEMON@mx.example.com\nTo: {verp}\n"
        "Subject: Undelivered Mail Returned to Sender\nMessage-ID: <dsn-1@mx.example.com>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
        "--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: User unknown\n\n"
        "--B\nContent-Type: text/rfc822-headers\n\n"
        f"Return-Path: <{verp}>\nTo: {recipient}\n\n--B--\n"
    )


def _arf(verp: str, message_id: str, recipient: str) -> str:
    return (
        "From: Feedback Loop <fbl@mail.example.com>\nTo: fbl@news.example.org\n"
        "Subject: FW: Weekly news\nMessage-ID: <arf-1@mail.example.com>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nA user marked this message as spam.\n\n"
        "--B\nContent-Type: message/feedback-report\n\n"
        "Feedback-Type: abuse\nUser-Agent: FBL/1.0\nVersion: 1\n"
        f"Original-Rcpt-To: <{recipient}>\n\n"
        f"--B\nContent-Type: message/rfc822\n\nReturn-Path: <{verp}>\nTo: {recipient}\n"
        f"Message-ID: {message_id}\n\nHello.\n\n--B--\n"
    )


def test_database_and_redis_name_no_reader(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    # Given the operators' scenario with readers at IDN domains too, a refused signup event
    # holding an address, and the relay refusing one reader with her address in its reply
    extra = more_readers(8)
    addresses = [a for a, _ in READERS + extra] + [REFUSED_EVENT_ADDRESS]
    scenario = run_send(rt, smtp, stub_worker, create_app(rt), extra=len(extra))
    actors.handle_signup.send({"version": 99, "event_id": "odd", "email": REFUSED_EVENT_ADDRESS})
    copies = {}
    for received in smtp.handler.received:
        message = email.message_from_bytes(received.data, policy=email.policy.default)
        copies[received.recipients[0]] = (received.envelope_from, str(message["Message-ID"]))
    # When a bounce and a complaint come back through the SMTP receiver,
    with InboundServer(rt.settings, port=free_port()) as receiver:
        verp, _ = copies["anna@example.org"]
        _deliver(receiver, _dsn(verp, "anna@example.org"), to=verp)
        verp, message_id = copies["ivan@example.org"]
        _deliver(receiver, _arf(verp, message_id, "ivan@example.org"), "fbl@news.example.org")
    # and a reader unsubscribes in one click
    one_click = scenario.client.post(
        scenario.unsubscribe_paths["olga@example.com"],
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    stub_worker.join()

    # Then everything happened, and the application still reads the addresses
    with rt.session() as session:
        kinds = set(session.scalars(select(FeedbackEvent.kind)))
        assert {"hard_bounce", "complaint", "unsubscribe"} <= kinds
        suppressed = set(session.scalars(select(Suppression.email)))
        assert "anna@example.org" in suppressed
        assert session.scalar(select(func.count()).select_from(SignupRefusal)) == 2
        anna = session.scalars(
            select(Subscriber).where(Subscriber.email_key == "anna@example.org")
        ).one()
        assert anna.email == "anna@example.org" and anna.status == "suppressed"
        assert set(session.scalars(select(Subscriber.domain))) <= {"gmail.com", "yandex.ru",
            "mail.ru", "outlook.com", "tut.by", "other"}  # fmt: skip
    # …but the database, dumped whole, and Redis name none of them
    database = _database_bytes(rt.settings.database_url)
    assert b"subscriber" in database  # the dump is the real thing
    assert _leaks(database, addresses) == []
    assert _leaks(_redis_bytes(rt.settings.redis_url), addresses) == []


def test_the_needles_find_what_they_look_for() -> None:
    """The search itself: an address in any case or as A-labels is found."""
    blob = b"x CHYTACH@XN--80A1ACN3A.XN--90AIS y"
    assert _leaks(blob, ["chytach@пошта.бел"]) != []
    assert _leaks(b"..Pending.Only..", []) == ["pending.only"]


SECRET = "reader-safety-secret-0123456789"


@pytest.fixture
def restore_test_key() -> Iterator[None]:
    """These tests install keys of their own; the suite's key comes back afterwards."""
    yield
    dispose_engines()
    keyring.install(keyring.keyring_from_env(DATA_KEY_ENV))


def _settings(url: str, **keys: str) -> Settings:
    env = {f"NEWSLETTER_{name.upper()}": value for name, value in keys.items()}
    return Settings.from_env(env, database_url=url, secret_key=SECRET)


def _seed_reader(settings: Settings, addresses: list[str]) -> None:
    """Confirmed readers, written through a runtime (so sealed under ``settings``' keys)."""
    rt = Runtime(settings)
    seed(rt, addresses)
    rt.close()


def _invoke(url: str, args: list[str], **keys: str) -> Result:
    env = {"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": SECRET}
    env.update({"NEWSLETTER_DATA_KEY": "", "NEWSLETTER_DATA_KEYS": ""})
    env.update({f"NEWSLETTER_{name.upper()}": value for name, value in keys.items()})
    return CliRunner().invoke(main, args, env=env)


def _stored_emails(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT email FROM subscriber ORDER BY id")))
    finally:
        engine.dispose()


def test_without_the_right_data_key_no_process_starts_and_nothing_is_written(
    sqlite_url: str, restore_test_key: None
) -> None:
    # Given a database with one reader, sealed under one key
    key = new_data_key()
    _seed_reader(_settings(sqlite_url, data_key=key), ["lesia@example.org"])
    dispose_engines()
    before = _stored_emails(sqlite_url)
    # When a command that writes starts without a key, with another key, or with a key file
    # that does not hold a key
    missing = _invoke(sqlite_url, ["subscribers", "erase", "lesia@example.org", "--yes"])
    wrong = _invoke(
        sqlite_url, ["subscribers", "erase", "lesia@example.org", "--yes"], data_key=new_data_key()
    )
    # Then each refuses with a message naming the variable and how to make a key
    assert missing.exit_code == 1, missing.output
    assert "NEWSLETTER_DATA_KEY" in missing.output
    assert "newsletter keys generate --data" in missing.output
    assert wrong.exit_code == 1, wrong.output
    assert "not the key this database was sealed with" in wrong.output
    # and nothing was written
    assert _stored_emails(sqlite_url) == before
    # while the right key opens it
    shown = _invoke(sqlite_url, ["subscribers", "show", "LESIA@example.org"], data_key=key)
    assert shown.exit_code == 0, shown.output
    assert "lesia@example.org" in shown.output


def test_rotation_reseals_everything_and_the_old_key_can_go(
    db_url: str, restore_test_key: None
) -> None:
    # Given readers sealed under key 1
    old, new = new_data_key(), new_data_key()
    _seed_reader(_settings(db_url, data_key=old), [f"reader{n}@example.org" for n in range(7)])
    dispose_engines()
    # When key 2 is configured first and the rotation runs, interrupted after one batch
    both = _settings(db_url, data_keys=f"2:{new},1:{old}")
    engine = engine_for(both)
    ring = keyring.current()
    with pytest.raises(KeyboardInterrupt):

        def stop(table: str, done: int, todo: int) -> None:
            if done:
                raise KeyboardInterrupt

        rotate(engine, ring, batch_size=3, progress=stop)
    # and once more to the end
    done = rotate(engine, ring, batch_size=3)
    # Then the second run re-sealed only what the first had not
    assert done.resealed == 7 - 3 and done.skipped >= 3
    assert {keyring.key_id_of(e) for e in _stored_emails(db_url)} == {2}
    dispose_engines()
    # and key 2 alone opens the database and finds readers by address; key 1 alone is refused
    alone = _invoke(db_url, ["subscribers", "show", "reader5@example.org"], data_key=new,
                    data_key_id="2")  # fmt: skip
    assert alone.exit_code == 0, alone.output
    assert "reader5@example.org" in alone.output
    stale = _invoke(db_url, ["subscribers", "show", "reader5@example.org"], data_key=old)
    assert stale.exit_code == 1
    assert "key id 2" in stale.output or "not configured" in stale.output
