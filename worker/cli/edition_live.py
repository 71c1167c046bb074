"""``newsletter edition load`` and ``edition test-send``: the edition commands that need the
database or the SMTP relay (added to the ``edition`` group of ``worker.cli.edition``)."""

from __future__ import annotations

from pathlib import Path

import click

from worker.editions.files import EditionInvalid
from worker.settings import Settings

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _read_checked(path: Path):  # type: ignore[no-untyped-def]
    """The edition in ``path``, rendered once so that template errors surface before storing."""
    from worker.cli.edition import render_source
    from worker.editions.files import read_edition

    try:
        source = read_edition(path)
        renditions = render_source(source, Settings.from_env().public_url)
    except EditionInvalid as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(
            f"{len(error.problems)} problems in {path}; nothing stored"
        ) from None
    return source, renditions


@click.command("load")
@click.argument("path", type=_FOLDER)
def load(path: Path) -> None:
    """Check and store the edition in PATH; loading it again updates it until it is sent."""
    from worker.db import session_scope
    from worker.editions.images import ImagesNotConfigured, copy_images
    from worker.editions.store import EditionLocked, save_edition
    from worker.sending.ports import SystemClock

    source, _ = _read_checked(path)
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

    from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
    from worker.editions.store import DEFAULT_SLUG
    from worker.runtime import Runtime
    from worker.sending import identity
    from worker.sending.composer import origin_of
    from worker.sending.mime import origin_template, personalise
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
    rendered = renditions[language]
    origin = origin_of(
        source.newsletter,
        language,
        slug=DEFAULT_SLUG,
        domain=settings.sending_domain,
        campaign=source.key,
        edition_key=source.key,
    )
    template = origin_template(
        origin, subject=rendered.subject, html=rendered.html, text=rendered.text, language=language
    )
    unsubscribe = f"{settings.public_url.rstrip('/')}/u/test-copy"
    message = personalise(
        template,
        to=address.ascii_email or address.normalized,
        message_id=identity.transactional_message_id(f"test.{source.key}", settings.sending_domain),
        date=datetime.now(UTC),
        list_unsubscribe=[unsubscribe],
        substitutions={
            UNSUBSCRIBE_URL: unsubscribe,
            PREFERENCES_URL: f"{settings.public_url.rstrip('/')}/p/test-copy",
        },
    )
    signer = Runtime(settings).dkim_signer  # signed as the readers' copies are
    if signer is not None:
        message = signer.sign(message)
    mailer = SmtpMailer(settings.smtp_url, timeout=settings.smtp_timeout_seconds)
    outcome = mailer.send(
        identity.bounce_address(settings.bounce_domain),
        address.ascii_email or address.normalized,
        message,
        smtputf8=address.ascii_email is None,
    )
    mailer.close()
    if not outcome.accepted:
        raise click.ClickException(
            f"the relay refused the test copy: {outcome.code} {outcome.text}"
        )
    click.echo(f"test copy ({language}) sent to {to}: {outcome.code} {outcome.text}")
