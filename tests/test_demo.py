"""``newsletter demo`` as a newcomer runs it: a subprocess in an empty folder, then the ``.eml``
files it leaves in ``outbox/`` (or what a real SMTP server received) checked one by one."""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.message_parts import body_text
from tests.samples import SAMPLE_EDITION
from tests.services import DATA_KEY_ENV, redis_url
from worker.cli.demo import INVALID, READERS, UNCONFIRMED
from worker.db import dispose_engines
from worker.devtools.outbox import OutboxServer
from worker.editions.files import EditionSource, read_edition
from worker.models import SignupRefusal, Subscriber
from worker.runtime import Runtime
from worker.settings import Settings
from worker.web.app import create_app

SECRET = "demo-test-secret-key-0123456789"
DEMO_REDIS = redis_url(1)
TIMEOUT = 120  # seconds; the demo takes about 5 s embedded and 10 s with worker processes


def newsletter_command() -> list[str]:
    script = Path(sys.executable).with_name("newsletter")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from worker.cli import main; main()"]


def clean_env() -> dict[str, str]:
    """The environment of a fresh shell: no NEWSLETTER_* settings but a fixed secret key (so
    that the test can check the unsubscribe links the demo's web app issued)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATA_KEY"] = os.environ["NEWSLETTER_DATA_KEY"]  # the suite's (conftest)
    env["NEWSLETTER_SECRET_KEY"] = SECRET
    env["NEWSLETTER_DATA_KEY"] = DATA_KEY_ENV["NEWSLETTER_DATA_KEY"]  # to read its database after
    return env


def demo_processes(tmp: Path) -> list[int]:
    """Pids of processes still running with this demo's database in their environment."""
    marker = str(tmp).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def run_demo(tmp: Path, *args: str) -> str:
    result = subprocess.run(
        [*newsletter_command(), "demo", *args],
        cwd=tmp,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert demo_processes(tmp) == []  # no worker process or server outlives the demo
    return result.stdout


def summary_rows(stdout: str) -> dict[str, dict[str, int]]:
    """The per-language table the demo prints: lang → confirmed, pending, sent, failed, .eml."""
    rows = {}
    row = re.compile(r"^  (en|be|ru)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", re.M)
    for match in row.finditer(stdout):
        lang, *numbers = match.groups()
        rows[lang] = dict(
            zip(["confirmed", "pending", "sent", "failed", "files"], map(int, numbers), strict=True)
        )
    return rows


def demo_subscribers(tmp: Path) -> tuple[list[Subscriber], list[SignupRefusal]]:
    from worker.db import make_engine

    engine = make_engine(f"sqlite:///{tmp / 'var' / 'demo.db'}")
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        subscribers = list(session.scalars(select(Subscriber)))
        refusals = list(session.scalars(select(SignupRefusal)))
        session.expunge_all()
    engine.dispose()
    return subscribers, refusals


def recipient(subscriber: Subscriber) -> str:
    return subscriber.ascii_email or subscriber.email


def check_edition_mail(
    message: EmailMessage, subscriber: Subscriber, edition: EditionSource
) -> str:
    """Every rule of issue 2 for one edition mail; returns its https unsubscribe URL."""
    lang = subscriber.language
    profile = edition.newsletter
    assert message["To"] == recipient(subscriber)
    assert message["Content-Language"] == lang
    assert message["Subject"] == edition.contents[lang].subject  # Cyrillic intact after parsing
    (sender,) = message["From"].addresses
    assert sender.display_name == profile.from_name[lang]  # localised, Cyrillic intact
    assert sender.addr_spec == profile.from_address
    assert re.fullmatch(r"<[a-z2-7]{26}\.2024-W28@[^>]+>", message["Message-ID"])
    assert email.utils.parsedate_to_datetime(message["Date"]).tzinfo is not None
    uris = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert len(uris) == 2
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/u/[\w.-]+", uris[0])  # the web link first
    assert uris[1].startswith("mailto:unsubscribe+") and uris[1].endswith("?subject=unsubscribe")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = body_text(message, "html")
    text = body_text(message, "plain")
    assert f'<html lang="{lang}"' in html
    assert profile.name[lang] in text and profile.name[lang] in html  # the body's language
    assert uris[0] in text and f'href="{uris[0]}"' in html  # a visible unsubscribe link
    assert "%%" not in html + text
    return str(uris[0])


def check_deliveries(
    tmp: Path, messages: list[EmailMessage], rows: dict[str, dict[str, int]]
) -> dict[str, str]:
    """One mail per confirmed subscriber, none for the others; the printed table matches.
    Returns the unsubscribe URL per recipient."""
    edition = read_edition(SAMPLE_EDITION)
    subscribers, refusals = demo_subscribers(tmp)
    confirmed = {recipient(s): s for s in subscribers if s.status == "confirmed"}
    pending = [s for s in subscribers if s.status != "confirmed"]
    assert len(confirmed) == len(READERS) - UNCONFIRMED
    assert len(pending) == UNCONFIRMED and all(s.status == "pending" for s in pending)
    assert sorted(r.reason for r in refusals) == sorted(
        [
            "invalid_address",
            "invalid_address",
            "unsupported_language",
            "malformed",
            "malformed",
            "malformed",
        ]
    )
    assert len(refusals) == len(INVALID)

    to = Counter(str(m["To"]) for m in messages)
    assert to == Counter(list(confirmed))  # exactly one each; none for pending or invalid signups
    urls = {str(m["To"]): check_edition_mail(m, confirmed[str(m["To"])], edition) for m in messages}
    assert len(set(urls.values())) == len(urls)  # a token per subscriber

    per_language = Counter(s.language for s in confirmed.values())
    assert {lang: row["confirmed"] for lang, row in rows.items()} == per_language
    assert {lang: row["sent"] for lang, row in rows.items()} == per_language
    pending_per_language = Counter(s.language for s in pending)
    assert {lang: row["pending"] for lang, row in rows.items()} == pending_per_language
    assert all(row["failed"] == 0 for row in rows.values())
    assert set(per_language) == {"en", "be", "ru"}
    return urls


def check_unsubscribe_links_work(tmp: Path, urls: dict[str, str]) -> None:
    """The demo's links against the web app on the demo's database: GET changes nothing, the
    RFC 8058 one-click POST unsubscribes."""
    settings = Settings.from_env(
        DATA_KEY_ENV,
        database_url=f"sqlite:///{tmp / 'var' / 'demo.db'}",
        broker="stub",
        redis_url="",
        secret_key=SECRET,
        newsletter_path=str(SAMPLE_EDITION / "newsletter.yaml"),
    )
    client = TestClient(create_app(Runtime(settings)))
    address, url = sorted(urls.items())[0]
    path = url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    page = client.get(f"/{path}")
    assert page.status_code == 200 and 'method="post"' in page.text
    statuses = {recipient(s): s.status for s in demo_subscribers(tmp)[0]}
    assert statuses[address] == "confirmed"
    one_click = client.post(
        f"/{path}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert one_click.status_code == 200
    assert {recipient(s): s.status for s in demo_subscribers(tmp)[0]}[address] == "unsubscribed"
    dispose_engines()


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def test_demo_embedded_leaves_one_eml_per_confirmed_subscriber(tmp_path: Path) -> None:
    stdout = run_demo(tmp_path)

    files = sorted((tmp_path / "outbox").glob("*.eml"))
    messages = [parse(path.read_bytes()) for path in files]
    rows = summary_rows(stdout)
    urls = check_deliveries(tmp_path, messages, rows)
    for path, message in zip(files, messages, strict=True):
        assert f"-{message['Content-Language']}-" in path.name
    assert {lang: row["files"] for lang, row in rows.items()} == Counter(
        str(m["Content-Language"]) for m in messages
    )
    # the confirmation mails are there too, one per valid signup, none for the invalid ones
    confirmations = list((tmp_path / "outbox" / "transactional").glob("*.eml"))
    assert len(confirmations) == len(READERS)
    assert "refused signups:" in stdout and "messages per second" in stdout
    check_unsubscribe_links_work(tmp_path, urls)


@pytest.fixture
def demo_redis() -> Iterator[str]:
    client = redis.Redis.from_url(DEMO_REDIS)
    client.flushdb()
    yield DEMO_REDIS
    client.flushdb()
    client.close()


@pytest.mark.slow  # starts dramatiq worker processes: about 10 s, 35 s on a loaded machine
def test_demo_with_redis_and_smtp_uses_worker_processes(tmp_path: Path, demo_redis: str) -> None:
    with OutboxServer() as server:
        stdout = run_demo(tmp_path, "--redis", demo_redis, "--smtp", server.url)
        received = list(server.handler.received)

    assert "dramatiq worker processes started" in stdout
    assert "Worker has been shut down" in (tmp_path / "var" / "workers.log").read_text()
    editions = [parse(r.data) for r in received if b"X-Newsletter-Edition:" in r.data]
    confirmations = [r for r in received if b"X-Newsletter-Edition:" not in r.data]
    assert len(confirmations) == len(READERS)
    for item in received:
        assert item.recipients == [str(parse(item.data)["To"])]  # envelope = header recipient
    urls = check_deliveries(tmp_path, editions, summary_rows(stdout))
    check_unsubscribe_links_work(tmp_path, urls)
    # the demo's queues lived in a namespace of their own and were removed
    leftovers: Any = redis.Redis.from_url(demo_redis).keys("newsletter-demo-*")
    assert leftovers == []


def test_demo_says_what_a_relay_without_smtputf8_cannot_take(tmp_path: Path) -> None:
    """It used to wait silently for its timeout: the confirmation mail to the Cyrillic local part
    could never be sent. Now it refuses that reader at signup, says why, and sends the rest."""
    from tests.smtp_script import ScriptServer

    with ScriptServer(smtputf8=False) as server:
        stdout = run_demo(tmp_path, "--smtp", server.url())
        recipients = set(server.handler.accepted)
    assert "the relay does not offer SMTPUTF8 (RFC 6531)" in stdout
    non_ascii = [address for address, _ in READERS if not address.split("@")[0].isascii()]
    assert non_ascii == ["читатель@пример.рф"]
    subscribers, refusals = demo_subscribers(tmp_path)
    assert "smtputf8_unsupported" in {r.reason for r in refusals} | {
        (r.detail or "").rsplit("(", 1)[-1].rstrip(")") for r in refusals
    }
    assert len(subscribers) == len(READERS) - 1
    assert all(s.ascii_email for s in subscribers)
    assert len(recipients) == len(READERS) - 1  # every other reader got mail
    rows = summary_rows(stdout)
    assert sum(row["sent"] for row in rows.values()) == len(READERS) - 1 - UNCONFIRMED


def test_demo_fails_fast_when_the_relay_cannot_be_reached(tmp_path: Path) -> None:
    from worker.devtools.outbox import free_port

    url = f"smtp://user:hunter2@127.0.0.1:{free_port()}"
    result = subprocess.run(
        [*newsletter_command(), "demo", "--smtp", url],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert f"cannot use the SMTP relay smtp://user:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in (
        result.stderr
    )
    assert "hunter2" not in result.stdout + result.stderr
