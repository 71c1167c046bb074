"""Readers' pages render byte for byte as recorded in ``tests/cases/pages/rendered.json``.

The recording was made with the hand-made ``_`` the pages used before ``jinja2.ext.i18n``
rendered them; every page, language (one without a catalogue too) and link error is covered, with
an address that needs HTML escaping.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.samples import CASES
from worker.web.pages import Pages

ADDRESS = 'o\'brien&<b>"x"</b>@example.org'
SITE = "https://example.org/?a=1&b=2"
LANGUAGES = ("en", "be", "ru", "xx")
RECORDED: dict[str, str] = json.loads((CASES / "pages" / "rendered.json").read_text("utf-8"))


def page_cases() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Every page to compare: key -> (page name, language, context)."""
    common = {"newsletter_name": 'Weekly <News> & "more"', "site": SITE}
    pages: dict[str, dict[str, Any]] = {
        "confirm": {"address": ADDRESS, "action": "/confirm/t.o&k"},
        "confirmed": {"address": ADDRESS},
        "resent": {},
        "unsubscribe": {"address": ADDRESS, "action": "/u/t.o&k"},
        "unsubscribed": {"address": ADDRESS},
        "link_error-expired-resend": {"code": "expired", "resend": "/confirm/t/resend"},
        "link_error-expired": {"code": "expired", "resend": ""},
        "link_error-used": {"code": "used", "resend": ""},
        "link_error-forged": {"code": "forged", "resend": ""},
    }
    return {
        f"{key}/{lang}": (key.split("-")[0], lang, {**common, **context})
        for key, context in pages.items()
        for lang in LANGUAGES
    }


@pytest.mark.parametrize("key", sorted(page_cases()))
def test_page_is_byte_identical_to_the_recording(key: str) -> None:
    # Given one page, language and context
    name, lang, context = page_cases()[key]
    # When it is rendered
    response = Pages().render(name, lang, **context)
    # Then the bytes are those recorded before the pages moved to jinja2.ext.i18n
    assert bytes(response.body).decode("utf-8") == RECORDED[key]
    assert response.headers["cache-control"] == "no-store"
