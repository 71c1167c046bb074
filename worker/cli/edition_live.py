"""``newsletter edition load`` and ``edition test-send``: the edition commands that need the
database or the SMTP relay (added to the ``edition`` group of ``worker.cli.edition``)."""

from __future__ import annotations

from pathlib import Path

import click

from worker.editions.files import EditionInvalid
from worker.settings import Settings

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _read_checked(path: Path, shown: Path | None = None):  # type: ignore[no-untyped-def]
    """The edition in ``path``, rendered once so that template errors surface before storing;
    ``shown`` is the path to name in messages (the zip the folder came from)."""
    from worker.editions.files import read_edition
    from worker.editions.rendering import render_source

    try:
        source = read_edition(path)
        renditions = render_source(source, Settings.from_env().public_url)
    except EditionInvalid as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(
            f"{len(error.problems)} problems in {shown or path}; nothing stored"
        ) from None
    return source, renditions


@click.command("export")
@click.argument("key")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def export(key: str, out: Path) -> None:
    """Write the stored edition KEY as a zip OUT (an edition folder; `edition load OUT` reads it
    back to the same edition)."""
    from worker.db import session_scope
    from worker.editions.bundles import BundleProblem, export_bundle

    settings = Settings.from_env()
    with session_scope(settings) as session:
        try:
            data = export_bundle(session, key, settings.images_dir)
        except (LookupError, BundleProblem) as error:
            raise click.ClickException(str(error)) from None
    out.write_bytes(data)
    click.echo(f"edition {key} written to {out} ({len(data) // 1024 + 1} KB)")


@click.command("from-feeds")
@click.option(
    "--period",
    default=None,
    help="The edition's days, both included, in the newsletter's time zone: "
    "2026-11-30..2026-12-06 (default: Monday to Sunday of the week that is ending, today's week "
    "in that zone; the edition is sent the Monday after).",
)
@click.option("--key", default=None, help="The edition key (default: the ISO week, 2026-W49).")
@click.option(
    "--newsletter",
    "profile_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="newsletter.yaml with the feeds (default: NEWSLETTER_NEWSLETTER_PATH).",
)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
def from_feeds(period: str | None, key: str | None, profile_path: Path | None, out: Path) -> None:
    """Start an edition in the folder OUT from the website's feeds (newsletter.yaml `feeds`):
    the articles published in the period, per language (by default the week that is ending, key
    its ISO week: 2026-W49 on Thursday 2026-12-03). Exit 1 when a feed failed (the other
    languages are still written)."""
    from datetime import UTC, date, datetime
    from zoneinfo import ZoneInfo

    from worker.editions.feeds import edition_from_feeds, ending_week, feed_fetcher
    from worker.editions.files import PROFILE_FILE, read_newsletter_profile
    from worker.editions.writing import write_edition

    if period is not None:
        try:
            first, _, last = period.partition("..")
            start, end = date.fromisoformat(first.strip()), date.fromisoformat(last.strip())
        except ValueError:
            raise click.BadParameter(
                f"{period!r}: expected two dates like 2026-11-30..2026-12-06",
                param_hint="--period",
            ) from None
    chosen = profile_path or Path(Settings.from_env().newsletter_path or PROFILE_FILE)
    if not chosen.is_file():
        raise click.ClickException(
            f"no newsletter.yaml at {chosen}: give --newsletter PATH or set "
            "NEWSLETTER_NEWSLETTER_PATH"
        )
    if out.exists() and any(out.iterdir()):
        raise click.ClickException(f"{out} is not empty; choose a new folder")
    try:
        profile = read_newsletter_profile(chosen)
        if period is None:
            today = datetime.now(UTC).astimezone(ZoneInfo(profile.timezone)).date()
            start, end = ending_week(today)
            click.echo(f"period {start}..{end} (the week that is ending; sent the Monday after)")
        fetch = feed_fetcher(Settings.from_env().feed_hosts)
        started = edition_from_feeds(profile, start, end, key=key, fetch=fetch)
    except EditionInvalid as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(error.problems)} problems in {chosen}") from None
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    write_edition(out, profile, started.contents)
    # The profile as written by hand, comments included, rather than as re-serialised.
    (out / PROFILE_FILE).write_text(chosen.read_text(encoding="utf-8"), encoding="utf-8")
    for language, content in started.contents.items():
        click.echo(f"{language}: {len(content.items)} item(s)")
    for note in started.notes:
        click.echo(f"note: {note}", err=True)
    for failed in started.problems:
        click.echo(str(failed), err=True)
    click.echo(
        f"edition {next(iter(started.contents.values())).key} written to {out}; "
        f"next: newsletter edition check {out}"
    )
    if started.problems:
        raise click.ClickException(f"{len(started.problems)} feed(s) failed")


@click.command("load")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def load(path: Path) -> None:
    """Check and store the edition in PATH (a folder or a zip of one, as `edition export` writes);
    loading it again updates it until it is sent."""
    from worker.editions.bundles import BundleProblem, edition_folder

    try:
        with edition_folder(path) as folder:
            _load(folder, shown=path)
    except BundleProblem as error:
        raise click.ClickException(f"{path}: {error}; nothing stored") from None


def _load(path: Path, shown: Path) -> None:
    from worker.db import session_scope
    from worker.editions.images import ImagesNotConfigured, copy_images
    from worker.editions.store import EditionLocked, save_edition
    from worker.sending.ports import SystemClock

    source, _ = _read_checked(path, shown)
    settings = Settings.from_env()
    try:  # images first: a stored edition must not point at images that are not served
        images = copy_images(path, source, settings.images_dir)
    except (ImagesNotConfigured, OSError) as error:
        raise click.ClickException(f"{error}; nothing stored") from None
    with session_scope(settings) as session:  # signs nothing: no secret key needed
        try:
            edition = save_edition(session, source, SystemClock().now())
        except EditionLocked as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"edition {edition.key} stored ({', '.join(sorted(source.contents))})")
    for image in images:
        click.echo(f"image served at /images/{source.key}/{image.name}")


@click.command("test-send")
@click.argument("path", type=_FOLDER)
@click.option("--to", "to", required=True, help="Address that gets the test copy.")
@click.option(
    "--lang", "language", default=None, help="Language (default: the newsletter's default)."
)
def test_send(path: Path, to: str, language: str | None) -> None:
    """Send one copy of the edition in PATH to --to, exactly as readers would get it."""
    from datetime import UTC, datetime

    from worker.editions.store import DEFAULT_SLUG
    from worker.runtime import Runtime
    from worker.sending.proofs import ProofSetup, proof_message, send_proof
    from worker.sending.smtp import SmtpMailer
    from worker.subscriptions.addresses import AddressError, parse_address

    source, renditions = _read_checked(path)
    settings = Settings.from_env()
    language = language or source.newsletter.default_language
    if language not in renditions:
        raise click.ClickException(
            f"no {language} in this edition ({', '.join(sorted(renditions))})"
        )
    try:
        address = parse_address(to)
    except AddressError as error:
        raise click.ClickException(f"--to: {error.message}") from None
    setup = ProofSetup(
        slug=DEFAULT_SLUG,
        sending_domain=settings.sending_domain,
        public_url=settings.public_url,
        bounce_domain=settings.bounce_domain,
        signer=Runtime(settings).dkim_signer,  # signed as the readers' copies are
    )
    message = proof_message(
        setup, source.newsletter, source.key, language, renditions[language], address,
        datetime.now(UTC),
    )  # fmt: skip
    mailer = SmtpMailer(settings.smtp_url, timeout=settings.smtp_timeout_seconds)
    outcome = send_proof(setup, mailer, address, message)
    mailer.close()
    if not outcome.accepted:
        raise click.ClickException(
            f"the relay refused the test copy: {outcome.code} {outcome.text}"
        )
    click.echo(f"test copy ({language}) sent to {to}: {outcome.code} {outcome.text}")
