"""``newsletter db``, ``send``, ``scheduler`` and ``web`` commands."""

from __future__ import annotations

import time
from typing import Any

import click

from worker.settings import Settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the migrations to NEWSLETTER_DATABASE_URL."""
    from worker.db import upgrade

    settings = Settings.from_env()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {_safe_url(settings.database_url)} is at {revision}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.group()
def send() -> None:
    """Sends of an edition: start, status, pause, resume, cancel, retry-unknown."""


@send.command("start")
@click.argument("edition_key")
@click.option("--batch-size", type=int, default=None, help="Deliveries per batch message.")
def send_start(edition_key: str, batch_size: int | None) -> None:
    """Enqueue a send of the loaded edition EDITION_KEY (e.g. 2024-W28)."""
    from worker.actors import plan_send
    from worker.broker import current
    from worker.editions.store import find_edition
    from worker.runtime import runtime
    from worker.sending.sends import create_send

    rt = runtime()
    client = getattr(current(), "client", None)
    if client is not None:
        client.ping()  # fail before a send row exists that nothing would ever plan
    with rt.session() as session:
        edition = find_edition(session, edition_key)
        if edition is None:
            raise click.ClickException(
                f"no edition {edition_key}: load it with `newsletter edition load PATH`"
            )
        new = create_send(
            session, edition, rt.clock.now(), batch_size or rt.settings.send_batch_size
        )
        send_id = new.id
    plan_send.send(send_id)
    click.echo(f"send {send_id} of edition {edition_key} enqueued")


FINAL_STATES = ("sent", "failed", "expired", "skipped", "unknown")
RATE_WINDOW_SECONDS = 60.0


def status_snapshot(session: Any, send_id: int, now: Any) -> dict[str, Any]:
    """A send's progress: status, planned, counts per state, rate (messages per second over the
    last minute) and ETA (seconds, None when nothing moves). Raises ``click.ClickException`` for
    an unknown send."""
    from datetime import timedelta

    from worker.models import Send
    from worker.sending.sql_ledger import SqlLedger

    row = session.get(Send, send_id, populate_existing=True)
    if row is None:
        raise click.ClickException(f"no send {send_id}")
    since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
    counts, recent, first = SqlLedger(session).progress(send_id, since)
    planned = max(row.planned_count or 0, sum(counts.values()))
    done = sum(counts.get(state, 0) for state in FINAL_STATES)
    rate = recent / _rate_span(now, first)
    eta = (planned - done) / rate if rate > 0 and planned > done else None
    return {
        "status": row.status,
        "planned": planned,
        "done": done,
        "counts": counts,
        "rate": rate,
        "eta": eta,
    }


def _rate_span(now: Any, first: Any) -> float:
    """Seconds over which the last minute's messages were sent: the whole window, or less when
    the first of them went out more recently (a send 6 s old that sent 12 is at 2/s, not 0.2/s).
    At least one second, so a single message does not read as an infinite rate."""
    if first is None:
        return RATE_WINDOW_SECONDS
    if first.tzinfo is None and now.tzinfo is not None:
        first = first.replace(tzinfo=now.tzinfo)
    return max(1.0, min(RATE_WINDOW_SECONDS, float((now - first).total_seconds())))


def status_view(send_id: int, snap: dict[str, Any]) -> Any:
    """The rich renderable of ``status_snapshot``: a progress bar and one line of figures."""
    from rich.console import Group
    from rich.text import Text

    counts = snap["counts"]
    figures = "  ".join(
        f"{state} {counts.get(state, 0)}"
        for state in (
            "sent",
            "deferred",
            "failed",
            "unknown",
            "queued",
            "sending",
            "expired",
            "skipped",
        )
        if counts.get(state) or state in ("sent", "deferred", "failed", "unknown")
    )
    eta = "—" if snap["eta"] is None else time.strftime("%H:%M:%S", time.gmtime(snap["eta"]))
    head = Text(f"send {send_id}: {snap['status']}  {snap['done']}/{snap['planned']} done")
    line = Text(f"planned {snap['planned']}  {figures}")
    speed = Text(f"rate {snap['rate']:.1f}/s  ETA {eta}")
    filled = round(40 * snap["done"] / max(snap["planned"], 1))
    bar = Text("━" * filled, style="green") + Text("━" * (40 - filled), style="grey37")
    bar.append(f" {100 * snap['done'] / max(snap['planned'], 1):.0f} %")
    return Group(head, bar, line, speed)


@send.command("status")
@click.argument("send_id", type=int)
@click.option(
    "--watch/--once",
    default=None,
    help="Keep the progress bar live until the send ends (default: when on a terminal).",
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between updates."
)
def send_status(send_id: int, watch: bool | None, interval: float) -> None:
    """Progress of SEND_ID: planned, sent, deferred, failed, unknown, current rate and ETA."""
    from rich.console import Console
    from rich.live import Live

    from worker.db import session_scope
    from worker.sending.ports import SystemClock

    settings = Settings.from_env()  # read-only: signs nothing, so it needs no secret key
    console = Console()
    watch = console.is_terminal if watch is None else watch

    def snapshot() -> dict[str, Any]:
        with session_scope(settings) as session:
            return status_snapshot(session, send_id, SystemClock().now())

    snap = snapshot()
    if not watch:
        console.print(status_view(send_id, snap))
        return
    with Live(status_view(send_id, snap), console=console, refresh_per_second=4) as live:
        while snap["status"] not in ("finished", "cancelled"):
            time.sleep(interval)
            snap = snapshot()
            live.update(status_view(send_id, snap))


def _change(send_id: int, target: str) -> None:
    from worker.runtime import Runtime
    from worker.sending.sends import SendStateError, set_status

    rt = Runtime(Settings.from_env())
    with rt.session() as session:
        try:
            set_status(session, send_id, target, rt.clock.now())
        except SendStateError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"send {send_id} is now {target}")


@send.command("pause")
@click.argument("send_id", type=int)
def send_pause(send_id: int) -> None:
    """Stop sending; batches in flight stop after their current message."""
    _change(send_id, "paused")


@send.command("resume")
@click.argument("send_id", type=int)
def send_resume(send_id: int) -> None:
    """Continue a paused send."""
    from worker.actors import reconcile
    from worker.runtime import runtime

    _change(send_id, "sending")
    reconcile(runtime())


@send.command("cancel")
@click.argument("send_id", type=int)
def send_cancel(send_id: int) -> None:
    """Stop a send for good; what was not sent stays queued and is never sent."""
    _change(send_id, "cancelled")


@send.command("retry-unknown")
@click.argument("send_id", type=int)
def send_retry_unknown(send_id: int) -> None:
    """Resend the deliveries whose outcome is unknown (the reader may get the edition twice)."""
    from worker.actors import reconcile
    from worker.runtime import runtime
    from worker.sending.sql_ledger import SqlLedger

    rt = runtime()
    with rt.session() as session:
        count = SqlLedger(session).retry_unknown(send_id, rt.clock.now())
    reconcile(rt)
    click.echo(f"{count} deliveries of send {send_id} queued again")


@click.command()
@click.option(
    "--interval", type=float, default=60.0, show_default=True, help="Seconds between runs."
)
@click.option("--once", is_flag=True, help="Run one pass and exit.")
def scheduler(interval: float, once: bool) -> None:
    """Periodic work: re-enqueue what the ledger says is unfinished, expire stale claims, purge
    unconfirmed signups, old signup refusals and old stored inbound mail."""
    from worker.actors import reconcile
    from worker.logs import configure_logging
    from worker.runtime import runtime

    rt = runtime()
    configure_logging(rt.settings)
    while True:
        try:
            enqueued = reconcile(rt)
            click.echo(f"reconciled: {enqueued} batch messages enqueued")
            click.echo(f"purged: {_purge_unconfirmed(rt)} signups left unconfirmed")
            click.echo(f"purged: {_purge_refusals(rt)} signup refusals")
            click.echo(f"purged: {_purge_inbound(rt)} stored inbound messages")
        except Exception as exc:  # Redis or the database restarting: try again next round
            if once:
                raise
            click.echo(f"reconcile failed, retrying in {interval} s: {exc!r}", err=True)
        if once:
            return
        time.sleep(interval)


def _purge_unconfirmed(rt: Any) -> int:
    """Forget signups unconfirmed for ``purge_unconfirmed_days``; returns how many."""
    from datetime import timedelta

    from worker.subscriptions.lifecycle import purge_unconfirmed

    days = timedelta(days=rt.settings.purge_unconfirmed_days)
    with rt.session() as session:
        return purge_unconfirmed(session, now=rt.clock.now(), older_than=days)


def _purge_refusals(rt: Any) -> int:
    """Delete signup refusals older than ``refusal_retention_days``; returns how many."""
    from datetime import timedelta

    from worker.subscriptions.signups import purge_refusals

    days = timedelta(days=rt.settings.refusal_retention_days)
    with rt.session() as session:
        return purge_refusals(session, now=rt.clock.now(), older_than=days)


def _purge_inbound(rt: Any) -> int:
    """Forget stored inbound mail older than ``inbound_retention_days``; returns how many."""
    from datetime import timedelta

    from worker.feedback.inbound import purge_inbound

    days = timedelta(days=rt.settings.inbound_retention_days)
    with rt.session() as session:
        return purge_inbound(session, now=rt.clock.now(), older_than=days)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web app (links in mails, signup endpoint, archive) with uvicorn."""
    import uvicorn

    from worker.logs import configure_logging

    settings = Settings.from_env()
    settings.require_secret_key()  # before uvicorn starts, so the refusal is one clear line
    configure_logging(settings)  # uvicorn's own log config is switched off below
    uvicorn.run(
        "worker.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        proxy_headers=True,
        log_config=None,
    )


@click.group()
def throttle() -> None:
    """Sending rates shared by every worker process (live: a running send follows at once)."""


def _redis_throttle() -> Any:
    import redis

    from worker.sending.throttle import RedisThrottle

    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.ClickException("NEWSLETTER_REDIS_URL is empty: rates live in Redis")
    return RedisThrottle(redis.Redis.from_url(settings.redis_url))


@throttle.command("set")
@click.argument("rate", type=float)
@click.option("--domain", default=None, help="A recipient domain (e.g. gmail.com); default global.")
def throttle_set(rate: float, domain: str | None) -> None:
    """Set RATE (messages per second, 0 = unlimited), globally or for one recipient domain."""
    _redis_throttle().set_rate(rate, domain)
    click.echo(f"{domain or 'global'} rate is now {rate:g}/s")


@throttle.command("connections")
@click.argument("limit", type=int)
def throttle_connections(limit: int) -> None:
    """Cap concurrent SMTP connections across all workers at LIMIT (0 = no cap)."""
    _redis_throttle().set_max_connections(limit)
    click.echo(f"at most {limit} SMTP connections" if limit else "no cap on SMTP connections")


@throttle.command("show")
def throttle_show() -> None:
    """The live overrides in Redis (settings apply where none is set)."""
    rates = _redis_throttle().rates()
    for field, value in sorted(rates.items()):
        click.echo(f"{field:30} {value:g}")
    if not rates:
        click.echo("no overrides: NEWSLETTER_GLOBAL_RATE and NEWSLETTER_DOMAIN_RATES apply")
