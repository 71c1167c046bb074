"""``newsletter db``, ``send``, ``scheduler`` and ``web`` commands."""

from __future__ import annotations

import time
from typing import Any

import click

from worker.db import engine_for
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
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Deliveries per batch message."
)
@click.option(
    "--at", "at", default=None, help='Send later, at this local time: "2024-07-15 09:00".'
)
@click.option(
    "--timezone",
    "zone_name",
    default="UTC",
    show_default=True,
    help="The IANA time zone of --at (e.g. Europe/Minsk).",
)
@click.option(
    "--only-new",
    is_flag=True,
    help="The edition was sent before: send it only to readers who have not had it.",
)
@click.option(
    "--again", is_flag=True, help="The edition was sent before: send it to everyone again."
)
def send_start(
    edition_key: str,
    batch_size: int | None,
    at: str | None,
    zone_name: str,
    only_new: bool,
    again: bool,
) -> None:
    """Send the loaded edition EDITION_KEY (e.g. 2024-W28) now, or --at a later time.

    A second send of an edition is refused unless --only-new or --again is given; --only-new
    with nobody new to send to is refused too (exit code 1, no send created).
    """
    from worker.actors import expect_planning, start_planning
    from worker.broker import current
    from worker.editions.store import find_edition
    from worker.runtime import runtime
    from worker.sending.schedule import ScheduleError, describe, local_instant
    from worker.sending.sends import (
        DuplicateSend,
        EditionHasProblems,
        NobodyNew,
        Repeat,
        When,
        create_send,
    )

    if only_new and again:
        raise click.UsageError("--only-new and --again exclude each other")
    repeat = Repeat.ONLY_NEW if only_new else Repeat.AGAIN if again else Repeat.REFUSE
    rt = runtime()
    try:
        when = When(local_instant(at, zone_name), zone_name) if at else None
    except ScheduleError as exc:
        raise click.ClickException(str(exc)) from None
    if when is not None and when.at <= rt.clock.now():
        raise click.ClickException(f"{describe(when.at, zone_name)} is in the past")
    client = getattr(current(), "client", None)
    if client is not None and when is None:
        client.ping()  # fail before a send row exists that nothing would ever plan
    with rt.session() as session:
        edition = find_edition(session, edition_key)
        if edition is None:
            raise click.ClickException(
                f"no edition {edition_key}: load it with `newsletter edition load PATH`"
            )
        try:
            new = create_send(
                session,
                edition,
                rt.clock.now(),
                batch_size or rt.settings.send_batch_size,
                repeat=repeat,
                when=when,
            )
        except (DuplicateSend, EditionHasProblems, NobodyNew) as exc:
            # Each exits 1: no send was created, so a script that goes on to watch or schedule
            # around "the new send" must stop here rather than read an empty success.
            raise click.ClickException(str(exc)) from None
        send_id = new.id
        if when is None:
            expect_planning(rt, send_id)  # before the commit that starts it (the reconciler)
    if when is not None:
        click.echo(
            f"send {send_id} of edition {edition_key} scheduled for "
            f"{describe(when.at, zone_name)}; `newsletter scheduler` starts it"
        )
        return
    start_planning(rt, send_id)
    click.echo(f"send {send_id} of edition {edition_key} enqueued")


@send.command("schedule")
def send_schedule() -> None:
    """The scheduled sends (edition, local time, UTC, readers by language) and the weekly slot."""
    from worker.runtime import runtime
    from worker.sending.schedule import describe
    from worker.sending.sends import scheduled_sends
    from worker.sending.slots import get_slot, weekly_time

    rt = runtime()
    with rt.session() as session:
        rows = scheduled_sends(session)
        slot = get_slot(session, rt.newsletter(session).id)
        for row in rows:
            readers = ", ".join(f"{lang} {n}" for lang, n in sorted(row.readers.items()))
            audience = " (only new readers)" if row.only_new else ""
            click.echo(
                f"send {row.send_id}  edition {row.edition_key}  "
                f"{describe(row.at, row.timezone)}  readers: {readers or 'none'}{audience}"
            )
        if not rows:
            click.echo("no scheduled sends")
        if slot is not None:
            click.echo(
                f"weekly slot: {weekly_time(slot)} {slot.timezone}, "
                f"next {describe(slot.next_at, slot.timezone)}"
            )


@send.group("slot")
def send_slot() -> None:
    """The standing weekly slot: the newest loaded edition not yet sent goes out at it."""


@send_slot.command("set")
@click.argument("weekly")
@click.option(
    "--timezone", "zone_name", required=True, help="The IANA time zone (e.g. Europe/Minsk)."
)
def send_slot_set(weekly: str, zone_name: str) -> None:
    """Send every week at WEEKLY local time, e.g. "monday 09:00"."""
    from worker.runtime import runtime
    from worker.sending.schedule import ScheduleError, WeeklyTime, describe
    from worker.sending.slots import set_slot

    rt = runtime()
    try:
        slot_time = WeeklyTime.parse(weekly)
        with rt.session() as session:
            slot = set_slot(
                session, rt.newsletter(session).id, slot_time, zone_name, rt.clock.now()
            )
            following = describe(slot.next_at, zone_name)
    except ScheduleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"weekly slot: {slot_time} {zone_name}; next {following}")


@send_slot.command("show")
def send_slot_show() -> None:
    """The weekly slot and its next firing."""
    from worker.runtime import runtime
    from worker.sending.schedule import describe
    from worker.sending.slots import get_slot, newest_unsent, weekly_time

    rt = runtime()
    with rt.session() as session:
        newsletter = rt.newsletter(session)
        slot = get_slot(session, newsletter.id)
        if slot is None:
            click.echo("no weekly slot: set one with `newsletter send slot set`")
            return
        waiting = newest_unsent(session, newsletter.id)
        click.echo(
            f"weekly slot: {weekly_time(slot)} {slot.timezone}; "
            f"next {describe(slot.next_at, slot.timezone)}; "
            + (f"would send {waiting.key}" if waiting else "no unsent edition loaded")
        )


@send_slot.command("clear")
def send_slot_clear() -> None:
    """Remove the weekly slot (scheduled sends stay)."""
    from worker.runtime import runtime
    from worker.sending.slots import clear_slot

    rt = runtime()
    with rt.session() as session:
        removed = clear_slot(session, rt.newsletter(session).id)
    click.echo("weekly slot removed" if removed else "no weekly slot")


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


STATUS_STATES = ("sent", "deferred", "failed", "unknown", "queued", "sending", "expired", "skipped")
ALWAYS_SHOWN = ("sent", "deferred", "failed", "unknown")


def status_view(send_id: int, snap: dict[str, Any], width: int = 80) -> Any:
    """The rich renderable of ``status_snapshot``: a head line, a progress bar, the figures and
    the rate, every line at most ``width`` columns (the console's width, at least 40).

    The figures ("planned N", "sent N", …) are packed into as many lines as ``width`` needs,
    breaking only between two figures: left to rich, a long line wrapped inside a figure and
    put a state's name and its count on different lines.
    """
    from rich.console import Group
    from rich.text import Text

    width = max(width, 40)
    counts = snap["counts"]
    figures = [f"planned {snap['planned']}"] + [
        f"{state} {counts.get(state, 0)}"
        for state in STATUS_STATES
        if counts.get(state) or state in ALWAYS_SHOWN
    ]
    lines: list[str] = []
    for figure in figures:
        if lines and len(lines[-1]) + 2 + len(figure) <= width:
            lines[-1] += "  " + figure
        else:
            lines.append(figure)
    head = Text(
        f"send {send_id}: {snap['status']}  {snap['done']}/{snap['planned']} done", no_wrap=True
    )
    speed = Text(f"rate {snap['rate']:.1f}/s  ETA {_eta(snap['eta'])}", no_wrap=True)
    filled = round(40 * snap["done"] / max(snap["planned"], 1))
    bar = Text("━" * filled, style="green") + Text("━" * (40 - filled), style="grey37")
    bar.append(f" {100 * snap['done'] / max(snap['planned'], 1):.0f} %")
    bar.no_wrap = True
    return Group(head, bar, *(Text(line, no_wrap=True) for line in lines), speed)


def _eta(seconds: float | None) -> str:
    """``seconds`` left as H:MM:SS, with days in front past 24 hours ("2d 06:00:00"); "—" for
    None (nothing moves)."""
    if seconds is None:
        return "—"
    days, rest = divmod(int(seconds), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {clock}" if days else clock


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
        console.print(status_view(send_id, snap, console.width))
        return
    with Live(
        status_view(send_id, snap, console.width), console=console, refresh_per_second=4
    ) as live:
        while snap["status"] not in ("finished", "cancelled"):
            time.sleep(interval)
            snap = snapshot()
            live.update(status_view(send_id, snap, console.width))


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
    """Cancel a scheduled send before it starts, or stop a running one for good (what was not
    sent stays queued and is never sent)."""
    from worker.runtime import Runtime
    from worker.sending.sends import cancel_scheduled

    rt = Runtime(Settings.from_env())
    with rt.session() as session:
        if cancel_scheduled(session, send_id, rt.clock.now()):
            click.echo(f"send {send_id} is now cancelled; it had not started: nobody was mailed")
            return
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
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds between runs (more than 0).",
)
@click.option("--once", is_flag=True, help="Run one pass and exit.")
def scheduler(interval: float, once: bool) -> None:
    """Periodic work: start scheduled sends and the weekly slot when due, re-enqueue what the
    ledger says is unfinished, expire stale claims, purge unconfirmed signups and old signup
    refusals and old stored inbound mail. Several may run: each scheduled send starts once."""
    from worker.actors import reconcile, start_scheduled
    from worker.logs import configure_logging
    from worker.runtime import runtime

    rt = runtime()
    configure_logging(rt.settings)
    while True:
        try:
            for line in start_scheduled(rt):
                click.echo(line)
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
    engine_for(
        settings
    )  # …and the data key: missing or wrong, refused here (worker.safety.data_keys)
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
