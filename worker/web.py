"""The web app (FastAPI): the links in mails, the signup endpoint, the edition archive, health.

Run with ``uvicorn --factory worker.web:create_app``. No cookies, no sessions and no CSRF tokens on
the mail links: RFC 8058 one-click POSTs arrive without any. GET requests never change anything,
because mail security gateways fetch every link in a mail within seconds of delivery.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from worker.localisation import translations
from worker.models import Newsletter, Subscriber
from worker.newsletters import profile_of
from worker.runtime import Runtime
from worker.settings import TEMPLATES_DIR, Settings
from worker.signups import (
    SignupRefused,
    check_confirmation,
    confirm,
    parse_signup_event,
    record_refusal,
    unsubscribe,
)
from worker.tokens import Purpose, TokenError

ONE_CLICK_BODY = "List-Unsubscribe=One-Click"


def _pages() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.i18n"],
    )
    return env


class Pages:
    """Renders the pages in the subscriber's language (gettext catalogues in templates/locale)."""

    def __init__(self) -> None:
        self.env = _pages()

    def render(self, name: str, lang: str, status: int = 200, **context: Any) -> HTMLResponse:
        gettext = translations(lang)
        template = self.env.get_template(f"pages/{name}.html.j2")
        html = template.render(
            lang=lang,
            _=lambda text, **kw: gettext.gettext(text) % kw if kw else gettext.gettext(text),
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(rt: Runtime | None = None) -> FastAPI:
    """The ASGI app. ``rt`` defaults to a runtime built from the environment."""
    runtime = rt or Runtime(Settings.from_env())
    app = FastAPI(title="Newsletter", docs_url=None, redoc_url=None)
    pages = Pages()
    app.state.runtime = runtime

    def newsletter_context(subscriber: Subscriber | None, session: Any) -> tuple[str, dict[str, Any]]:
        newsletter = session.get(Newsletter, subscriber.newsletter_id) if subscriber else None
        if newsletter is None:
            newsletter = runtime.newsletter(session)
        profile = profile_of(newsletter)
        lang = subscriber.language if subscriber and subscriber.language in profile.languages else profile.default_language
        return lang, {"newsletter_name": profile.name.get(lang, ""), "site": profile.site}

    def link_error(session: Any, error: TokenError, lang_hint: str | None = None) -> HTMLResponse:
        lang, ctx = newsletter_context(None, session)
        status = 410 if error.code in ("expired", "used") else 404
        return pages.render("link_error", lang_hint or lang, status=status, code=error.code, **ctx)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(token: str) -> Response:
        """The confirmation link: a page with a button. Changes nothing (scanners GET it)."""
        with runtime.session() as session:
            try:
                subscriber, _ = check_confirmation(
                    session, runtime.tokens, token, runtime.settings.confirmation_expiry_hours * 3600
                )
            except TokenError as error:
                return link_error(session, error)
            lang, ctx = newsletter_context(subscriber, session)
            return pages.render("confirm", lang, address=subscriber.email, action=f"/confirm/{token}", **ctx)

    @app.post("/confirm/{token}", response_class=HTMLResponse)
    def confirm_post(token: str, request: Request) -> Response:
        """The human's button press: confirms the subscription (single use)."""
        with runtime.session() as session:
            try:
                subscriber = confirm(
                    session,
                    runtime.tokens,
                    token,
                    max_age_seconds=runtime.settings.confirmation_expiry_hours * 3600,
                    now=runtime.clock.now(),
                    ip=request.client.host if request.client else None,
                    user_agent=request.headers.get("user-agent"),
                )
            except TokenError as error:
                return link_error(session, error)
            lang, ctx = newsletter_context(subscriber, session)
            return pages.render("confirmed", lang, address=subscriber.email, **ctx)

    @app.get("/u/{token}", response_class=HTMLResponse)
    def unsubscribe_page(token: str) -> Response:
        """The visible unsubscribe link: a page with a button. Changes nothing."""
        with runtime.session() as session:
            try:
                claims = runtime.tokens.check(Purpose.UNSUBSCRIBE, token)
            except TokenError as error:
                return link_error(session, error)
            subscriber = session.get(Subscriber, claims.subscriber_id)
            if subscriber is None:
                return link_error(session, TokenError("forged", "unknown subscriber"))
            lang, ctx = newsletter_context(subscriber, session)
            return pages.render("unsubscribe", lang, address=subscriber.email, action=f"/u/{token}", **ctx)

    @app.post("/u/{token}")
    async def unsubscribe_post(token: str, request: Request) -> Response:
        """RFC 8058 one-click (body ``List-Unsubscribe=One-Click``: 200, no redirect, no cookie) or
        the page's button (an HTML page). Both unsubscribe at once."""
        body = (await request.body())[:4096]
        one_click = _is_one_click(body, request.headers.get("content-type", ""))
        with runtime.session() as session:
            try:
                subscriber = unsubscribe(
                    session,
                    runtime.tokens,
                    token,
                    source="one_click" if one_click else "page",
                    now=runtime.clock.now(),
                )
            except TokenError as error:
                if one_click:
                    return PlainTextResponse("invalid unsubscribe link", status_code=404)
                return link_error(session, error)
            if one_click:
                return PlainTextResponse("unsubscribed")
            lang, ctx = newsletter_context(subscriber, session)
            return pages.render("unsubscribed", lang, address=subscriber.email, **ctx)

    @app.post("/signup", status_code=202)
    async def signup(request: Request) -> Response:
        """Enqueue a signup event (the same JSON as the queue message, docs/signup-event.md).

        202 with the same body whatever the address's state (no enumeration); 400 with the
        reasons for a malformed event, which is also recorded.
        """
        from worker.actors import handle_signup

        raw = await request.body()
        try:
            data = json.loads(raw[:65536])
            event = parse_signup_event(data)
        except (ValueError, SignupRefused) as exc:
            refusal = exc if isinstance(exc, SignupRefused) else SignupRefused("malformed", f"body: not JSON ({exc})")
            with runtime.session() as session:
                record_refusal(session, refusal, raw[:8192].decode("utf-8", "replace"), runtime.clock.now())
            return JSONResponse({"status": "refused", "reason": refusal.reason, "detail": refusal.detail}, 400)
        handle_signup.send(event.model_dump(mode="json"))
        return JSONResponse({"status": "accepted"}, status_code=202)

    return app


def _is_one_click(body: bytes, content_type: str) -> bool:
    """Whether a POST body is the RFC 8058 §3.1 one-click marker, however the client encoded it
    (urlencoded as required, multipart/form-data as some clients send, or bare)."""
    text = body.decode("utf-8", "replace")
    if "multipart/form-data" in content_type:
        return "List-Unsubscribe" in text and "One-Click" in text
    values = parse_qs(text.strip()).get("List-Unsubscribe", [])
    return "One-Click" in values or text.strip() == ONE_CLICK_BODY
