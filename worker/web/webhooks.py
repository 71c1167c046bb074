"""Provider webhook routes: ``POST /webhooks/{ses,postmark,sendgrid,mailgun}``.

Each route reads the raw request bytes (signatures cover bytes, not re-serialised JSON), verifies
them with :mod:`worker.feedback.webhooks` and the configured secret, then records every feedback
event
with :func:`worker.feedback.policy.record_feedback` as a *verified provider* (its recipient and
metadata
are trusted). Answers:

- ``200 {"recorded": n, "duplicates": m}``: done; a provider's retry of the same event id is a
  duplicate and changes nothing;
- ``401``: Postmark request without Basic credentials (with ``WWW-Authenticate``);
- ``403 {"error": reason}``: bad signature or credentials, stale timestamp, untrusted SNS topic,
  or the provider is not configured (empty secret);
- SES ``SubscriptionConfirmation`` (verified first): the SubscribeURL is visited, ``200``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from worker.feedback.policy import FeedbackPolicy, record_feedback
from worker.feedback.webhooks import WebhookEvent, WebhookRejected, mailgun, postmark, sendgrid, ses
from worker.runtime import Runtime
from worker.sending.identity import BOUNCE_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookAdapters:
    """The network edges of the SES route: fetching SNS signing certificates and visiting a
    SubscribeURL (tests replace them; production uses HTTPS to ``sns.*.amazonaws.com``)."""

    fetch_certificate: Callable[[str], bytes] = ses.fetch_signing_certificate
    confirm_subscription: Callable[[str], None] = field(default=ses.confirm_subscription)


def webhook_router(runtime: Runtime, adapters: WebhookAdapters | None = None) -> APIRouter:
    """The router for ``runtime``; include it in the FastAPI app."""
    router = APIRouter()
    edges = adapters or WebhookAdapters()
    settings = runtime.settings
    policy = FeedbackPolicy.from_settings(settings)

    async def record(events: list[WebhookEvent]) -> JSONResponse:
        recorded, duplicates = await run_in_threadpool(_record, runtime, policy, events)
        return JSONResponse({"recorded": recorded, "duplicates": duplicates})

    @router.post("/webhooks/ses")
    async def ses_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        topics = [t.strip() for t in settings.ses_topic_arns.split(",") if t.strip()]
        trust = ses.SnsTrust(topic_arns=topics, fetch_certificate=edges.fetch_certificate)
        try:
            _configured(topics, "SES")
            ses.verify(request.headers, body, trust, now=runtime.clock.now())
            url = ses.subscription_url(body)
        except WebhookRejected as rejected:
            return _rejected(rejected, "ses")
        if url is not None:
            edges.confirm_subscription(url)
            log.info("SNS subscription confirmed: %s", url[:200])
            return JSONResponse({"subscribed": True})
        return await record(ses.parse(body, verp_prefix=BOUNCE_PREFIX))

    @router.post("/webhooks/postmark")
    async def postmark_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        if not request.headers.get("authorization"):
            return JSONResponse(
                {"error": "Postmark webhook without Basic credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="webhooks"'},
            )
        try:
            _configured(settings.postmark_webhook_credentials, "Postmark")
            postmark.verify(request.headers, body, settings.postmark_webhook_credentials)
        except WebhookRejected as rejected:
            return _rejected(rejected, "postmark")
        return await record(postmark.parse(body))

    @router.post("/webhooks/sendgrid")
    async def sendgrid_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            _configured(settings.sendgrid_verification_key, "SendGrid")
            sendgrid.verify(
                request.headers, body, settings.sendgrid_verification_key, now=runtime.clock.now()
            )
        except WebhookRejected as rejected:
            return _rejected(rejected, "sendgrid")
        return await record(sendgrid.parse(body))

    @router.post("/webhooks/mailgun")
    async def mailgun_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            _configured(settings.mailgun_signing_key, "Mailgun")
            mailgun.verify(
                request.headers, body, settings.mailgun_signing_key, now=runtime.clock.now()
            )
        except WebhookRejected as rejected:
            return _rejected(rejected, "mailgun")
        return await record(mailgun.parse(body, verp_prefix=BOUNCE_PREFIX))

    return router


def _configured(secret: Any, provider: str) -> None:
    if not secret:
        raise WebhookRejected(f"{provider} webhook is not configured")


def _rejected(rejected: WebhookRejected, provider: str) -> JSONResponse:
    log.warning("%s webhook rejected: %s", provider, rejected.reason)
    return JSONResponse({"error": rejected.reason}, status_code=403)


def _record(
    runtime: Runtime, policy: FeedbackPolicy, events: list[WebhookEvent]
) -> tuple[int, int]:
    """Record each event in its own transaction; (recorded, duplicates)."""
    recorded = duplicates = 0
    for _provider_id, report in events:
        for attempt in (1, 2):  # a concurrent retry of the same event loses the unique race once
            try:
                with runtime.session() as session:
                    outcome = record_feedback(
                        session,
                        report,
                        policy=policy,
                        now=runtime.clock.now(),
                        tokens=runtime.tokens,
                        verified_provider=True,
                    )
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        if outcome.duplicate:
            duplicates += 1
        else:
            recorded += 1
    return recorded, duplicates
