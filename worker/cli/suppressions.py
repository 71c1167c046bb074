"""``newsletter suppressions remove|list|import|export``: the operator's hold on the list."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worker.settings import Settings
from worker.subscriptions.people import EXPORT_NOTICE

if TYPE_CHECKING:
    from worker.runtime import Runtime


def _runtime() -> Runtime:
    from worker.runtime import Runtime

    return Runtime(Settings.from_env())


@click.group()
def suppressions() -> None:
    """Addresses never mailed: lift an entry, list, import and export CSV."""


@suppressions.command("remove")
@click.argument("address")
@click.option("--reason", required=True, help="Why it is lifted (kept for audit).")
def suppressions_remove(address: str, reason: str) -> None:
    """Lift the suppression of ADDRESS; its subscribers return to confirmed only if their
    consent stands (confirmed, not unsubscribed since), else to unsubscribed."""
    from worker.subscriptions.suppressions import remove

    rt = _runtime()
    with rt.session() as session:
        result = remove(
            session, address, reason=reason, hash_key=rt.settings.secret_key, now=rt.clock.now()
        )
    if not result.lifted:
        raise click.ClickException(f"{address} is not suppressed")
    click.echo(
        f"lifted {result.lifted} suppression(s); subscribers restored: "
        f"{result.confirmed} confirmed, {result.unsubscribed} unsubscribed"
    )


@suppressions.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include lifted entries.")
def suppressions_list(include_removed: bool) -> None:
    """One line per entry: created_at, reason, address (or hash), source event, lifted."""
    from worker.subscriptions.suppressions import entries

    rt = _runtime()
    with rt.session() as session:
        for entry in entries(session, include_removed=include_removed):
            who = entry.email or f"sha256-hmac:{entry.email_hash[:16]}…"
            event = f"event {entry.source_event_id}" if entry.source_event_id else "-"
            lifted = (
                f"lifted {entry.removed_at.isoformat()}: {entry.removed_reason}"
                if entry.removed_at
                else ""
            )
            click.echo(
                f"{entry.created_at.isoformat()}  {entry.reason:<18} {who}  {event}  "
                f"{lifted}".rstrip()
            )


@suppressions.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def suppressions_export(file: str) -> None:
    """Write the active entries to FILE.csv (email, email_sha256-hmac, reason, created_at)."""
    from worker.subscriptions.suppressions import export_csv

    rt = _runtime()
    with rt.session() as session:
        if file == "-":
            count = export_csv(session, sys.stdout)
        else:
            with Path(file).open("w", newline="", encoding="utf-8") as out:
                count = export_csv(session, out)
    click.echo(f"exported {count} suppression(s)", err=True)
    click.echo(EXPORT_NOTICE, err=True)


@suppressions.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def suppressions_import(file: str) -> None:
    """Add the rows of FILE.csv (a header with email and/or email_sha256-hmac; reason and
    created_at optional); matching subscribers become suppressed."""
    from worker.subscriptions.suppressions import import_csv

    rt = _runtime()
    with rt.session() as session, Path(file).open(newline="", encoding="utf-8-sig") as source:
        try:
            result = import_csv(
                session, source, hash_key=rt.settings.secret_key, now=rt.clock.now()
            )
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    for line, why in result.refused:
        click.echo(f"line {line} refused: {why}", err=True)
    click.echo(
        f"added {result.added}, already suppressed {result.existing}, refused {len(result.refused)}"
    )
