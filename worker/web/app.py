"""The web app (FastAPI): the links in mails, the signup endpoint, the edition archive, health.

Run with ``uvicorn --factory worker.web.app:create_app``. No cookies, no sessions and no CSRF
tokens on
the mail links: RFC 8058 one-click POSTs arrive without any. GET requests never change anything,
because mail security gateways fetch every link in a mail within seconds of delivery.
"""

from __future__ import annotations

import json
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from worker.editions.localisation import translations
from worker.editions.store import profile_of
from worker.models import Newsletter, Subscriber
from worker.operators import metrics
from worker.runtime import Runtime
from worker.settings import TEMPLATES_DIR, Settings
from worker.states import SubscriberStatus
from worker.subscriptions.lifecycle import unsubscribe_by_token
from worker.subscriptions.limits import SignupLimiter, signup_limiter
from worker.subscriptions.signups import (
    AddressRules,
    SignupRefused,
    check_confirmation,
    confirm,
    record_refusal,
    resend_target,
    subscriber_of_link,
    validate_signup,
)
from worker.subscriptions.tokens import Purpose, TokenError
from worker.web.operators import operator_router
from worker.web.webhooks import webhook_router

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
    app.include_router(operator_router(runtime))  # /metrics, /readyz, /dashboard
    app.include_router(webhook_router(runtime))  # /webhooks/{ses,postmark,sendgrid,mailgun}

    def newsletter_context(
        subscriber: Subscriber | None, session: Any
    ) -> tuple[str, dict[str, Any]]:
        newsletter = session.get(Newsletter, subscriber.newsletter_id) if subscriber else None
        if newsletter is None:
            newsletter = runtime.newsletter(session)
        profile = profile_of(newsletter)
        lang = (
            subscriber.language
            if subscriber and subscriber.language in profile.languages
            else profile.default_language
        )
        return lang, {"newsletter_name": profile.name.get(lang, ""), "site": profile.site}

    def link_error(
        session: Any, error: TokenError, subscriber: Subscriber | None = None, resend: str = ""
    ) -> HTMLResponse:
        """410 for an expired or used link (in the subscriber's language when the link names
        one, with a form that asks for a new mail when ``resend`` is given), 404 otherwise."""
        lang, ctx = newsletter_context(subscriber, session)
        status = 410 if error.code in ("expired", "used") else 404
        code = error.code
        return pages.render("link_error", lang, status=status, code=code, resend=resend, **ctx)

    def confirm_link_error(session: Any, error: TokenError, token: str) -> HTMLResponse:
        subscriber = subscriber_of_link(session, runtime.tokens, token)
        pending = subscriber is not None and subscriber.status == SubscriberStatus.PENDING
        resend = f"/confirm/{token}/resend" if error.code == "expired" and pending else ""
        return link_error(session, error, subscriber, resend)

    languages: list[tuple[str, ...]] = []

    def signup_languages() -> tuple[str, ...]:
        """The newsletter's languages, read once (the same database read for every signup)."""
        if not languages:
            with runtime.session() as session:
                languages.append(profile_of(runtime.newsletter(session)).languages)
        return languages[0]

    limiter: list[SignupLimiter] = []

    def signup_limits() -> SignupLimiter:
        if not limiter:
            limiter.append(signup_limiter(runtime.settings))
        return limiter[0]

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/confirm/{token}", response_class=HTMLResponse)
    def confirm_page(token: str) -> Response:
        """The confirmation link: a page with a button. Changes nothing (scanners GET it)."""
        with runtime.session() as session:
            try:
                subscriber, _ = check_confirmation(
                    session,
                    runtime.tokens,
                    token,
                    runtime.settings.confirmation_expiry_hours * 3600,
                )
            except TokenError as error:
                return confirm_link_error(session, error, token)
            lang, ctx = newsletter_context(subscriber, session)
            action = f"/confirm/{token}"
            return pages.render("confirm", lang, address=subscriber.email, action=action, **ctx)

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
                return confirm_link_error(session, error, token)
            metrics.CONFIRMATIONS.inc()
            lang, ctx = newsletter_context(subscriber, session)
            subscriber_id = subscriber.id
            page = pages.render("confirmed", lang, address=subscriber.email, **ctx)
        if runtime.settings.welcome_mail:
            from worker.actors import send_welcome

            send_welcome.send(subscriber_id)
        return page

    @app.post("/confirm/{token}/resend", response_class=HTMLResponse)
    def confirm_resend(token: str, request: Request) -> Response:
        """The "send me a new mail" button of an expired link's page. The same page whatever
        happened (no enumeration); limited like signups (per IP, per address, resend window)."""
        from worker.actors import send_confirmation

        due: int | None = None
        with runtime.session() as session:
            subscriber = resend_target(session, runtime.tokens, token)
            ip = request.client.host if request.client else ""
            limits = signup_limits()
            if (
                subscriber is not None
                and limits.allow_signup(ip).allowed
                and limits.allow_confirmation(subscriber.email_key).allowed
            ):
                due = subscriber.id
            lang, ctx = newsletter_context(subscriber, session)
            page = pages.render("resent", lang, **ctx)
        if due is not None:
            send_confirmation.send(due)
        return page

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
            return pages.render(
                "unsubscribe", lang, address=subscriber.email, action=f"/u/{token}", **ctx
            )

    @app.post("/u/{token}")
    async def unsubscribe_post(token: str, request: Request) -> Response:
        """RFC 8058 one-click (body ``List-Unsubscribe=One-Click``: 200, no redirect, no cookie) or
        the page's button (an HTML page). Both unsubscribe at once."""
        body = (await request.body())[:4096]
        one_click = _is_one_click(body, request.headers.get("content-type", ""))
        with runtime.session() as session:
            try:
                subscriber = unsubscribe_by_token(
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

    @app.get("/archive/{key}/{lang}", response_class=HTMLResponse)
    def archive(key: str, lang: str) -> Response:
        """The public "view in browser" copy of an edition in one language (no personal links)."""
        from worker.editions.rendering import UNSUBSCRIBE_URL, render_edition
        from worker.editions.store import edition_contents, find_edition

        with runtime.session() as session:
            edition = find_edition(session, key)
            contents = edition_contents(session, edition) if edition is not None else {}
            if lang not in contents or edition is None:
                return PlainTextResponse("no such edition", status_code=404)
            newsletter = session.get(Newsletter, edition.newsletter_id)
            assert newsletter is not None
            profile = profile_of(newsletter)
        rendered = render_edition(profile, contents[lang], public_url=runtime.links.public_url)
        return HTMLResponse(rendered.html.replace(UNSUBSCRIBE_URL, profile.site))

    @app.post("/signup", status_code=202)
    async def signup(request: Request) -> Response:
        """Enqueue a signup event (the same JSON as the queue message, docs/signup-event.md).

        202 with the same body whatever the address's state (no enumeration: the database is
        not even read here); 400 with the reason for an event the schema or the address check
        refuses, which is also recorded. Without ``ip``/``user_agent`` in the event, the
        request's own are recorded (a browser posting the form directly).
        """
        from worker.actors import handle_signup

        raw = await request.body()
        try:
            data = _signup_json(raw)
            if isinstance(data, dict):
                data = _with_request_evidence(data, request)
            rules = AddressRules.from_settings(runtime.settings)
            valid = validate_signup(data, rules, signup_languages())
        except SignupRefused as refusal:
            with runtime.session() as session:
                payload = raw[:8192].decode("utf-8", "replace")
                record_refusal(session, refusal, payload, runtime.clock.now())
            body = {"status": "refused", "reason": refusal.reason, "detail": refusal.detail}
            return JSONResponse(body, 400)
        handle_signup.send(valid.event.model_dump(mode="json", exclude_none=True))
        return JSONResponse({"status": "accepted"}, status_code=202)

    return app


MAX_SIGNUP_BYTES = 65_536


def _signup_json(raw: bytes) -> Any:
    """The decoded body of ``POST /signup``; raises ``SignupRefused`` (``malformed``)."""
    if len(raw) > MAX_SIGNUP_BYTES:
        raise SignupRefused("malformed", f"body: longer than {MAX_SIGNUP_BYTES} bytes")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise SignupRefused("malformed", f"body: not JSON ({exc})") from None


def _with_request_evidence(data: dict[str, Any], request: Request) -> dict[str, Any]:
    """The event with the request's IP and User-Agent where the event has none."""
    filled = dict(data)
    if "ip" not in filled and request.client is not None and _is_ip(request.client.host):
        filled["ip"] = request.client.host
    agent = request.headers.get("user-agent")
    if "user_agent" not in filled and agent:
        filled["user_agent"] = agent[:512]
    return filled


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


def _is_one_click(body: bytes, content_type: str) -> bool:
    """Whether a POST body is the RFC 8058 §3.1 one-click marker, however the client encoded it
    (urlencoded as required, multipart/form-data as some clients send, or bare)."""
    text = body.decode("utf-8", "replace")
    if "multipart/form-data" in content_type:
        return "List-Unsubscribe" in text and "One-Click" in text
    values = parse_qs(text.strip()).get("List-Unsubscribe", [])
    return "One-Click" in values or text.strip() == ONE_CLICK_BODY
