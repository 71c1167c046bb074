"""``/p/{token}``: a reader's own page, linked from the footer of every mail.

The token is a signed, never-expiring preferences token (``Purpose.PREFERENCES``, see
``worker.subscriptions.tokens``): it names one reader and nothing else can be read from it.
``GET`` shows the page and changes nothing (mail gateways fetch every link); ``POST`` changes one
thing: the language, an unsubscribe, or a resubscribe. Every form carries a token bound to the
link token (``Tokens.form_token``), so a page on another site cannot post for the reader (CSRF).
A resubscribe is a new signup through the same validation and double opt-in as ``/signup``: the
reader gets a confirmation mail and stays unsubscribed until confirming.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from worker.editions.store import profile_of
from worker.models import Newsletter, Subscriber
from worker.runtime import Runtime
from worker.states import SubscriberStatus
from worker.subscriptions import lifecycle
from worker.subscriptions.signups import AddressRules, SignupRefused, validate_signup
from worker.subscriptions.tokens import Purpose, TokenError
from worker.web.dependencies import PagesDep, RuntimeDep, SessionDep
from worker.web.forms import FormTooLarge, ReaderPageRoute, peer_ip, read_form
from worker.web.pages import Pages, link_error, newsletter_context

router = APIRouter(route_class=ReaderPageRoute)

ACTIONS = ("language", "unsubscribe", "resubscribe")


def reader_of(session: Session, rt: Runtime, token: str) -> Subscriber:
    """The reader a preferences token names; raises ``TokenError`` (``forged``) for a bad
    signature, another purpose's token, an id beyond 64 bits, an unknown or an erased reader
    (suppressed with no address: nothing to show)."""
    claims = rt.tokens.check(Purpose.PREFERENCES, token)
    if not 0 < claims.subscriber_id < 2**63:  # a signed id no BIGINT column holds
        raise TokenError("forged", "this link is not valid")
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None or not subscriber.email:
        raise TokenError("forged", "this link is not valid")
    return subscriber


def _page(
    pages: Pages,
    rt: Runtime,
    session: Session,
    subscriber: Subscriber,
    token: str,
    *,
    notice: str = "",
    status: int = 200,
) -> HTMLResponse:
    lang, ctx = newsletter_context(rt, session, subscriber)
    newsletter = session.get(Newsletter, subscriber.newsletter_id)
    assert newsletter is not None
    return pages.render(
        "preferences",
        lang,
        status=status,
        address=subscriber.email,
        state=str(subscriber.status),
        languages=profile_of(newsletter).languages,
        action=f"/p/{token}",
        form_token=rt.tokens.form_token(token),
        notice=notice,
        **ctx,
    )


@router.get("/p/{token}", response_class=HTMLResponse)
def preferences_page(token: str, rt: RuntimeDep, pages: PagesDep, session: SessionDep) -> Response:
    """The reader's page: address, status, language, unsubscribe or resubscribe. Changes
    nothing; 404 page for a forged token."""
    try:
        subscriber = reader_of(session, rt, token)
    except TokenError as error:
        return link_error(pages, rt, session, error)
    return _page(pages, rt, session, subscriber, token)


@router.post("/p/{token}", response_class=HTMLResponse)
async def preferences_post(
    token: str, request: Request, rt: RuntimeDep, pages: PagesDep
) -> Response:
    """One change, named by the form field ``action`` (``language`` with ``language``,
    ``unsubscribe``, ``resubscribe``). 403 page for a missing or wrong form token, 400 page for
    an unknown action or language, 413 for a body over 8 KB; the page again with what was done."""
    try:
        form = await read_form(request)
    except FormTooLarge:
        return Response("form too large", status_code=413, media_type="text/plain")
    due_signup: dict[str, Any] | None = None
    with rt.session() as session:
        try:
            subscriber = reader_of(session, rt, token)
        except TokenError as error:
            return link_error(pages, rt, session, error)
        if not rt.tokens.check_form_token(token, form.get("form_token", "")):
            return _refused(pages, rt, session, subscriber, "form", 403)
        action = form.get("action", "")
        if action not in ACTIONS:
            return _refused(pages, rt, session, subscriber, "action", 400)
        now = rt.clock.now()
        if action == "language":
            newsletter = session.get(Newsletter, subscriber.newsletter_id)
            assert newsletter is not None
            if form.get("language") not in profile_of(newsletter).languages:
                return _refused(pages, rt, session, subscriber, "language", 400)
            subscriber.language = form["language"]
            subscriber.updated_at = now
            session.flush()
            notice = "language"
        elif action == "unsubscribe":
            lifecycle.unsubscribe(session, subscriber, source="preferences", now=now)
            notice = "unsubscribed"
        else:
            if subscriber.status != SubscriberStatus.UNSUBSCRIBED:
                return _page(pages, rt, session, subscriber, token, notice="nothing")
            try:
                due_signup = resubscribe_event(rt, session, subscriber, request)
            except SignupRefused:
                return _refused(pages, rt, session, subscriber, "address", 400)
            notice = "confirmation"
        page = _page(pages, rt, session, subscriber, token, notice=notice)
    if due_signup is not None:
        from worker.actors import handle_signup

        # The signup actor applies the limits and sends the confirmation mail, as for /signup.
        handle_signup.send(due_signup)
    return page


def resubscribe_event(
    rt: Runtime, session: Session, subscriber: Subscriber, request: Request
) -> dict[str, Any]:
    """The signup event (docs/signup-event.md) of a reader who asks to come back: their own
    address and language, the peer's IP and user agent as consent evidence, source
    ``preferences``. Validated as ``/signup`` validates (raises ``SignupRefused``)."""
    newsletter = session.get(Newsletter, subscriber.newsletter_id)
    assert newsletter is not None
    data: dict[str, Any] = {
        "version": 1,
        "event_id": f"preferences-{uuid.uuid4().hex}",
        "email": subscriber.email,
        "language": subscriber.language,
        "newsletter": newsletter.slug,
        "source": "preferences",
    }
    ip = peer_ip(request)
    if ip:
        data["ip"] = ip
    agent = request.headers.get("user-agent")
    if agent:
        data["user_agent"] = agent[:512]
    rules = AddressRules.from_settings(rt.settings)
    valid = validate_signup(data, rules, rt.signup_languages())
    return valid.event.model_dump(mode="json", exclude_none=True)


def _refused(
    pages: Pages, rt: Runtime, session: Session, subscriber: Subscriber, what: str, status: int
) -> HTMLResponse:
    """The clear 4xx page of a refused change (nothing changed), in the reader's language."""
    lang, ctx = newsletter_context(rt, session, subscriber)
    return pages.render("refused", lang, status=status, what=what, **ctx)
