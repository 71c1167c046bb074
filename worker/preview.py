"""Edition previews: each language's rendition as HTML, text and PNG screenshots.

Screenshots come from headless Chromium (``/usr/bin/chromium`` or ``$NEWSLETTER_CHROMIUM``) at
600 px (desktop: the layout's full width) and 375 px (a common phone width). Chromium's
``--screenshot`` captures the window only, so we shoot a tall window and trim the uniform
background below the content with Pillow; a page taller than the window is retried taller.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops

from worker.editions import read_edition
from worker.rendering import RenderedMessage, render_edition

WIDTHS = {"desktop": 600, "mobile": 375}
"""Screenshot widths in CSS pixels (device scale factor 1)."""

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Quiet, reproducible, no background traffic: screenshots must not depend on the network or on
# Chromium's component updates, and two runs must give the same pixels.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--font-render-hinting=none",
)
# Resolve no host at all: remote images fail at once instead of waiting for DNS.
OFFLINE_FLAG = "--host-resolver-rules=MAP * ~NOTFOUND"
FIRST_HEIGHT = 4000
MAX_HEIGHT = 32000
BOTTOM_MARGIN = 24  # px of background kept under the content
TIMEOUT_SECONDS = 90.0


class PreviewError(RuntimeError):
    """Chromium is missing, failed, or produced no screenshot."""


@dataclass(frozen=True)
class Shot:
    """One screenshot to take: an HTML file, the PNG to write, the window width in px."""

    html: Path
    png: Path
    width: int


def find_chromium() -> str:
    """Path of the Chromium binary: ``$NEWSLETTER_CHROMIUM``, ``/usr/bin/chromium``, or the first
    of :data:`CHROMIUM_CANDIDATES` on ``PATH``. Raises :class:`PreviewError` if there is none."""
    configured = os.environ.get("NEWSLETTER_CHROMIUM")
    if configured:
        return configured
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PreviewError(
        "Chromium not found: install it (Debian/Ubuntu: apt-get install -y chromium) "
        "or set NEWSLETTER_CHROMIUM to its path"
    )


def _chromium_shot(html: Path, png: Path, width: int, height: int, offline: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="newsletter-chromium-") as profile:
        command = [
            find_chromium(),
            *CHROMIUM_FLAGS,
            *([OFFLINE_FLAG] if offline else []),
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise PreviewError(f"Chromium took over {TIMEOUT_SECONDS:.0f} s on {html}") from error
    if done.returncode != 0 or not png.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise PreviewError(f"Chromium failed on {html} (exit {done.returncode}): {tail}")


def _content_height(png: Path) -> tuple[int, int]:
    """(height of the content above the uniform bottom background, image height)."""
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    background = rgb.getpixel((rgb.width - 1, rgb.height - 1))
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, background)).getbbox()
    return (box[3] if box else 0), rgb.height


def screenshot(html: Path, png: Path, width: int, *, offline: bool = True) -> Path:
    """Screenshot the page ``html`` at ``width`` CSS px into ``png``, full page height.

    With ``offline`` no host name resolves, so remote images show as broken (their alt text)
    instead of depending on the network. Raises :class:`PreviewError`. Takes about 1 s.
    """
    height = FIRST_HEIGHT
    while True:
        _chromium_shot(html, png, width, height, offline)
        content, shot_height = _content_height(png)
        if content < shot_height or height >= MAX_HEIGHT:
            break
        height = min(height * 2, MAX_HEIGHT)
    with Image.open(png) as image:
        trimmed = image.convert("RGB").crop((0, 0, width, min(content + BOTTOM_MARGIN, height)))
    trimmed.save(png, optimize=True)
    return png


def take_screenshots(shots: Iterable[Shot], *, offline: bool = True, workers: int = 2) -> None:
    """Take several screenshots, ``workers`` Chromium processes at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(screenshot, shot.html, shot.png, shot.width, offline=offline)
            for shot in shots
        ]
        for future in futures:
            future.result()


def write_rendition(rendered: RenderedMessage, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.txt`` (the text part) into ``out``."""
    html = out / f"{stem}.html"
    text = out / f"{stem}.txt"
    html.write_text(rendered.html, encoding="utf-8")
    text.write_text(rendered.text, encoding="utf-8")
    return html, text


def write_preview(
    folder: Path, out: Path, public_url: str, *, offline: bool = False
) -> list[Path]:
    """Render the edition in ``folder`` and write, per language ``xx``: ``xx.html``,
    ``xx.txt``, ``xx-desktop.png`` (600 px) and ``xx-mobile.png`` (375 px) into ``out``.

    Returns the written paths in that order, language by language. Raises
    :class:`worker.editions.EditionInvalid`, :class:`worker.rendering.TemplateProblem` or
    :class:`PreviewError`. ``offline`` keeps Chromium from loading remote images.
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
            png = out / f"{language}-{kind}.png"
            shots.append(Shot(html, png, width))
            written.append(png)
    take_screenshots(shots, offline=offline)
    return written
