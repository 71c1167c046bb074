"""Localised details: CLDR date intervals, plurals, numbers; the gettext catalogues are complete."""

from __future__ import annotations

import re
from datetime import date

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from worker.editions.localisation import (
    LOCALE_DIR,
    TEMPLATE_ROOT,
    catalogue_languages,
    format_number,
    format_period,
    plural_forms,
    read_catalogue,
    resolve_language,
    translations,
)

LANGUAGES = ("en", "be", "ru")
THIN = "\u2009"  # CLDR puts thin spaces around the en dash in English ranges
NNBSP = "\u202f"  # narrow no-break space before "г." in Russian
NBSP = "\u00a0"  # digit group separator in be and ru


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", f"July 8{THIN}–{THIN}14, 2024"),
        ("be", "8–14 ліпеня 2024"),
        ("ru", f"8—14 июля 2024{NNBSP}г."),
    ],
)
def test_edition_period_is_a_cldr_interval_with_full_month(language: str, expected: str) -> None:
    assert format_period(date(2024, 7, 8), date(2024, 7, 14), language) == expected


def test_period_across_months_and_years() -> None:
    assert format_period(date(2024, 6, 28), date(2024, 7, 4), "ru") == (
        f"28 июня — 4 июля 2024{NNBSP}г."
    )
    assert format_period(date(2024, 6, 28), date(2024, 7, 4), "be") == "28 чэрвеня – 4 ліпеня 2024"
    assert format_period(date(2024, 12, 30), date(2025, 1, 5), "en") == (
        f"December 30, 2024{THIN}–{THIN}January 5, 2025"
    )
    assert format_period(date(2024, 7, 8), date(2024, 7, 8), "en") == "July 8, 2024"
    with pytest.raises(ValueError, match="before it starts"):
        format_period(date(2024, 7, 8), date(2024, 7, 1), "en")


@pytest.mark.parametrize(
    ("language", "forms"),
    [
        ("en", ["1 article", "2 articles", "5 articles", "11 articles", "21 articles"]),
        ("be", ["1 артыкул", "2 артыкулы", "5 артыкулаў", "11 артыкулаў", "21 артыкул"]),
        ("ru", ["1 статья", "2 статьи", "5 статей", "11 статей", "21 статья"]),
    ],
)
def test_plural_forms_follow_cldr(language: str, forms: list[str]) -> None:
    gettext = translations(language)

    got = [
        gettext.ngettext("%(num)s article", "%(num)s articles", n) % {"num": n}
        for n in (1, 2, 5, 11, 21)
    ]

    assert got == forms
    assert plural_forms(language) == (2 if language == "en" else 3)


def test_numbers_are_grouped_per_language() -> None:
    assert format_number(300000, "en") == "300,000"
    assert format_number(300000, "ru") == f"300{NBSP}000"
    assert format_number(1234.5, "be") == f"1{NBSP}234,5"


def test_language_resolution_order() -> None:
    available = ("en", "be", "ru")

    assert resolve_language("be", available, ("en",)) == "be"
    assert resolve_language("ru_RU", available, ("en",)) == "ru"
    assert resolve_language("be-tarask", available, ("en",)) == "be"
    assert resolve_language("uk", available, ("ru", "en")) == "ru"
    assert resolve_language("de", available, ("pl", "en")) == "en"
    assert resolve_language(None, available) == "en"
    with pytest.raises(ValueError):
        resolve_language("en", ())


def extracted_msgids() -> set[str]:
    """Msgids in the templates now, extracted the way templates/babel.cfg does."""
    found = extract_from_dir(
        str(TEMPLATE_ROOT),
        method_map=[("**.j2", "jinja2")],
        options_map={"**.j2": {"extensions": "jinja2.ext.i18n", "trimmed": "true"}},
    )
    return {message[2] if isinstance(message[2], str) else message[2][0] for message in found}


def catalogue_msgids(catalog: Catalog) -> set[str]:
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id}


def test_template_catalogue_is_up_to_date() -> None:
    with (LOCALE_DIR / "messages.pot").open("rb") as handle:
        pot = read_po(handle)

    assert catalogue_msgids(pot) == extracted_msgids(), (
        "templates changed: run pybabel extract/update (see templates/babel.cfg)"
    )


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"%\((\w+)\)s", text))


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_message_is_translated(language: str) -> None:
    # Given the catalogue of one language and the messages the templates use
    catalog = read_catalogue(language)
    wanted = extracted_msgids()

    # Then every msgid is there, translated, not fuzzy, with the same placeholders
    assert catalogue_msgids(catalog) >= wanted
    assert catalog.num_plurals == plural_forms(language)
    for message in catalog:
        if not message.id:
            continue
        ids = [message.id] if isinstance(message.id, str) else list(message.id)
        strings = (
            [message.string] if isinstance(message.string, str) else list(message.string or ())
        )
        assert not message.fuzzy, f"{language}: fuzzy {ids[0]!r}"
        assert all(strings) and len(strings) == (1 if len(ids) == 1 else catalog.num_plurals), (
            f"{language}: untranslated {ids[0]!r}"
        )
        for string in strings:
            assert placeholders(string) == placeholders(ids[-1]), f"{language}: {string!r}"
            # Translations are inserted into autoescaped MJML as trusted text: no markup allowed.
            assert not re.search(r"[<>&]", string), f"{language}: markup in {string!r}"


def test_catalogues_exist_for_every_language() -> None:
    assert set(catalogue_languages()) == set(LANGUAGES)
    assert translations("ru").gettext("Unsubscribe") == "Отписаться"
    assert translations("be").gettext("Unsubscribe") == "Адпісацца"
    assert translations("xx").gettext("Unsubscribe") == "Unsubscribe"
