"""``newsletter edition …``: check and preview an edition folder (see docs/editions.md).

Both commands work without a database, a broker or a network: they read the folder, render it
and report. ``load`` and ``test-send`` need the database and SMTP and are added to this group by
the modules that own them.
"""

from __future__ import annotations

from pathlib import Path

import click

from worker.editions.files import EditionInvalid, check_edition, read_edition
from worker.editions.rendering import TemplateProblem, render_source
from worker.editions.resources import foreign_resource_warnings, host_of

_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)
# `check` and `load` take an edition folder or its zip (worker/editions/bundles.py).
FOLDER_OR_ZIP = click.Path(exists=True, dir_okay=True, file_okay=True, path_type=Path)


@click.group()
def edition() -> None:
    """Editions: check, preview (load and send live with the database commands)."""


def _public_url() -> str:
    from worker.settings import Settings

    return Settings.from_env().public_url


def _own_hosts(site: str) -> list[str]:
    """The newsletter's own hosts: its site's, the public URL's, ``NEWSLETTER_IMAGE_HOSTS``."""
    from worker.settings import Settings

    settings = Settings.from_env()
    configured = [h.strip() for h in settings.image_hosts.split(",") if h.strip()]
    return [host_of(site), host_of(settings.public_url), *configured]


@edition.command("check")
@click.argument("path", type=FOLDER_OR_ZIP)
def check(path: Path) -> None:
    """Report every problem of the edition in PATH, a folder or a zip of one (file, line, field,
    reason); exit 1 if any."""
    from worker.editions.bundles import BundleProblem, edition_folder

    try:
        with edition_folder(path) as folder:
            problems = check_edition(folder)
            if not problems:
                try:
                    source = read_edition(folder)
                    renditions = render_source(source, _public_url())
                except EditionInvalid as error:
                    problems = error.problems
    except BundleProblem as error:
        raise click.ClickException(f"{path}: {error}") from None
    if problems:
        for problem in problems:
            click.echo(str(problem), err=True)
        noun = "problem" if len(problems) == 1 else "problems"
        raise click.ClickException(f"{len(problems)} {noun} in {path}")
    for language, rendered in renditions.items():
        size = len(rendered.html.encode("utf-8")) / 1024
        click.echo(f"{language}: {rendered.subject!r} ({size:.0f} KB HTML)")
        own = _own_hosts(source.newsletter.site)
        for warning in (*rendered.warnings, *foreign_resource_warnings(rendered.html, own)):
            click.echo(f"{language}: warning: {warning}", err=True)
    click.echo(f"ok: {path}")


@edition.command("preview")
@click.argument("path", type=_FOLDER)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for <lang>.html, <lang>.txt, <lang>-desktop.png, <lang>-mobile.png.",
)
@click.option("--public-url", default=None, help="Base URL of the web app (default: settings).")
@click.option(
    "--offline", is_flag=True, help="Do not let Chromium load remote images (stable output)."
)
def preview(path: Path, out: Path, public_url: str | None, offline: bool) -> None:
    """Write each language's HTML, text and 600/375 px screenshots of the edition in PATH."""
    # The Chromium driver is a developer tool: only the CLI may bring it in (issue 12).
    from worker.devtools.chromium import BrowserError, HeadlessChromium
    from worker.editions.preview import take_screenshots, write_renditions

    try:
        # Render first: an invalid edition is reported even where Chromium is missing.
        written, shots = write_renditions(path, out, public_url or _public_url())
        with HeadlessChromium(offline=offline) as camera:
            take_screenshots(shots, camera)
    except EditionInvalid as error:
        for problem in error.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException(f"{len(error.problems)} problems in {path}") from error
    except (TemplateProblem, BrowserError) as error:
        raise click.ClickException(str(error)) from error
    for file in written:
        click.echo(str(file))
