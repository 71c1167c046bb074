"""Localised details from CLDR (via Babel) and the gettext catalogues of the templates.

Catalogues live as ``templates/locale/<language>/LC_MESSAGES/messages.po``; they are compiled in
memory on first use (see :func:`translations`), so the ``.po`` files are the only copy and a
stale ``.mo`` can never be shipped. Dates, numbers and plural rules come from CLDR data in Babel.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from datetime import date
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_date
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

from worker.settings import TEMPLATES_DIR

# The language the msgids of the templates are written in.
SOURCE_LANGUAGE = "en"
DOMAIN = "messages"


TEMPLATE_ROOT = TEMPLATES_DIR
LOCALE_DIR = TEMPLATE_ROOT / "locale"


def catalogue_path(language: str, locale_dir: Path = LOCALE_DIR) -> Path:
    """Path of the ``.po`` catalogue of ``language``."""
    return locale_dir / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def catalogue_languages(locale_dir: Path = LOCALE_DIR) -> tuple[str, ...]:
    """Languages that have a catalogue, sorted."""
    return tuple(sorted(path.parent.parent.name for path in locale_dir.glob(f"*/*/{DOMAIN}.po")))


def read_catalogue(language: str, locale_dir: Path = LOCALE_DIR) -> Catalog:
    """Parse the ``.po`` catalogue of ``language``; raises ``FileNotFoundError`` if absent."""
    with catalogue_path(language, locale_dir).open("rb") as handle:
        return read_po(handle, locale=language, domain=DOMAIN)


@cache
def translations(language: str) -> NullTranslations:
    """Gettext translations for ``language``, compiled in memory from its ``.po`` file.

    Fuzzy entries are left out (as ``pybabel compile`` does without ``--use-fuzzy``), so an
    untranslated or fuzzy string shows the English msgid. A language without a catalogue gets
    ``NullTranslations`` (English msgids). Compiling all three catalogues takes about 2 ms.
    """
    try:
        catalog = read_catalogue(language)
    except FileNotFoundError:
        return NullTranslations()
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def resolve_language(
    requested: str | None, available: Sequence[str], fallbacks: Iterable[str] = ()
) -> str:
    """The language to use for a reader who asked for ``requested``.

    Order: the exact tag; its base language (``be-tarask`` -> ``be``); each of ``fallbacks``
    that is available; finally the first of ``available`` (callers pass the default first or
    put it in ``fallbacks``). Raises ``ValueError`` if ``available`` is empty.
    """
    if not available:
        raise ValueError("no languages available")
    if requested:
        tag = requested.replace("_", "-").lower()
        for candidate in (tag, tag.split("-")[0]):
            if candidate in available:
                return candidate
    for fallback in fallbacks:
        if fallback in available:
            return fallback
    return available[0]


def _widen_months(pattern: str) -> str:
    """Turn abbreviated month fields (MMM, LLL) into full ones, outside quoted literals."""
    parts = pattern.split("'")
    for index in range(0, len(parts), 2):  # even parts are outside quotes
        parts[index] = re.sub(
            r"(?<![ML])(MMM|LLL)(?![ML])", lambda m: m.group(1) + m.group(1)[0], parts[index]
        )
    return "'".join(parts)


def format_period(start: date, end: date, language: str) -> str:
    """The period of an edition as a CLDR date interval with full month names.

    Examples for 2024-07-08..2024-07-14: en "July 8 – 14, 2024", be "8–14 ліпеня 2024 г.",
    ru "8–14 июля 2024 г.". CLDR has no ``yMMMMd`` interval format, so, as UTS #35 (section
    "intervalFormats") prescribes and ICU does, we take the ``yMMMd`` one and widen its month
    field; Babel's ``format_interval`` skips that step and would print "Jul". Raises
    ``ValueError`` if ``end`` is before ``start``.
    """
    if end < start:
        raise ValueError(f"period ends ({end}) before it starts ({start})")
    locale = Locale.parse(language)
    if start == end:
        return format_date(start, "long", locale=locale)
    formats = locale.interval_formats["yMMMd"]
    if start.year != end.year:
        field = "y"
    elif start.month != end.month:
        field = "M"
    else:
        field = "d"
    start_pattern, end_pattern = formats[field]
    return format_date(start, _widen_months(start_pattern), locale=locale) + format_date(
        end, _widen_months(end_pattern), locale=locale
    )


def format_number(value: float | int, language: str) -> str:
    """``value`` with the language's digit grouping and decimal sign (en "300,000",
    be/ru "300 000" with a no-break space)."""
    return format_decimal(value, locale=Locale.parse(language))


def plural_forms(language: str) -> int:
    """How many plural forms the gettext catalogue of ``language`` has (en 2, be 3, ru 3)."""
    return Catalog(locale=language).num_plurals
