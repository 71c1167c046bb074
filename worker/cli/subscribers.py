"""``newsletter subscribers``: one person's data (show, export, erase ADDRESS), moving a list in
(import) and the roster (list, count)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from worker.safety.csv_cells import write_cell
from worker.settings import Settings
from worker.subscriptions.people import EXPORT_NOTICE

if TYPE_CHECKING:
    from worker.runtime import Runtime


def _runtime() -> Runtime:
    from worker.runtime import Runtime

    return Runtime(Settings.from_env())


@click.group()
def subscribers() -> None:
    """Readers: one person's data (show, export, erase), import a list, list and count."""


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
                f"via {c['source'] or '-'} ({_consent_text(c)}); "
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


_NO_CONSENT_TEXT = {
    "import": "imported with its evidence; the export names no consent text",
    "import_unverified": "imported without consent evidence",
    "re_permission": "imported, asked again by a re-permission mail",
}


def _consent_text(consent: dict[str, Any]) -> str:
    """Which consent text the reader agreed to: the signup's ``consent_version``, else why
    there is none (an import: other systems' exports do not name it; a website that sent none).
    """
    if consent["consent_version"]:
        return f"text {consent['consent_version']}"
    return _NO_CONSENT_TEXT.get(consent["method"], "no consent text version sent with the signup")


@subscribers.command("export")
@click.argument("address")
def subscribers_export(address: str) -> None:
    """Everything held about ADDRESS, as JSON on standard output."""
    from worker.subscriptions.people import person_record

    rt = _runtime()
    with rt.session() as session:
        record = person_record(session, address, rt.settings.secret_key)
    click.echo(json.dumps(record, ensure_ascii=False, indent=2))
    click.echo(EXPORT_NOTICE, err=True)


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


FORMAT_HELP = "The system the file was exported from (see docs/operations.md, Moving in)."


@subscribers.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["mailchimp", "listmonk", "substack", "ghost", "mailman", "csv"]),
    help=FORMAT_HELP,
)
@click.option(
    "--map",
    "mapping",
    default="",
    help="--format csv: field=Column pairs, e.g. email=Email,language=Lang,status=Status.",
)
@click.option("--language", default=None, help="Language of rows without one (default: the "
              "newsletter's default language).")  # fmt: skip
@click.option(
    "--pending",
    is_flag=True,
    help="Readers without consent evidence become pending and get a re-permission mail.",
)
@click.option("--dry-run", is_flag=True, help="Print what would happen; change nothing.")
@click.option(
    "--confirm-rate",
    type=float,
    default=2.0,
    show_default=True,
    help="--pending: re-permission mails enqueued per second (the per-domain limit applies too).",
)
def subscribers_import(
    path: str,
    fmt: str,
    mapping: str,
    language: str | None,
    pending: bool,
    dry_run: bool,
    confirm_rate: float,
) -> None:
    """Bring the readers of another system's export PATH: subscribed ones become confirmed
    (with their consent evidence), unsubscribed / cleaned / blocklisted ones suppressions.
    Re-importing a file changes nothing."""
    from worker.editions.store import profile_of
    from worker.subscriptions.exports import ExportError, parse_mapping, read_export
    from worker.subscriptions.imports import ImportOptions, import_rows
    from worker.subscriptions.signups import AddressRules

    if confirm_rate <= 0:
        raise click.BadParameter("must be above 0", param_hint="--confirm-rate")
    rt = _runtime()
    with rt.session() as session, _open(path) as source:
        newsletter = rt.newsletter(session)
        languages = profile_of(newsletter).languages
        if language is not None and language not in languages:
            raise click.BadParameter(f"not one of {', '.join(languages)}", param_hint="--language")
        rules = AddressRules.from_settings(rt.settings)
        options = ImportOptions(
            newsletter_id=newsletter.id,
            source=f"import:{fmt}:{Path(path).name}",
            languages=languages,
            default_language=language or newsletter.default_language,
            hash_key=rt.settings.secret_key,
            now=rt.clock.now(),
            pending=pending,
            allow_smtputf8=rules.allow_smtputf8,
            blocked_domains=rules.blocked_domains,
        )
        try:
            rows = read_export(fmt, source, mapping=parse_mapping(mapping))
            with _progress(path) as advance:
                report = import_rows(session, rows, options, progress=advance)
        except ExportError as error:
            raise click.ClickException(f"{path}: {error}") from None
        if dry_run:
            session.rollback()
    for line, why in report.refused:
        click.echo(f"{path}:{line}: refused: {why}", err=True)
    _summary(report, dry_run)
    if report.pending_ids and not dry_run:
        _ask_again(report.pending_ids, confirm_rate)


def _open(path: str) -> Any:
    # utf-8-sig: spreadsheet programs write a byte order mark; newline="" for csv (RFC 4180).
    # A byte that is not UTF-8 becomes U+FFFD: its row is refused with its line, the rest imports.
    return Path(path).open(newline="", encoding="utf-8-sig", errors="replace")


def _progress(path: str) -> Any:
    """A progress bar on standard error when it is a terminal, else a no-op."""
    from contextlib import contextmanager

    @contextmanager
    def bar() -> Iterator[Callable[[int], None]]:
        if not sys.stderr.isatty():
            yield lambda n: None
            return
        with _open(path) as counting:
            total = max(sum(1 for _ in counting) - 1, 1)
        with click.progressbar(length=total, label="importing", file=sys.stderr) as progress:
            yield progress.update

    return bar()


def _summary(report: Any, dry_run: bool) -> None:
    from worker.subscriptions.imports import OUTCOMES

    head = "dry run, nothing changed: would be" if dry_run else "done:"
    click.echo(f"{head} {report.rows} rows")
    for outcome in OUTCOMES:
        if report.counts[outcome]:
            click.echo(f"  {outcome.replace('_', ' ')}: {report.counts[outcome]}")
    if report.language_defaulted:
        click.echo(f"  language not one of the newsletter's, default used: "
                   f"{report.language_defaulted}")  # fmt: skip
    if report.counts["imported_unverified"]:
        click.echo(
            "  note: the export had no consent evidence for "
            f"{report.counts['imported_unverified']} readers; --pending asks them again"
        )


def _ask_again(subscriber_ids: list[int], per_second: float) -> None:
    """Enqueue the re-permission confirmations, spread at ``per_second``: the transactional
    queue's per-domain limit paces them further (``send_confirmation``)."""
    from worker.actors import send_confirmation

    for index, subscriber_id in enumerate(subscriber_ids):
        send_confirmation.send_with_options(
            args=(subscriber_id,), delay=int(index * 1000 / per_second)
        )
    click.echo(f"re-permission mails enqueued: {len(subscriber_ids)}")


@subscribers.command("list")
@click.option("--language", default=None)
@click.option("--status", type=click.Choice(["pending", "confirmed", "unsubscribed", "suppressed"]))
@click.option("--domain", default=None, help="Recipient domain (Unicode or A-labels).")
@click.option("--source", default=None, help="signup, or an import: mailchimp, mailchimp:FILE …")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--all", "everyone", is_flag=True, help="No limit.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header on standard output.")
def subscribers_list(
    language: str | None,
    status: str | None,
    domain: str | None,
    source: str | None,
    limit: int,
    offset: int,
    everyone: bool,
    as_csv: bool,
) -> None:
    """The readers matching the filters, oldest first, a page at a time (--limit, --offset)."""
    import csv

    from worker.subscriptions.roster import Filters, readers

    rt = _runtime()
    filters = Filters(language=language, status=status, domain=domain, source=source)
    writer = csv.writer(sys.stdout) if as_csv else None
    if writer:
        writer.writerow(
            ("email", "status", "language", "domain", "source", "created_at", "confirmed_at")
        )
    with rt.session() as session:
        shown = 0
        for r in readers(session, filters, limit=None if everyone else limit, offset=offset):
            shown += 1
            confirmed = r.confirmed_at.isoformat() if r.confirmed_at else ""
            if writer:  # cells a spreadsheet would run as formulas are escaped (csv_cells)
                writer.writerow(
                    write_cell(cell) for cell in (r.email, r.status, r.language, r.domain,
                                                  r.source, r.created_at.isoformat(), confirmed)
                )  # fmt: skip
            else:
                click.echo(f"{r.email}  {r.status:<12} {r.language:<3} {r.source}")
    if not as_csv and shown == limit and not everyone:
        click.echo(f"(first {limit} from {offset}: --offset {offset + limit} for more)", err=True)
    click.echo(EXPORT_NOTICE, err=True)


@subscribers.command("count")
@click.option("--language", default=None)
@click.option("--status", type=click.Choice(["pending", "confirmed", "unsubscribed", "suppressed"]))
@click.option("--domain", default=None)
@click.option("--source", default=None)
@click.option(
    "--by",
    "by",
    multiple=True,
    type=click.Choice(["status", "language", "domain", "source"]),
    help="Group by this field (repeatable).",
)
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header on standard output.")
def subscribers_count(
    language: str | None,
    status: str | None,
    domain: str | None,
    source: str | None,
    by: tuple[str, ...],
    as_csv: bool,
) -> None:
    """How many readers match the filters, grouped by --by fields."""
    import csv

    from worker.subscriptions.roster import Filters, count

    rt = _runtime()
    filters = Filters(language=language, status=status, domain=domain, source=source)
    with rt.session() as session:
        counts = count(session, filters, by)
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow((*by, "count"))
        for key, n in counts.items():
            writer.writerow((*(write_cell(str(k)) for k in key), n))
        return
    if not by:
        click.echo(str(sum(counts.values())))
        return
    width = max((len("  ".join(k)) for k in counts), default=0)
    for key, n in counts.items():
        click.echo(f"{'  '.join(key):<{width}}  {n}")
    click.echo(f"{'total':<{width}}  {sum(counts.values())}")
