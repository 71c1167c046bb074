"""``newsletter subscribers show|export|erase ADDRESS``: what is held about one person."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.runtime import Runtime


def _runtime() -> Runtime:
    from worker.runtime import Runtime

    return Runtime(Settings.from_env())


@click.group()
def subscribers() -> None:
    """One person's data: show, export (JSON), erase (right to erasure)."""


@subscribers.command("show")
@click.argument("address")
def subscribers_show(address: str) -> None:
    """Status, language and consent evidence of ADDRESS in every newsletter."""
    from worker.subscriptions.people import person_record

    rt = _runtime()
    with rt.session() as session:
        record = person_record(session, address, rt.settings.secret_key)
    if not record["subscribers"] and not record["suppressions"]:
        click.echo(f"{address}: not known")
    for sub in record["subscribers"]:
        click.echo(
            f"{sub['email']} [{sub['newsletter']}] {sub['status']}, language {sub['language']}, "
            f"since {sub['created_at']}, confirmed {sub['confirmed_at'] or '-'}"
        )
        for c in sub["consents"]:
            click.echo(
                f"  consent {c['event_id']}: signed up {c['signed_up_at']} from {c['ip'] or '-'} "
                f"via {c['source'] or '-'} (text {c['consent_version'] or '-'}); "
                f"confirmed {c['confirmed_at'] or '-'} from {c['confirm_ip'] or '-'}"
            )
        if sub["confirmation_error"]:
            click.echo(
                f"  confirmation mail failed {sub['confirmation_failed_at']}: "
                f"{sub['confirmation_error']}"
            )
        elif sub["confirmation_sent_at"]:
            click.echo(f"  confirmation mail sent {sub['confirmation_sent_at']}")
        counts = len(sub["deliveries"]), len(sub["feedback_events"])
        click.echo(f"  deliveries: {counts[0]}, feedback events: {counts[1]}")
        for d in sub["deliveries"]:
            if d["state"] in ("failed", "expired", "deferred", "unknown"):
                click.echo(
                    f"  delivery of send {d['send_id']}: {d['state']}"
                    f" {d['reply_code'] or ''} {d['reply_text'] or ''}".rstrip()
                )
    for s in record["suppressions"]:
        click.echo(
            f"suppressed: {s['reason']} since {s['created_at']}"
            + (" (lifted)" if s["removed_at"] else "")
        )
    if record["refused_signups"]:
        click.echo(f"refused signup events: {len(record['refused_signups'])}")


@subscribers.command("export")
@click.argument("address")
def subscribers_export(address: str) -> None:
    """Everything held about ADDRESS, as JSON on standard output."""
    from worker.subscriptions.people import person_record

    rt = _runtime()
    with rt.session() as session:
        record = person_record(session, address, rt.settings.secret_key)
    click.echo(json.dumps(record, ensure_ascii=False, indent=2))


@subscribers.command("erase")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def subscribers_erase(address: str, yes: bool) -> None:
    """Remove ADDRESS's personal data; keep a keyed hash so it cannot be added again."""
    from worker.subscriptions.people import erase

    if not yes:
        click.confirm(f"Erase everything held about {address}?", abort=True)
    rt = _runtime()
    with rt.session() as session:
        done = erase(session, address, hash_key=rt.settings.secret_key, now=rt.clock.now())
    click.echo(
        f"erased: {done.subscribers} subscribers anonymised, {done.consents} consents, "
        f"{done.refused_signups} refused signup events deleted, {done.feedback_events} feedback "
        f"events stripped; suppression {done.suppression_id} keeps the keyed hash"
    )
