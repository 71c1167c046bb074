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
  a Mailgun signature already used with another body (a replay), a body nested deeper than
  :data:`worker.safety.json_documents.MAX_DEPTH`, or the provider is not configured (empty secret);
- ``413``: a body over ``NEWSLETTER_WEBHOOK_MAX_BYTES`` (:class:`worker.web.guards.BodyLimit`);
- SES ``SubscriptionConfirmation`` (verified first): the SubscribeURL is visited, ``200``.

Verification runs in a worker thread: the SNS certificate fetch and the SubscribeURL visit are
blocking HTTPS calls that would otherwise stall every other request of the process.
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
from starlette.datastructures import Headers

from worker.feedback.policy import FeedbackPolicy, record_feedback
from worker.feedback.replays import MemoryReplays, RedisReplays, Replays
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


# What a provider's handler makes of a request: the events to record, or a response of its own
# (an SNS subscription confirmation). Raises ``WebhookRejected`` for a request to refuse.
Accepted = list[WebhookEvent] | JSONResponse


def webhook_router(runtime: Runtime, adapters: WebhookAdapters | None = None) -> APIRouter:
    """The router for ``runtime``; include it in the FastAPI app."""
    router = APIRouter()
    edges = adapters or WebhookAdapters()
    settings = runtime.settings
    policy = FeedbackPolicy.from_settings(settings)
    replays: Replays = MemoryReplays() if runtime.redis is None else RedisReplays(runtime.redis)

    async def receive(
        request: Request, provider: str, accept: Callable[[Headers, bytes], Accepted]
    ) -> JSONResponse:
        """Verify and parse the raw body with ``accept``, then record its events: 200 with the
        counts, 403 when ``accept`` rejects the request."""
        body = await request.body()  # capped by BodyLimit before it is all read
        try:
            accepted = await run_in_threadpool(accept, request.headers, body)
        except WebhookRejected as rejected:
            return _rejected(rejected, provider)
        if isinstance(accepted, JSONResponse):
            return accepted
        recorded, duplicates = await run_in_threadpool(_record, runtime, policy, accepted)
        return JSONResponse({"recorded": recorded, "duplicates": duplicates})

    def accept_ses(headers: Headers, body: bytes) -> Accepted:
        topics = [t.strip() for t in settings.ses_topic_arns.split(",") if t.strip()]
        trust = ses.SnsTrust(topic_arns=topics, fetch_certificate=edges.fetch_certificate)
        _configured(topics, "SES")
        ses.verify(headers, body, trust, now=runtime.clock.now())
        url = ses.subscription_url(body)
        if url is None:
            return ses.parse(body, verp_prefix=BOUNCE_PREFIX)
        edges.confirm_subscription(url)
        log.info("SNS subscription confirmed: %s", url[:200])
        return JSONResponse({"subscribed": True})

    def accept_postmark(headers: Headers, body: bytes) -> Accepted:
        if not headers.get("authorization"):
            return JSONResponse(
                {"error": "Postmark webhook without Basic credentials"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="webhooks"'},
            )
        _configured(settings.postmark_webhook_credentials, "Postmark")
        postmark.verify(headers, body, settings.postmark_webhook_credentials)
        return postmark.parse(body)

    def accept_sendgrid(headers: Headers, body: bytes) -> Accepted:
        key = settings.sendgrid_verification_key
        _configured(key, "SendGrid")
        sendgrid.verify(headers, body, key, now=runtime.clock.now())
        return sendgrid.parse(body)

    def accept_mailgun(headers: Headers, body: bytes) -> Accepted:
        _configured(settings.mailgun_signing_key, "Mailgun")
        mailgun.verify(headers, body, settings.mailgun_signing_key, now=runtime.clock.now())
        # A token is acceptable while its timestamp is: tolerance either side of now.
        window = int(2 * mailgun.DEFAULT_TOLERANCE.total_seconds()) + 60
        if not replays.first_use("mailgun", mailgun.signature_token(body), body, window):
            raise WebhookRejected("Mailgun signature token already used with another body")
        return mailgun.parse(body, verp_prefix=BOUNCE_PREFIX)

    @router.post("/webhooks/ses")
    async def ses_webhook(request: Request) -> JSONResponse:
        return await receive(request, "ses", accept_ses)

    @router.post("/webhooks/postmark")
    async def postmark_webhook(request: Request) -> JSONResponse:
        return await receive(request, "postmark", accept_postmark)

    @router.post("/webhooks/sendgrid")
    async def sendgrid_webhook(request: Request) -> JSONResponse:
        return await receive(request, "sendgrid", accept_sendgrid)

    @router.post("/webhooks/mailgun")
    async def mailgun_webhook(request: Request) -> JSONResponse:
        return await receive(request, "mailgun", accept_mailgun)

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
