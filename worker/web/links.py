"""The links in mails: ``/confirm/{token}`` (and its resend form) and ``/u/{token}``.

GET requests never change anything, because mail security gateways fetch every link in a mail
within seconds of delivery; the POST (a button, or an RFC 8058 one-click request) acts. POSTs
open their own session so that the change is committed before any follow-up message is enqueued
(the actor would otherwise read the old state).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from worker.models import Subscriber
from worker.operators import metrics
from worker.runtime import Runtime
from worker.states import SubscriberStatus
from worker.subscriptions.addresses import dedupe_key_of, mailbox_key_of
from worker.subscriptions.lifecycle import unsubscribe_by_token
from worker.subscriptions.signups import (
    check_confirmation,
    confirm,
    resend_target,
    subscriber_of_link,
)
from worker.subscriptions.tokens import Purpose, TokenError
from worker.web.callers import client_ip, trusted_networks
from worker.web.dependencies import PagesDep, RuntimeDep, SessionDep
from worker.web.pages import Pages, link_error, newsletter_context

ONE_CLICK_BODY = "List-Unsubscribe=One-Click"

router = APIRouter()


def _confirm_link_error(
    pages: Pages, rt: Runtime, session: Session, error: TokenError, token: str
) -> HTMLResponse:
    """The link error page of a confirmation link, offering a new mail for an expired link
    of a still pending subscriber."""
    subscriber = subscriber_of_link(session, rt.tokens, token)
    pending = subscriber is not None and subscriber.status == SubscriberStatus.PENDING
    resend = f"/confirm/{token}/resend" if error.code == "expired" and pending else ""
    return link_error(pages, rt, session, error, subscriber, resend)


@router.get("/confirm/{token}", response_class=HTMLResponse)
def confirm_page(token: str, rt: RuntimeDep, pages: PagesDep, session: SessionDep) -> Response:
    """The confirmation link: a page with a button. Changes nothing (scanners GET it)."""
    max_age = rt.settings.confirmation_expiry_hours * 3600
    try:
        subscriber, _ = check_confirmation(session, rt.tokens, token, max_age)
    except TokenError as error:
        return _confirm_link_error(pages, rt, session, error, token)
    lang, ctx = newsletter_context(rt, session, subscriber)
    action = f"/confirm/{token}"
    return pages.render("confirm", lang, address=subscriber.email, action=action, **ctx)


@router.post("/confirm/{token}", response_class=HTMLResponse)
def confirm_post(token: str, request: Request, rt: RuntimeDep, pages: PagesDep) -> Response:
    """The human's button press: confirms the subscription (single use)."""
    with rt.session() as session:
        try:
            subscriber = confirm(
                session,
                rt.tokens,
                token,
                max_age_seconds=rt.settings.confirmation_expiry_hours * 3600,
                now=rt.clock.now(),
                # behind the configured proxies, the hop they name (not the proxy itself)
                ip=client_ip(request, trusted_networks(rt.settings.trusted_proxies)),
                user_agent=request.headers.get("user-agent"),
            )
        except TokenError as error:
            return _confirm_link_error(pages, rt, session, error, token)
        metrics.subscription_confirmed()
        lang, ctx = newsletter_context(rt, session, subscriber)
        subscriber_id = subscriber.id
        page = pages.render("confirmed", lang, address=subscriber.email, **ctx)
    if rt.settings.welcome_mail:
        from worker.actors import send_welcome

        send_welcome.send(subscriber_id)
    return page


@router.post("/confirm/{token}/resend", response_class=HTMLResponse)
def confirm_resend(token: str, request: Request, rt: RuntimeDep, pages: PagesDep) -> Response:
    """The "send me a new mail" button of an expired link's page. The same page whatever
    happened (no enumeration); limited like signups (per IP, per address, resend window)."""
    from worker.actors import send_confirmation

    due: int | None = None
    with rt.session() as session:
        subscriber = resend_target(session, rt.tokens, token)
        ip = client_ip(request, trusted_networks(rt.settings.trusted_proxies))
        if subscriber is not None:
            # the IP's limit, then (only if it allows) the mailbox's, in one Redis call
            _, mailbox = rt.limiter.allow_signup_and_confirmation(
                ip or "unknown-peer", mailbox_key_of(dedupe_key_of(subscriber.email))
            )
            if mailbox is not None and mailbox.allowed:
                due = subscriber.id
        lang, ctx = newsletter_context(rt, session, subscriber)
        page = pages.render("resent", lang, **ctx)
    if due is not None:
        send_confirmation.send(due)
    return page


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str, rt: RuntimeDep, pages: PagesDep, session: SessionDep) -> Response:
    """The visible unsubscribe link: a page with a button. Changes nothing."""
    try:
        claims = rt.tokens.check(Purpose.UNSUBSCRIBE, token)
    except TokenError as error:
        return link_error(pages, rt, session, error)
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        return link_error(pages, rt, session, TokenError("forged", "unknown subscriber"))
    lang, ctx = newsletter_context(rt, session, subscriber)
    action = f"/u/{token}"
    return pages.render("unsubscribe", lang, address=subscriber.email, action=action, **ctx)


@router.post("/u/{token}")
async def unsubscribe_post(
    token: str, request: Request, rt: RuntimeDep, pages: PagesDep
) -> Response:
    """RFC 8058 one-click (body ``List-Unsubscribe=One-Click``: 200, no redirect, no cookie) or
    the page's button (an HTML page). Both unsubscribe at once."""
    body = (await request.body())[:4096]  # capped by BodyLimit before it is all read
    one_click = is_one_click(body, request.headers.get("content-type", ""))
    # The database work in a thread: blocking calls in an async route stall every request.
    return await run_in_threadpool(_unsubscribe, token, one_click, rt, pages)


def _unsubscribe(token: str, one_click: bool, rt: Runtime, pages: Pages) -> Response:
    with rt.session() as session:
        try:
            subscriber = unsubscribe_by_token(
                session,
                rt.tokens,
                token,
                source="one_click" if one_click else "page",
                now=rt.clock.now(),
            )
        except TokenError as error:
            if one_click:
                return PlainTextResponse("invalid unsubscribe link", status_code=404)
            return link_error(pages, rt, session, error)
        if one_click:
            return PlainTextResponse("unsubscribed")
        lang, ctx = newsletter_context(rt, session, subscriber)
        return pages.render("unsubscribed", lang, address=subscriber.email, **ctx)


def is_one_click(body: bytes, content_type: str) -> bool:
    """Whether a POST body is the RFC 8058 §3.1 one-click marker, however the client encoded it
    (urlencoded as required, multipart/form-data as some clients send, or bare)."""
    text = body.decode("utf-8", "replace")
    if "multipart/form-data" in content_type:
        return "List-Unsubscribe" in text and "One-Click" in text
    values = parse_qs(text.strip()).get("List-Unsubscribe", [])
    return "One-Click" in values or text.strip() == ONE_CLICK_BODY
