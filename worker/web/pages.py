"""Readers' pages (confirmation, unsubscribe, link errors), in the subscriber's language.

Texts are translated by ``jinja2.ext.i18n`` with the gettext catalogues of ``templates/locale``
(new-style gettext: ``_("... %(address)s", address=...)`` escapes the values, not the catalogue
text). One Jinja environment per language, because installed translations are environment-wide.
"""

from __future__ import annotations

import threading
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from worker.editions.localisation import translations
from worker.editions.store import profile_of
from worker.models import Newsletter, Subscriber
from worker.runtime import Runtime
from worker.settings import TEMPLATES_DIR
from worker.subscriptions.tokens import TokenError


class Pages:
    """Renders ``templates/pages/<name>.html.j2`` in a language, as an uncached HTML response."""

    def __init__(self) -> None:
        self._environments: dict[str, jinja2.Environment] = {}
        self._lock = threading.Lock()

    def environment(self, lang: str) -> jinja2.Environment:
        """The Jinja environment translating into ``lang`` (English msgids without catalogue)."""
        with self._lock:
            env = self._environments.get(lang)
            if env is None:
                env = jinja2.Environment(
                    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                    autoescape=True,
                    undefined=jinja2.StrictUndefined,
                    extensions=["jinja2.ext.i18n"],
                )
                env.install_gettext_translations(translations(lang), newstyle=True)  # type: ignore[attr-defined]
                env.filters["language_name"] = language_name
                self._environments[lang] = env
            return env

    def render(self, name: str, lang: str, status: int = 200, **context: Any) -> HTMLResponse:
        """Page ``name`` in ``lang`` with ``context``; ``Cache-Control: no-store`` (personal)."""
        template = self.environment(lang).get_template(f"pages/{name}.html.j2")
        html = template.render(lang=lang, **context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def language_name(code: str) -> str:
    """A language's name in that language, capitalised (CLDR via Babel): ``be`` -> "Беларуская"."""
    try:
        name = Locale.parse(code).get_display_name(code) or code
    except (ValueError, UnknownLocaleError):
        return code
    return name[:1].upper() + name[1:]


def newsletter_context(
    rt: Runtime, session: Session, subscriber: Subscriber | None
) -> tuple[str, dict[str, Any]]:
    """The page language (the subscriber's if the newsletter has it, else its default) and the
    newsletter's name and site for the layout."""
    newsletter = session.get(Newsletter, subscriber.newsletter_id) if subscriber else None
    if newsletter is None:
        newsletter = rt.newsletter(session)
    profile = profile_of(newsletter)
    lang = (
        subscriber.language
        if subscriber and subscriber.language in profile.languages
        else profile.default_language
    )
    return lang, {"newsletter_name": profile.name.get(lang, ""), "site": profile.site}


def link_error(
    pages: Pages,
    rt: Runtime,
    session: Session,
    error: TokenError,
    subscriber: Subscriber | None = None,
    resend: str = "",
) -> HTMLResponse:
    """410 for an expired or used link (in the subscriber's language when the link names one,
    with a form that asks for a new mail when ``resend`` is given), 404 otherwise."""
    lang, ctx = newsletter_context(rt, session, subscriber)
    status = 410 if error.code in ("expired", "used") else 404
    return pages.render("link_error", lang, status=status, code=error.code, resend=resend, **ctx)
