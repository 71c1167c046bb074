"""Edition previews: each language's rendition as HTML, text and full-page PNG screenshots.

Screenshots come from headless Chromium (:mod:`worker.devtools.chromium`) at 600 px (desktop: the
layout's full width; wider windows only add background) and 375 px (a common phone width, below
MJML's 480 px breakpoint, so columns stack as on a phone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worker.devtools.chromium import BrowserError, HeadlessChromium
from worker.editions.files import read_edition
from worker.editions.rendering import RenderedMessage, render_edition

WIDTHS = {"desktop": 600, "mobile": 375}
"""Screenshot widths in CSS pixels (device scale factor 1)."""

PreviewError = BrowserError
"""Raised when Chromium is missing or fails."""


@dataclass(frozen=True)
class Shot:
    """One screenshot to take: an HTML file, the PNG to write, the layout width in px."""

    html: Path
    png: Path
    width: int


def take_screenshots(shots: Iterable[Shot], *, offline: bool = True) -> list[Path]:
    """Take every screenshot with one Chromium process; returns the PNG paths.

    Raises :class:`PreviewError`. About 1 s to start plus 0.1-0.5 s per page.
    """
    written = []
    with HeadlessChromium(offline=offline) as browser:
        for shot in shots:
            shot.png.write_bytes(browser.screenshot(shot.html, shot.width))
            written.append(shot.png)
    return written


def write_rendition(rendered: RenderedMessage, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.txt`` (the text part, UTF-8) into ``out``."""
    html = out / f"{stem}.html"
    text = out / f"{stem}.txt"
    html.write_text(rendered.html, encoding="utf-8")
    text.write_text(rendered.text, encoding="utf-8")
    return html, text


def write_preview(folder: Path, out: Path, public_url: str, *, offline: bool = False) -> list[Path]:
    """Render the edition in ``folder`` and write, per language ``xx``: ``xx.html``,
    ``xx.txt``, ``xx-desktop.png`` (600 px) and ``xx-mobile.png`` (375 px) into ``out``.

    Returns the written paths in that order, language by language. Raises
    :class:`worker.editions.files.EditionInvalid`,
    :class:`worker.editions.rendering.TemplateProblem` or
    :class:`PreviewError`. With ``offline`` Chromium loads no remote images (their alt text
    shows instead), which makes the PNGs independent of the network.
    """
    source = read_edition(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    shots: list[Shot] = []
    for language in source.newsletter.languages:
        rendered = render_edition(
            source.newsletter, source.contents[language], public_url=public_url
        )
        html, text = write_rendition(rendered, out, language)
        written += [html, text]
        for kind, width in WIDTHS.items():
            shot = Shot(html, out / f"{language}-{kind}.png", width)
            shots.append(shot)
            written.append(shot.png)
    take_screenshots(shots, offline=offline)
    return written
