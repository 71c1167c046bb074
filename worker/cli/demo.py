"""``newsletter demo``: the whole flow, from signup to inbox, on one machine.

Embedded defaults: an SQLite file, dramatiq's in-process StubBroker with an in-process worker, and
an in-process SMTP server that writes every message into ``outbox/`` as ``.eml``. With ``--redis``
and ``--smtp`` it uses a real Redis and SMTP server and starts worker processes with the dramatiq
CLI instead.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import click

from worker.settings import EXAMPLES_DIR

EDITION = EXAMPLES_DIR / "editions" / "2024-W28"

# (address, language): 31 readers; the last four never confirm.
READERS = [
    *[(f"reader{n:02d}@example.org", "en") for n in range(1, 9)],
    ("Ivan.Petrov@Example.ORG", "en"),
    ("chytach@ПРЫКЛАД.БЕЛ", "be"),
    *[(f"chytach{n:02d}@example.net", "be") for n in range(1, 10)],
    ("читатель@пример.рф", "ru"),
    *[(f"chitatel{n:02d}@example.com", "ru") for n in range(1, 10)],
    ("late.reader1@example.org", "en"),
    ("late.reader2@example.net", "be"),
]
UNCONFIRMED = 4

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"email": "not-an-address", "language": "en"}, "no @-sign"),
    ({"email": "trailing.dot@example.org.", "language": "en"}, "domain ends with a dot"),
    ({"email": "someone@example.org", "language": "de"}, "language not offered"),
    ({"language": "en"}, "missing email"),
    ({"email": 12345, "language": "en"}, "email is not a string"),
    ({"email": "x@example.org\r\nBcc: victim@example.org", "language": "en"}, "header injection"),
]


@click.command()
@click.option(
    "--redis", "redis_url", default="", help="Use this Redis (and dramatiq worker processes)."
)
@click.option(
    "--smtp", "smtp_url", default="", help="Send through this SMTP server instead of outbox/."
)
@click.option(
    "--outbox", type=click.Path(path_type=Path), default=Path("outbox"), show_default=True
)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("var"), show_default=True)
def demo(redis_url: str, smtp_url: str, outbox: Path, workdir: Path) -> None:
    """Sign up 31 readers in en/be/ru and 6 invalid signups, confirm 27 readers through their
    links, send the sample edition."""
    started = time.monotonic()
    summary = run_demo(redis_url=redis_url, smtp_url=smtp_url, outbox=outbox, workdir=workdir)
    elapsed = time.monotonic() - started
    sent = sum(row["sent"] for row in summary["languages"].values())
    click.echo(
        f"\nwall time {elapsed:.1f} s; edition send {summary['send_seconds']:.2f} s, "
        f"{sent / max(summary['send_seconds'], 1e-9):.0f} messages per second"
    )


def _env(redis_url: str, smtp_url: str, workdir: Path, web_port: int) -> dict[str, str]:
    db = workdir / "demo.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{db.resolve()}",
        "NEWSLETTER_REDIS_URL": redis_url,
        "NEWSLETTER_BROKER": "redis" if redis_url else "stub",  # whatever the caller's env says
        "NEWSLETTER_SMTP_URL": smtp_url,
        "NEWSLETTER_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
        "NEWSLETTER_SECRET_KEY": (
            os.environ.get("NEWSLETTER_SECRET_KEY") or secrets.token_urlsafe(32)
        ),
        # the demo's database is new: a data key of its own unless one is given
        **_data_key_env(),
        "NEWSLETTER_NEWSLETTER_PATH": str(EDITION / "newsletter.yaml"),
        "NEWSLETTER_BOUNCE_DOMAIN": "news.example.org",
        "NEWSLETTER_SEND_BATCH_SIZE": "10",
        # queues of their own: workers of a real deployment on the same Redis never see the
        # demo's messages, and a crashed earlier demo leaves nothing for this one's workers
        "NEWSLETTER_QUEUE_NAMESPACE": f"newsletter-demo-{secrets.token_hex(4)}",
    }


def _data_key_env() -> dict[str, str]:
    """The caller's data key settings, or a new data key (worker.safety.keyring)."""
    from worker.safety.keyring import new_data_key

    given = {k: v for k, v in os.environ.items() if k.startswith("NEWSLETTER_DATA_KEY") and v}
    return given or {"NEWSLETTER_DATA_KEY": new_data_key()}


def run_demo(*, redis_url: str, smtp_url: str, outbox: Path, workdir: Path) -> dict[str, Any]:
    """Run the demo; returns the summary it prints (per language: confirmed, sent, files)."""
    from worker.devtools.outbox import OutboxServer, free_port

    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(outbox, ignore_errors=True)
    outbox.mkdir(parents=True)
    server = None
    if not smtp_url:
        server = OutboxServer(outbox).__enter__()
        smtp_url = server.url
    web_port = free_port()
    env = _env(redis_url, smtp_url, workdir, web_port)
    if server is None and not _relay_offers_smtputf8(smtp_url):
        env["NEWSLETTER_SMTPUTF8_RELAY"] = "false"
        click.echo(
            "the relay does not offer SMTPUTF8 (RFC 6531): readers whose address has a non-ASCII "
            "local part are refused at signup (smtputf8_unsupported), as in production with "
            "NEWSLETTER_SMTPUTF8_RELAY=false; the others are sent"
        )
    os.environ.update(env)  # before worker.actors is imported: it sets up the broker from here
    try:
        return _run(env, redis_url, outbox, workdir, web_port, local_smtp=server is not None)
    finally:
        if server is not None:
            server.__exit__(None, None, None)


def _relay_offers_smtputf8(smtp_url: str) -> bool:
    """Whether the relay at ``smtp_url`` offers SMTPUTF8; raises ``click.ClickException`` naming
    the relay (password hidden) when it cannot be reached, instead of waiting for a timeout."""
    import smtplib

    from worker.sending.smtp import SmtpMailer
    from worker.settings import hide_password

    mailer = SmtpMailer(smtp_url, timeout=10.0)
    try:
        return "smtputf8" in mailer.extensions()
    except (OSError, smtplib.SMTPException) as error:
        raise click.ClickException(
            f"cannot use the SMTP relay {hide_password(smtp_url)}: {error}"
        ) from None
    finally:
        mailer.close()


def _run(
    env: dict[str, str],
    redis_url: str,
    outbox: Path,
    workdir: Path,
    web_port: int,
    *,
    local_smtp: bool,
) -> dict[str, Any]:
    from worker.db import upgrade

    upgrade(env["NEWSLETTER_DATABASE_URL"])
    from worker import actors
    from worker.editions.files import read_edition
    from worker.editions.store import save_edition
    from worker.runtime import runtime

    rt = runtime()
    web = _start_web(web_port)
    workers = _Workers()
    try:
        workers = _start_workers(redis_url, env, workdir)
        with rt.session() as session:
            save_edition(session, read_edition(EDITION), rt.clock.now())
        click.echo(f"edition 2024-W28 loaded from {EDITION}")
        _sign_up(actors)
        _wait(workers, ["signups", "transactional"], lambda: _signups_done(rt))
        confirmed = _confirm(rt, outbox, env["NEWSLETTER_PUBLIC_URL"], local_smtp)
        click.echo(f"{confirmed} readers confirmed through their links; {UNCONFIRMED} left pending")
        t0 = time.monotonic()
        send_id = _start_send(rt, actors)
        _wait(workers, ["sends", "deliveries"], lambda: _send_finished(rt, send_id))
        send_seconds = time.monotonic() - t0
        summary = _summary(rt, send_id, outbox if local_smtp else None)
        summary["send_seconds"] = send_seconds
        _print_summary(summary)
        return summary
    finally:
        workers.stop()
        web.stop()
        if redis_url:
            _forget_queues(redis_url, env["NEWSLETTER_QUEUE_NAMESPACE"])


class _Web:
    """uvicorn serving the web app in a thread of this process (the links in the mails)."""

    def __init__(self, port: int) -> None:
        import uvicorn

        from worker.web.app import create_app

        config = uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> _Web:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.stop()
                raise click.ClickException("the web app did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _start_web(port: int) -> _Web:
    return _Web(port).start()


class _Workers:
    """The in-process dramatiq worker (StubBroker), or the ``dramatiq`` CLI's worker processes."""

    def __init__(self, worker: Any = None, process: subprocess.Popen[bytes] | None = None) -> None:
        self.worker = worker
        self.process = process

    def join(self, queues: list[str]) -> None:
        if self.worker is not None:
            from dramatiq.brokers.stub import StubBroker

            from worker.broker import current

            broker = current()
            assert isinstance(broker, StubBroker)
            for queue in queues:
                broker.join(queue, fail_fast=True)
            self.worker.join()

    def check(self) -> None:
        """Raise if the worker processes have died (instead of waiting for a timeout)."""
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            raise click.ClickException(f"the dramatiq workers exited with {code}")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # dramatiq stops its worker processes on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _start_workers(redis_url: str, env: dict[str, str], logdir: Path) -> _Workers:
    if not redis_url:
        import dramatiq

        from worker.broker import current

        worker = dramatiq.Worker(current(), worker_threads=4, worker_timeout=100)
        worker.start()
        return _Workers(worker=worker)
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "worker.actors",
        "--processes",
        "2",
        "--threads",
        "4",
    ]
    log = logdir / "workers.log"
    click.echo(f"dramatiq worker processes started; their log: {log}")
    with log.open("wb") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one if it hangs
        )
    return _Workers(process=process)


def _forget_queues(redis_url: str, namespace: str) -> None:
    """Delete the demo's queue keys (its namespace is unique to this run)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _wait(workers: _Workers, queues: list[str], done: Any, timeout: float = 300) -> None:
    workers.join(queues)
    deadline = time.monotonic() + timeout
    while not done():
        workers.check()
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {', '.join(queues)}")
        time.sleep(0.2)


def _sign_up(actors: Any) -> None:
    for n, (address, language) in enumerate(READERS):
        actors.handle_signup.send(
            {
                "version": 1,
                "event_id": f"demo-{n}",
                "email": address,
                "language": language,
                "source": "demo",
                "ip": f"192.0.2.{10 + n}",  # one reader, one IP: the per-IP abuse limit holds
                "user_agent": "newsletter-demo",
                "consent_version": "2024-07",
            }
        )
    for n, (event, why) in enumerate(INVALID):
        actors.handle_signup.send({"version": 1, "event_id": f"demo-invalid-{n}", **event})
        click.echo(f"invalid signup sent ({why})")


def _signups_done(rt: Any) -> bool:
    """Every signup event is accounted for (a subscriber or a refusal) and every pending
    subscriber got its confirmation mail. Read from the database, because worker processes
    leave nothing in this process to join."""
    from sqlalchemy import func, select

    from worker.models import SignupRefusal, Subscriber

    with rt.session() as session:
        subscribers = session.scalar(select(func.count()).select_from(Subscriber)) or 0
        refusals = session.scalar(select(func.count()).select_from(SignupRefusal)) or 0
        unmailed = session.scalar(
            select(func.count())
            .select_from(Subscriber)
            .where(
                Subscriber.status == "pending",
                Subscriber.confirmation_sent_at.is_(None),
                Subscriber.confirmation_error.is_(None),  # refused by the relay: said, not awaited
            )
        )
    return subscribers + refusals >= len(READERS) + len(INVALID) and unmailed == 0


def _confirmation_links(rt: Any, outbox: Path, public_url: str, local_smtp: bool) -> dict[str, str]:
    """Confirmation link per address: read from the mails in outbox/, or (with an external SMTP
    server whose mailbox the demo cannot read) issued the same way the mail did."""
    links: dict[str, str] = {}
    if local_smtp:
        pattern = re.compile(re.escape(public_url) + r"/confirm/[A-Za-z0-9._-]+")
        for path in sorted((outbox / "transactional").glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            body = message.get_body(("plain",))
            match = pattern.search(body.get_content() if body else "")
            if match:
                links[str(message["To"]).lower()] = match.group(0)
        return links
    from sqlalchemy import select

    from worker.models import Subscriber
    from worker.subscriptions.signups import confirmation_token

    with rt.session() as session:
        for subscriber in session.scalars(select(Subscriber).where(Subscriber.status == "pending")):
            token = confirmation_token(rt.tokens, subscriber)
            address = (subscriber.ascii_email or subscriber.email).lower()
            links[address] = f"{public_url}/confirm/{token}"
    return links


def _subscribed(rt: Any, address: str) -> bool:
    from sqlalchemy import select

    from worker.models import Subscriber
    from worker.subscriptions.addresses import dedupe_key_of

    with rt.session() as session:
        found = session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == dedupe_key_of(address))
        )
    return found is not None


def _confirm(rt: Any, outbox: Path, public_url: str, local_smtp: bool) -> int:
    from worker.subscriptions.addresses import parse_address

    links = _confirmation_links(rt, outbox, public_url, local_smtp)
    confirmed = 0
    for address, _ in READERS[: len(READERS) - UNCONFIRMED]:
        parsed = parse_address(address)
        link = links.get((parsed.ascii_email or parsed.normalized).lower())
        if link is None and not _subscribed(rt, address):
            continue  # refused at signup (a relay without SMTPUTF8): said when the demo began
        if link is None:
            raise click.ClickException(f"no confirmation mail for {address}")
        with urllib.request.urlopen(link) as page:  # the GET shows a button and changes nothing
            if b'method="post"' not in page.read():
                raise click.ClickException(f"confirmation page for {address} has no button")
        data = urllib.parse.urlencode({"confirm": "1"}).encode()
        with urllib.request.urlopen(urllib.request.Request(link, data=data, method="POST")) as page:
            if page.status == 200:
                confirmed += 1
    return confirmed


def _start_send(rt: Any, actors: Any) -> int:
    from worker.editions.store import find_edition
    from worker.sending.sends import create_send

    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        if edition is None:
            raise click.ClickException("edition 2024-W28 was not loaded")
        send = create_send(session, edition, rt.clock.now(), rt.settings.send_batch_size)
        send_id = int(send.id)
        actors.expect_planning(rt, send_id)  # before the commit that starts it
    actors.start_planning(rt, send_id)
    click.echo(f"send {send_id} of edition 2024-W28 enqueued")
    return send_id


def _send_finished(rt: Any, send_id: int) -> bool:
    from worker.models import Send

    with rt.session() as session:
        send = session.get(Send, send_id)
        return send is not None and send.status == "finished"


def _summary(rt: Any, send_id: int, outbox: Path | None) -> dict[str, Any]:
    from sqlalchemy import func, select

    from worker.models import Delivery, SignupRefusal, Subscriber

    languages: dict[str, dict[str, int]] = {}
    with rt.session() as session:
        for lang, status, count in session.execute(
            select(Subscriber.language, Subscriber.status, func.count()).group_by(
                Subscriber.language, Subscriber.status
            )
        ):
            languages.setdefault(lang, Counter())[status] += count
        sent = session.execute(
            select(Delivery.language, Delivery.state, func.count())
            .where(Delivery.send_id == send_id)
            .group_by(Delivery.language, Delivery.state)
        ).all()
        refusals = [(r.reason, r.detail) for r in session.scalars(select(SignupRefusal))]
    files = Counter(p.name.split("-")[1] for p in outbox.glob("*.eml")) if outbox else Counter()
    rows: dict[str, dict[str, int]] = {}
    for lang, counts in sorted(languages.items()):
        rows[lang] = {
            "confirmed": counts.get("confirmed", 0),
            "pending": counts.get("pending", 0),
            "sent": 0,
            "failed": 0,
            "files": files.get(lang, 0),
        }
    for lang, state, count in sent:
        empty = {"confirmed": 0, "pending": 0, "sent": 0, "failed": 0, "files": 0}
        row = rows.setdefault(lang, empty)
        row["sent" if state == "sent" else "failed"] += count
    return {"send_id": send_id, "languages": rows, "refusals": refusals}


def _print_summary(summary: dict[str, Any]) -> None:
    click.echo("\nrefused signups:")
    for reason, detail in summary["refusals"]:
        click.echo(f"  {reason}: {detail}")
    click.echo(f"\nsend {summary['send_id']}, per language:")
    click.echo(
        f"  {'lang':4} {'confirmed':>9} {'pending':>7} {'sent':>5} {'failed':>6} {'.eml':>5}"
    )
    for lang, row in summary["languages"].items():
        click.echo(
            f"  {lang:4} {row['confirmed']:>9} {row['pending']:>7} {row['sent']:>5} "
            f"{row['failed']:>6} {row['files']:>5}"
        )
