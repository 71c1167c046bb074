"""``/subscribe``: the hosted signup page of a newsletter, in each of its languages.

``GET /subscribe?lang=be[&newsletter=slug]`` shows the consent text of that language and a form;
the form posts to ``POST /subscribe``, which builds a signup event (docs/signup-event.md) and runs
the same validation as ``POST /signup`` (``validate_signup``: same refusal codes and limits), then
hands it to the same signup actor (double opt-in: the reader gets a confirmation mail). The page
loads nothing from another host (no scripts at all, no web fonts). No CSRF token: newsrooms embed
the form on their own sites (docs/website.md), and a forged post can only send a confirmation
mail, limited per IP and per address, that its owner ignores.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.editions.files import NewsletterProfile
from worker.editions.store import DEFAULT_SLUG, profile_of
from worker.models import Newsletter
from worker.runtime import Runtime
from worker.subscriptions.signups import (
    AddressRules,
    SignupRefused,
    record_refusal,
    validate_signup,
)
from worker.web.dependencies import PagesDep, RuntimeDep, SessionDep
from worker.web.forms import FormTooLarge, ReaderPageRoute, peer_ip, read_form
from worker.web.pages import Pages

router = APIRouter(route_class=ReaderPageRoute)


def _newsletter(rt: Runtime, session: Session, slug: str) -> Newsletter | None:
    """The newsletter ``slug``; the default one is created from its profile file on first use,
    as the signup actor does."""
    if slug == DEFAULT_SLUG:
        try:
            return rt.newsletter(session)
        except LookupError:  # no edition loaded and no profile file configured yet
            return None
    if len(slug) > 100:
        return None
    return session.scalar(select(Newsletter).where(Newsletter.slug == slug))


def page_language(profile: NewsletterProfile, asked: str) -> str:
    """``asked`` if the newsletter has it (``be-BY`` counts as ``be``), else its default."""
    tag = asked.replace("_", "-").lower()
    for candidate in (tag, tag.split("-")[0]):
        if candidate in profile.languages:
            return candidate
    return profile.default_language


def consent_text(pages: Pages, lang: str, newsletter_name: str) -> tuple[str, str]:
    """The consent sentence shown next to the checkbox in ``lang`` and its version: ``page-``,
    the language and the first 12 hex digits of its SHA-256, so the consent evidence of each
    signup names the exact wording the reader saw."""
    template = pages.environment(lang).get_template("pages/consent.txt.j2")
    text = template.render(newsletter_name=newsletter_name).strip()
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return text, f"page-{lang}-{digest}"


def _form(
    pages: Pages,
    profile: NewsletterProfile,
    slug: str,
    lang: str,
    *,
    email: str = "",
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    name = profile.name[lang]
    consent, _ = consent_text(pages, lang, name)
    return pages.render(
        "subscribe",
        lang,
        status=status,
        newsletter_name=name,
        site=profile.site,
        about=profile.about[lang],
        consent=consent,
        slug=slug,
        email=email,
        error=error,
        languages=profile.languages,
        query="" if slug == DEFAULT_SLUG else f"&newsletter={slug}",
    )


@router.get("/subscribe", response_class=HTMLResponse)
def subscribe_page(
    rt: RuntimeDep,
    pages: PagesDep,
    session: SessionDep,
    lang: str = "",
    newsletter: str = DEFAULT_SLUG,
) -> Response:
    """The signup form in ``lang`` (the newsletter's default for a language it does not have);
    404 page for an unknown newsletter."""
    row = _newsletter(rt, session, newsletter)
    if row is None:
        return Response("no such newsletter", status_code=404, media_type="text/plain")
    profile = profile_of(row)
    return _form(pages, profile, row.slug, page_language(profile, lang))


@router.post("/subscribe", response_class=HTMLResponse)
async def subscribe_post(request: Request, rt: RuntimeDep, pages: PagesDep) -> Response:
    """The form's post (fields ``email``, ``lang``, ``newsletter``, ``consent``). 200 with the
    same "check your mailbox" page whatever the address's state (no enumeration); 400 with the
    form again, the address kept and the reason in the reader's language, for a refused event
    (recorded as ``/signup`` records it); 413 for a body over 8 KB."""
    from worker.actors import handle_signup

    try:
        form = await read_form(request)
    except FormTooLarge:
        return Response("form too large", status_code=413, media_type="text/plain")
    with rt.session() as session:
        row = _newsletter(rt, session, form.get("newsletter") or DEFAULT_SLUG)
        if row is None:
            return Response("no such newsletter", status_code=404, media_type="text/plain")
        profile = profile_of(row)
        lang = page_language(profile, form.get("lang", ""))
        email = form.get("email", "").strip()
        if form.get("consent") != "yes":
            return _form(pages, profile, row.slug, lang, email=email, error="consent", status=400)
        data = signup_event(pages, profile, row.slug, lang, email, request)
        try:
            rules = AddressRules.from_settings(rt.settings)
            valid = validate_signup(data, rules, profile.languages)
        except SignupRefused as refusal:
            record_refusal(session, refusal, data, rt.clock.now())
            # too long: the form says so; any other refused address: "cannot
            # receive mail" (the codes of worker.subscriptions.addresses)
            code = refusal.code or ""
            shape = code.endswith("too_long")
            known = refusal.reason == "invalid_address" and not shape
            error = "invalid_address" if known else "malformed"
            return _form(pages, profile, row.slug, lang, email=email, error=error, status=400)
        page = pages.render(
            "subscribe_sent", lang, newsletter_name=profile.name[lang], site=profile.site
        )
    handle_signup.send(valid.event.model_dump(mode="json", exclude_none=True))
    return page


def signup_event(
    pages: Pages, profile: NewsletterProfile, slug: str, lang: str, email: str, request: Request
) -> dict[str, Any]:
    """The signup event of a form post: a fresh event id, the consent wording's version, and the
    connection's own IP and user agent as consent evidence (never fields a client writes)."""
    _, version = consent_text(pages, lang, profile.name[lang])
    data: dict[str, Any] = {
        "version": 1,
        "event_id": f"page-{uuid.uuid4().hex}",
        "email": email,
        "language": lang,
        "newsletter": slug,
        "source": "subscribe page",
        "consent_version": version,
    }
    ip = peer_ip(request)
    if ip:
        data["ip"] = ip
    agent = request.headers.get("user-agent")
    if agent:
        data["user_agent"] = agent[:512]
    return data
