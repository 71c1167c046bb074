"""The IMAP poller with imaplib over a real socket against a small in-test IMAP server
(tests/imap_server.py): stored, processed, then moved or deleted; never removed otherwise."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from tests.imap_server import ImapServer
from tests.test_feedback import CASES, load_world, product_shape
from worker.db import make_engine
from worker.feedback.imap_poller import ImapMailbox, ImapPoller
from worker.models import Base, FeedbackEvent, InboundMessage, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def imap() -> Iterator[ImapServer]:
    with ImapServer() as server:
        yield server


def poller(settings: Settings, url: str) -> ImapPoller:
    return ImapPoller(settings, ImapMailbox.from_url(url))


def test_mailbox_url() -> None:
    box = ImapMailbox.from_url("imaps://bounce%40news:p%3Ass@imap.example.org/Bounces?done=Done")
    assert (box.host, box.port, box.user, box.password, box.folder, box.done_folder, box.tls) == (
        "imap.example.org",
        993,
        "bounce@news",
        "p:ss",
        "Bounces",
        "Done",
        "implicit",
    )
    assert ImapMailbox.from_url("imap://u@h").port == 143
    with pytest.raises(ValueError):
        ImapMailbox.from_url("pop3://u@h/")


def test_messages_are_stored_processed_and_moved(rt: Runtime, imap: ImapServer) -> None:
    with rt.session() as session:
        world = load_world(session)
    bounce = product_shape(
        (CASES / "bounces" / "b01_postfix_5_1_1_headers_only.eml").read_bytes(),
        world,
        rt.settings.secret_key,
    )
    imap.state.deliver(bounce)
    imap.state.deliver(b"\xff\xfe garbage \x00 that is no mail at all")

    result = poller(rt.settings, imap.url(done="Processed")).poll_once()

    assert (result.seen, result.done, result.kept) == (2, 2, 0)
    assert imap.state.folders["INBOX"] == []
    assert imap.state.folders["Processed"][0].raw == bounce
    with rt.session() as session:
        stored = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        assert stored[0].raw == bounce
        assert all(m.source == "imap" and m.parsed_at is not None for m in stored)
        subscriber = session.get(Subscriber, world.subscriber["s41809"])
        assert subscriber is not None and subscriber.status == "suppressed"


def test_without_a_done_folder_messages_are_flagged_and_expunged(
    rt: Runtime, imap: ImapServer
) -> None:
    imap.state.deliver((CASES / "bounces" / "b04_dsn_action_delayed_4_4_7.eml").read_bytes())
    result = poller(rt.settings, imap.url()).poll_once()
    assert result.done == 1 and imap.state.folders["INBOX"] == []


def test_nothing_is_removed_unless_stored_and_processed(
    settings: Settings, imap: ImapServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'half.db'}"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:  # recording fails: the feedback table is gone
        conn.execute(text("DROP TABLE feedback_event"))
    half = dataclasses.replace(settings, database_url=url)
    raw = (CASES / "bounces" / "b02_gmail_552_5_2_2_over_quota.eml").read_bytes()
    imap.state.deliver(raw)

    first = poller(half, imap.url(done="Processed")).poll_once()

    assert (first.done, first.kept) == (0, 1)
    [kept] = imap.state.folders["INBOX"]
    assert kept.flags == set() and "Processed" not in imap.state.folders
    with engine.connect() as conn:  # stored all the same, waiting to be processed
        digest = conn.execute(text("SELECT digest FROM inbound_message")).scalar_one()
        assert digest == hashlib.sha256(raw).hexdigest()

    Base.metadata.create_all(engine)  # the database is repaired
    second = poller(half, imap.url(done="Processed")).poll_once()

    assert (second.done, second.kept) == (1, 0)
    assert imap.state.folders["INBOX"] == [] and len(imap.state.folders["Processed"]) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM inbound_message")).scalar_one() == 1
        assert conn.execute(text("SELECT kind FROM feedback_event")).scalar_one() == "soft_bounce"
    engine.dispose()


def test_a_database_that_cannot_store_keeps_every_message(
    settings: Settings, imap: ImapServer, tmp_path: Path
) -> None:
    broken = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    imap.state.deliver(b"Subject: x\r\n\r\nbody\r\n")
    result = poller(broken, imap.url()).poll_once()
    assert (result.done, result.kept) == (0, 1)
    assert imap.state.folders["INBOX"][0].flags == set()


def test_oversized_message_is_fetched_up_to_the_cap(rt: Runtime, imap: ImapServer) -> None:
    small = dataclasses.replace(rt.settings, inbound_max_bytes=1000)
    raw = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    imap.state.deliver(raw)

    assert poller(small, imap.url()).poll_once().done == 1

    with rt.session() as session:
        [message] = session.scalars(select(InboundMessage))
        assert (message.raw, message.size, message.truncated) == (raw[:1000], len(raw), True)
        assert session.scalar(select(FeedbackEvent.kind)) == "unknown"
