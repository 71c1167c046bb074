"""``newsletter inbound smtp|imap|reprocess``: bounces, complaints and mailto unsubscribes."""

from __future__ import annotations

import contextlib
import threading

import click

from worker.db import engine_for
from worker.logs import configure_logging
from worker.settings import Settings


@click.group()
def inbound() -> None:
    """Mail coming back to the bounce domain: SMTP receiver or IMAP poller."""


@inbound.command("smtp")
@click.option("--listen", default="0.0.0.0:2525", show_default=True, help="HOST:PORT to listen on.")
def inbound_smtp(listen: str) -> None:
    """Serve the VERP bounce, unsubscribe and FBL addresses of NEWSLETTER_BOUNCE_DOMAIN over
    SMTP: each message is stored before 250 (451 if it cannot be), then parsed and recorded."""
    from worker.feedback.smtp_receiver import InboundServer, parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    settings = Settings.from_env()
    configure_logging(settings)  # aiosmtpd logs envelopes: they must pass the redaction
    settings.require_secret_key()
    engine_for(settings)  # refuse now, not at the first message, without the right data key
    server = InboundServer(settings, host=host, port=port)
    server.start()
    click.echo(f"inbound SMTP for @{settings.bounce_domain} on {host}:{port}; Ctrl-C stops")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@inbound.command("imap")
@click.argument("url")
@click.option(
    "--interval", type=float, default=60.0, show_default=True, help="Seconds between polls."
)
@click.option("--once", is_flag=True, help="Poll once and exit.")
def inbound_imap(url: str, interval: float, once: bool) -> None:
    """Poll URL (imaps://user:password@host[:port]/FOLDER[?done=FOLDER], or imap+starttls://):
    store, parse and record each message, then move it to the done folder (or flag it deleted).
    A message that could not be stored or processed is left in place. The server's certificate
    is verified (system CAs, or NEWSLETTER_IMAP_CA_FILE) before the password is sent."""
    from worker.feedback.imap_poller import ImapMailbox, ImapPoller

    settings = Settings.from_env()
    configure_logging(settings)
    settings.require_secret_key()
    engine_for(settings)  # refuse now, not at the first message, without the right data key
    try:
        mailbox = ImapMailbox.from_url(url, ca_file=settings.imap_ca_file)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="URL") from None
    poller = ImapPoller(settings, mailbox)
    if once:
        import imaplib

        try:
            result = poller.poll_once()
        except (imaplib.IMAP4.error, OSError) as error:  # OSError: ssl.SSLCertVerificationError
            where = f"{mailbox.host}:{mailbox.port}"
            raise click.ClickException(f"cannot poll {where}: {error}") from None
        click.echo(f"{result.seen} seen, {result.done} done, {result.kept} kept")
        return
    with contextlib.suppress(KeyboardInterrupt):
        poller.run(interval)


@inbound.command("reprocess")
def inbound_reprocess() -> None:
    """Parse and record stored messages that were not processed (after a crash or an error)."""
    from worker.db import session_scope
    from worker.feedback.inbound import InboundContext, pending_ids, process_inbound
    from worker.models import InboundMessage
    from worker.sending.ports import SystemClock

    settings = Settings.from_env()
    ctx = InboundContext.from_settings(settings)
    with session_scope(settings) as session:
        ids = pending_ids(session)
    done = 0
    for message_id in ids:
        with session_scope(settings) as session:
            message = session.get(InboundMessage, message_id)
            if message is not None and message.parsed_at is None:
                process_inbound(session, message, ctx, now=SystemClock().now())
                done += 1
    click.echo(f"processed {done} stored message(s)")


@inbound.command("purge")
@click.option(
    "--days",
    type=float,
    default=None,
    help="Keep this many days (default NEWSLETTER_INBOUND_RETENTION_DAYS, 30).",
)
def inbound_purge(days: float | None) -> None:
    """Delete stored inbound messages older than the retention period (the scheduler does this
    every round): they hold readers' addresses and the mail they were sent."""
    from datetime import timedelta

    from worker.db import session_scope
    from worker.feedback.inbound import purge_inbound
    from worker.sending.ports import SystemClock

    settings = Settings.from_env()
    keep = settings.inbound_retention_days if days is None else days
    if keep < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--days")
    with session_scope(settings) as session:
        purged = purge_inbound(session, now=SystemClock().now(), older_than=timedelta(days=keep))
    click.echo(f"purged {purged} inbound message(s) older than {keep:g} days")
