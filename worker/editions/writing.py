"""Edition folders written out: the same files an editor writes by hand (docs/editions.md).

:func:`write_edition` turns a profile and the content per language into ``newsletter.yaml`` and
``<language>.yaml`` (plus the edition's own image files), so that ``newsletter edition check`` and
``load`` read them back to equal values: editions started from the website's feeds
(:mod:`worker.editions.feeds`) and editions exported from the database
(:mod:`worker.editions.bundles`) are ordinary edition folders. Pure: files only, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from worker.editions.files import (
    PROFILE_FILE,
    EditionContent,
    EditionItem,
    NewsletterProfile,
)
from worker.editions.schema import is_local_image


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line text as literal blocks (``|``), as editors write bodies."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value.strip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _dump(data: Mapping[str, Any], comment: str) -> str:
    body = yaml.dump(dict(data), Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=100)
    return f"# {comment}\n{body}"


def profile_yaml(profile: NewsletterProfile) -> str:
    """``newsletter.yaml`` text for ``profile``; optional fields left at their default are left
    out (``reply_to``, ``publisher``, ``feeds``, ``timezone``)."""
    data: dict[str, Any] = {
        "name": dict(profile.name),
        "from": {"address": profile.from_address, "name": dict(profile.from_name)},
    }
    if profile.reply_to:
        data["reply_to"] = profile.reply_to
    data["site"] = profile.site
    data["languages"] = list(profile.languages)
    data["default_language"] = profile.default_language
    data["about"] = dict(profile.about)
    if profile.publisher:
        data["publisher"] = profile.publisher
    if profile.feeds:
        data["feeds"] = dict(profile.feeds)
    if profile.timezone != "UTC":
        data["timezone"] = profile.timezone
    return _dump(data, "The newsletter itself (docs/editions.md).")


def _item(item: EditionItem) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if item.section:
        data["section"] = item.section
    data["title"] = item.title
    if item.standfirst:
        data["standfirst"] = item.standfirst
    data["url"] = item.url
    if item.image is not None:
        image: dict[str, Any] = {"url": item.image.url}
        if item.image.alt:  # absent: `edition check` asks the editor to describe the photo
            image["alt"] = item.image.alt
        if item.image.credit:
            image["credit"] = item.image.credit
        data["image"] = image
    data["lead"] = item.lead
    data["body"] = item.body.rstrip("\n") + "\n"
    return data


def _items(content: EditionContent) -> list[dict[str, Any]]:
    """The file's ``items``: each article, and ``absent: true`` at the placeholders' positions."""
    items: list[dict[str, Any]] = [{"absent": True} for _ in content.absent]
    for position, item in zip(content.positions(), content.items, strict=True):
        items.insert(position, _item(item))
    return items


def content_yaml(content: EditionContent, comment: str = "") -> str:
    """``<language>.yaml`` text for ``content``. An empty ``items`` is written as ``[]`` (which
    ``edition check`` reports: an edition needs items)."""
    data = {
        "edition": content.key,
        "language": content.language,
        "period": {"start": content.period_start, "end": content.period_end},
        "subject": content.subject,
        "preheader": content.preheader,
        "items": _items(content),
    }
    return _dump(data, comment or f"Edition {content.key}, {content.language}.")


def write_edition(
    folder: Path,
    profile: NewsletterProfile,
    contents: Mapping[str, EditionContent],
    images: Mapping[str, bytes] | None = None,
    comments: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write an edition folder at ``folder`` (created if needed): ``newsletter.yaml``, one
    ``<language>.yaml`` per entry of ``contents`` and the image files ``images`` (file name ->
    bytes; names must be plain image file names like ``border.jpg``). ``comments`` may give the
    first line of a language's file. Returns the files written.

    Raises ``ValueError`` for an image name that is not a plain image file name, ``OSError`` when
    a file cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / PROFILE_FILE]
    written[0].write_text(profile_yaml(profile), encoding="utf-8")
    for language, content in contents.items():
        path = folder / f"{language}.yaml"
        path.write_text(content_yaml(content, (comments or {}).get(language, "")), "utf-8")
        written.append(path)
    for name, data in (images or {}).items():
        if not is_local_image(name):
            raise ValueError(f"not an image file name: {name!r}")
        (folder / name).write_bytes(data)
        written.append(folder / name)
    return written
