"""Edition previews: each language's rendition as HTML, text and full-page PNG screenshots.

Screenshots come from a :class:`Camera` the caller injects (the CLI passes headless Chromium from
:mod:`worker.devtools.chromium`, a developer tool production code never imports) at 600 px (desktop:
the layout's full width; wider windows only add background) and 375 px (a common phone width, below
MJML's 480 px breakpoint, so columns stack as on a phone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from worker.editions.files import read_edition
from worker.editions.rendering import RenderedMessage, render_edition

WIDTHS = {"desktop": 600, "mobile": 375}
"""Screenshot widths in CSS pixels (device scale factor 1)."""


class Camera(Protocol):
    """Takes full-page screenshots of local HTML files (headless Chromium in the CLI)."""

    def screenshot(self, page: Path, width: int) -> bytes:
        """PNG bytes of ``page`` laid out ``width`` CSS px wide, as tall as its content."""
        ...


@dataclass(frozen=True)
class Shot:
    """One screenshot to take: an HTML file, the PNG to write, the layout width in px."""

    html: Path
    png: Path
    width: int


def take_screenshots(shots: Iterable[Shot], camera: Camera) -> list[Path]:
    """Take every screenshot with ``camera``; returns the PNG paths, in order.

    Raises whatever ``camera`` raises (the Chromium driver: ``BrowserError``).
    """
    written = []
    for shot in shots:
        shot.png.write_bytes(camera.screenshot(shot.html, shot.width))
        written.append(shot.png)
    return written


def write_rendition(rendered: RenderedMessage, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.txt`` (the text part, UTF-8) into ``out``."""
    html = out / f"{stem}.html"
    text = out / f"{stem}.txt"
    html.write_text(rendered.html, encoding="utf-8")
    text.write_text(rendered.text, encoding="utf-8")
    return html, text


def write_renditions(folder: Path, out: Path, public_url: str) -> tuple[list[Path], list[Shot]]:
    """Render the edition in ``folder`` and write ``xx.html`` and ``xx.txt`` per language.

    Returns every path of the preview in order (per language: html, txt, ``xx-desktop.png``
    (600 px), ``xx-mobile.png`` (375 px)) and the screenshots still to take. Raises
    :class:`worker.editions.files.EditionInvalid` or
    :class:`worker.editions.rendering.TemplateProblem`.
    """
    source = read_edition(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    shots: list[Shot] = []
    for language in source.newsletter.languages:
        rendered = render_edition(
            source.newsletter, source.contents[language], public_url=public_url
        )
        written += write_rendition(rendered, out, language)
        for kind, width in WIDTHS.items():
            shot = Shot(
                html=out / f"{language}.html", png=out / f"{language}-{kind}.png", width=width
            )
            shots.append(shot)
            written.append(shot.png)
    return written, shots


def write_preview(folder: Path, out: Path, public_url: str, camera: Camera) -> list[Path]:
    """Write the whole preview of the edition in ``folder`` into ``out``, screenshots included.

    Returns the paths as :func:`write_renditions` lists them; raises what it and ``camera`` raise.
    """
    written, shots = write_renditions(folder, out, public_url)
    take_screenshots(shots, camera)
    return written
