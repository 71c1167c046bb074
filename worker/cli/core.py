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
    from worker.migrate import upgrade

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
    from worker.actors import plan_send, runtime
    from worker.newsletters import find_edition
    from worker.sends import create_send

    rt = runtime()
    with rt.session() as session:
        edition = find_edition(session, edition_key)
        if edition is None:
            raise click.ClickException(f"no edition {edition_key}: load it with `newsletter edition load PATH`")
        new = create_send(session, edition, rt.clock.now(), batch_size or rt.settings.send_batch_size)
        send_id = new.id
    plan_send.send(send_id)
    click.echo(f"send {send_id} of edition {edition_key} enqueued")


@send.command("status")
@click.argument("send_id", type=int)
def send_status(send_id: int) -> None:
    """Deliveries of SEND_ID per state."""
    from worker.dispatch import delivery_counts
    from worker.models import Send
    from worker.runtime import Runtime

    rt = Runtime(Settings.from_env())
    with rt.session() as session:
        row = session.get(Send, send_id)
        if row is None:
            raise click.ClickException(f"no send {send_id}")
        click.echo(f"send {send_id}: {row.status}")
        for state, count in sorted(delivery_counts(session, send_id).items()):
            click.echo(f"  {state:10} {count}")


def _change(send_id: int, target: str) -> None:
    from worker.runtime import Runtime
    from worker.sends import SendStateError, set_status

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
    from worker.actors import reconcile, runtime

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
    from worker.actors import reconcile, runtime
    from worker.dispatch import retry_unknown

    rt = runtime()
    with rt.session() as session:
        count = retry_unknown(session, send_id, rt.clock.now())
    reconcile(rt)
    click.echo(f"{count} deliveries of send {send_id} queued again")


@click.command()
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds between runs.")
@click.option("--once", is_flag=True, help="Run one pass and exit.")
def scheduler(interval: float, once: bool) -> None:
    """Periodic work: re-enqueue what the ledger says is unfinished, expire stale claims."""
    from worker.actors import reconcile, runtime

    rt = runtime()
    while True:
        try:
            enqueued = reconcile(rt)
            click.echo(f"reconciled: {enqueued} batch messages enqueued")
            click.echo(f"purged: {_purge_unconfirmed(rt)} signups left unconfirmed")
        except Exception as exc:  # Redis or the database restarting: try again next round
            if once:
                raise
            click.echo(f"reconcile failed, retrying in {interval} s: {exc!r}", err=True)
        if once:
            return
        time.sleep(interval)


def _purge_unconfirmed(rt: Any) -> int:
    """Forget signups unconfirmed for ``purge_unconfirmed_days`` (worker.signups)."""
    from datetime import timedelta

    from worker.signups import purge_unconfirmed

    days = timedelta(days=rt.settings.purge_unconfirmed_days)
    with rt.session() as session:
        return purge_unconfirmed(session, now=rt.clock.now(), older_than=days)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def web(host: str, port: int) -> None:
    """Serve the web app (links in mails, signup endpoint, archive) with uvicorn."""
    import uvicorn

    uvicorn.run("worker.web:create_app", factory=True, host=host, port=port, proxy_headers=True)
