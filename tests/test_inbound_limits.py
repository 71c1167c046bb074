"""Finding 7 (inbound part) of issue 13: the SMTP receiver's memory is bounded and stored
inbound mail does not stay for ever.

Attacks as they were made: many concurrent sessions with large messages against the real
receiver (``newsletter inbound smtp``, its peak RSS read from ``/proc``), one session more than
the cap, a message over the size cap; then old stored mail purged by the CLI and the scheduler's
function, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from worker.cli import main
from worker.devtools.outbox import free_port
from worker.feedback.inbound import purge_inbound, store_inbound
from worker.feedback.smtp_receiver import InboundServer
from worker.models import FeedbackEvent, InboundMessage
from worker.runtime import Runtime
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TO = "postmaster@news.example.org"
MiB = 1024 * 1024


def _message(n: int, size: int) -> bytes:
    head = b"From: MAILER-DAEMON@example.net\r\nSubject: bounce %d\r\n\r\n" % n
    line = b"B" * 76 + b"\r\n"
    return head + line * (size // len(line))


@pytest.fixture
def capped(settings: Settings) -> Iterator[InboundServer]:
    small = dataclasses.replace(settings, inbound_max_sessions=3, inbound_max_bytes=64 * 1024)
    with InboundServer(small, port=free_port()) as server:
        yield server


def _until(condition: object, what: str) -> None:
    """Wait (bounded) for the receiver's event loop to catch up with a closed connection."""
    for _ in range(400):
        if callable(condition) and condition():
            return
        time.sleep(0.025)
    raise AssertionError(what)


def test_one_session_over_the_cap_gets_421_and_a_freed_slot_is_reused(
    capped: InboundServer,
) -> None:
    # Given as many open sessions as the cap allows
    held = [smtplib.SMTP(capped.host, capped.port, timeout=30) for _ in range(3)]
    try:
        assert all(c.noop()[0] == 250 for c in held)
        # When one more connects, it is told to come back later (RFC 5321 §3.1, 421)
        with pytest.raises(smtplib.SMTPConnectError) as busy:
            smtplib.SMTP(capped.host, capped.port, timeout=30)
        assert busy.value.smtp_code == 421 and b"4.3.2" in busy.value.smtp_error
        assert capped.sessions.refused == 1
        # Then when one leaves, a new session is served and delivers
        held.pop().quit()
        _until(lambda: capped.sessions.open == 2, "the closed session was not released")
        with smtplib.SMTP(capped.host, capped.port, timeout=30) as client:
            assert client.sendmail("", [TO], _message(1, 1000)) == {}
    finally:
        for client in held:
            client.quit()
    _until(lambda: capped.sessions.open == 0, "sessions were not released")


def test_a_message_over_the_size_cap_gets_552_and_nothing_is_stored(
    capped: InboundServer, rt: Runtime
) -> None:
    with smtplib.SMTP(capped.host, capped.port, timeout=30) as client:
        # Declared too large (RFC 1870 SIZE): refused at MAIL FROM
        code, _ = client.ehlo()
        assert code == 250 and client.has_extn("size")
        assert int(client.esmtp_features["size"]) == 64 * 1024
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:
            client.sendmail("", [TO], b"x", mail_options=[f"SIZE={10 * MiB}"])
        assert declared.value.smtp_code == 552
        # Undeclared and too large: refused after DATA, the session still usable
        assert client.mail("")[0] == 250 and client.rcpt(TO)[0] == 250  # no SIZE given
        assert client.data(_message(2, 200 * 1024))[0] == 552
        assert client.noop()[0] == 250
    with rt.session() as session:
        assert session.scalars(select(InboundMessage)).all() == []


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _send(port: int, n: int, size: int) -> str:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.sendmail("", [TO], _message(n, size))
            return "250"
    except smtplib.SMTPResponseException as error:  # 421 at connect, 552 at MAIL or DATA
        return str(error.smtp_code)
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return "closed"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_many_concurrent_large_messages_keep_the_receiver_bounded(tmp_path: Path) -> None:
    # Given the real receiver with 4 sessions of at most 4 MiB
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env.update(
        PYTHONPATH=str(ROOT),
        NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'n.db'}",
        NEWSLETTER_SECRET_KEY="inbound-limits-secret-0123456789",
        NEWSLETTER_BOUNCE_DOMAIN="news.example.org",
        NEWSLETTER_INBOUND_MAX_SESSIONS="4",
        NEWSLETTER_INBOUND_MAX_BYTES=str(4 * MiB),
    )
    cli = "from worker.cli import main; main()"
    subprocess.run([sys.executable, "-c", cli, "db", "upgrade"], env=env, check=True, timeout=120)
    port = free_port()
    receiver = subprocess.Popen(
        [sys.executable, "-c", cli, "inbound", "smtp", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while receiver.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        idle = _peak_rss_kib(receiver.pid)
        # When 24 clients send at once: 16 messages just under the cap, 8 of 20 MiB
        sizes = [4 * MiB - 4096] * 16 + [20 * MiB] * 8
        with ThreadPoolExecutor(max_workers=len(sizes)) as pool:
            replies = list(pool.map(lambda a: _send(port, *a), enumerate(sizes)))
        peak = _peak_rss_kib(receiver.pid)
    finally:
        receiver.terminate()
        receiver.wait(timeout=30)
    growth_mib = (peak - idle) / 1024
    print(
        f"\ninbound receiver: idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
        f"(+{growth_mib:.0f} MiB) for {len(sizes)} concurrent clients, replies "
        f"{sorted(set(replies))}: 4 sessions x 4 MiB"
    )
    # Then some were told to come back (421), the 20 MiB ones refused (552), some stored (250)
    assert "421" in replies and "250" in replies
    assert all(r != "250" for r, size in zip(replies, sizes, strict=True) if size > 4 * MiB)
    # And memory grew by what 4 sessions of 4 MiB take (about x7.5 per message in flight: line
    # list, joined bytes, stored row, parsed text), not by what 24 clients would take (x24)
    assert growth_mib < 4 * 4 * 12


def test_old_inbound_mail_is_purged_and_feedback_keeps_its_record(rt: Runtime) -> None:
    now = rt.clock.now()
    with rt.session() as session:
        old = store_inbound(
            session,
            b"Subject: old\r\n\r\nx",
            source="smtp",
            now=now - timedelta(days=31),
            max_bytes=1000,
        )
        recent = store_inbound(
            session,
            b"Subject: new\r\n\r\nx",
            source="smtp",
            now=now - timedelta(days=29),
            max_bytes=1000,
        )
        session.add(
            FeedbackEvent(
                source_event_id="purge-test-1",
                source="dsn",
                kind="hard_bounce",
                occurred_at=now,
                recorded_at=now,
                inbound_message_id=old.id,
            )
        )
        old_id, recent_id = old.id, recent.id
    with rt.session() as session:
        assert purge_inbound(session, now=now, older_than=timedelta(days=30)) == 1
    with rt.session() as session:
        assert [m.id for m in session.scalars(select(InboundMessage))] == [recent_id]
        event = session.scalars(select(FeedbackEvent)).one()
        assert event.inbound_message_id is None and old_id != recent_id


def test_the_purge_command_uses_the_retention_setting(rt: Runtime, db_url: str) -> None:
    now = rt.clock.now()
    with rt.session() as session:
        for days in (40, 10):
            store_inbound(
                session,
                b"Subject: %d\r\n\r\nx" % days,
                source="imap",
                now=now - timedelta(days=days),
                max_bytes=1000,
            )
    env = {
        "NEWSLETTER_DATABASE_URL": db_url,
        "NEWSLETTER_SECRET_KEY": "inbound-limits-secret-0123456789",
        "NEWSLETTER_INBOUND_RETENTION_DAYS": "30",
    }
    first = CliRunner().invoke(main, ["inbound", "purge"], env=env)
    assert first.exit_code == 0 and "purged 1 inbound message(s)" in first.output, first.output
    second = CliRunner().invoke(main, ["inbound", "purge", "--days", "5"], env=env)
    assert "purged 1 inbound message(s) older than 5 days" in second.output
    with rt.session() as session:
        assert session.scalars(select(InboundMessage)).all() == []
