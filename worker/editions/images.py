"""The edition's own images: copied from the edition folder at load, served by the web app.

An item's ``image.url`` may name a file of the edition folder (``border.jpg``) instead of a
remote URL. ``edition load`` copies those files to ``NEWSLETTER_IMAGES_DIR/<edition>/`` and the
mail points at ``{public_url}/images/<edition>/<file>`` (``worker.web.images``): mail clients
then load them from the newsletter's own domain, and no third party learns who opened the mail.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from worker.editions.files import EditionSource, local_images
from worker.editions.schema import EDITION_KEY, is_local_image

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


class ImagesNotConfigured(ValueError):
    """The edition keeps images in its folder but ``NEWSLETTER_IMAGES_DIR`` is not set."""


def copy_images(folder: Path, source: EditionSource, images_dir: str) -> list[Path]:
    """Copy the images ``source`` keeps in ``folder`` to ``images_dir/<edition key>/``; returns
    the copies (none when the edition has no local images). Raises :class:`ImagesNotConfigured`
    when there are some and ``images_dir`` is empty, ``OSError`` when a file cannot be copied."""
    names = local_images(source)
    if not names:
        return []
    if not images_dir:
        raise ImagesNotConfigured(
            f"the edition keeps {len(names)} image(s) in its folder ({', '.join(names)}): "
            "set NEWSLETTER_IMAGES_DIR to the folder the web app serves them from"
        )
    target = Path(images_dir) / source.key
    target.mkdir(parents=True, exist_ok=True)
    copies = []
    for name in names:
        copies.append(Path(shutil.copyfile(folder / name, target / name)))
    return copies


def stored_image(images_dir: str, key: str, name: str) -> Path | None:
    """The stored copy of image ``name`` of edition ``key``, or None (no such file, no images
    folder, or a key or name that is no plain edition key / image file name: no path escapes
    ``images_dir``)."""
    if not images_dir or not EDITION_KEY.match(key) or not is_local_image(name):
        return None
    path = Path(images_dir) / key / name
    return path if path.is_file() else None
