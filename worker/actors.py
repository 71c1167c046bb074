"""dramatiq actors: each passes ids and JSON scalars only, opens a session, calls the domain, commits.

Start workers with ``dramatiq worker.actors``. Actors are idempotent (messages are delivered at
least once) and never raise for bad input: refusals are recorded in the database.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq

from worker.broker import broker  # noqa: F401  (configures the broker before any actor exists)
from worker.dispatch import expire_leases, pending_batches
from worker.dispatch import send_batch as send_batch_domain
from worker.models import Send, SendStatus, Subscriber, SubscriberStatus
from worker.newsletters import profile_of
from worker.runtime import Runtime
from worker.sends import plan_send as plan_send_domain
from worker.settings import Settings
from worker.signups import (
    SignupRefused,
    confirmation_token,
    parse_signup_event,
    record_refusal,
    sign_up,
)
from worker.transactional import send_transactional

log = logging.getLogger(__name__)
_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, built on first use (after dramatiq forked the worker process)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(Settings.from_env())
    return _runtime


def use_runtime(rt: Runtime | None) -> None:
    """Install a runtime (the demo and tests); None resets to the environment's."""
    global _runtime
    _runtime = rt


@dramatiq.actor(queue_name="signups", max_retries=10)
def handle_signup(event: Any) -> None:
    """A signup event from the website (see docs/signup-event.md). Never raises for bad input."""
    rt = runtime()
    with rt.session() as session:
        now = rt.clock.now()
        try:
            parsed = parse_signup_event(event)
            newsletter = rt.newsletter(session)
            outcome = sign_up(
                session,
                parsed,
                newsletter_id=newsletter.id,
                profile=profile_of(newsletter),
                now=now,
                allow_smtputf8=rt.settings.smtputf8_relay,
                check_deliverability=rt.settings.check_deliverability,
                hash_key=rt.settings.secret_key,
            )
        except SignupRefused as refusal:
            record_refusal(session, refusal, event, now)
            log.info("signup refused: %s", refusal.reason)
            return
    if outcome.send_confirmation and outcome.subscriber_id is not None:
        send_confirmation.send(outcome.subscriber_id)


@dramatiq.actor(queue_name="transactional", max_retries=10)
def send_confirmation(subscriber_id: int) -> None:
    """Send the double opt-in confirmation mail to a pending subscriber (nothing otherwise)."""
    rt = runtime()
    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None or subscriber.status != SubscriberStatus.PENDING:
            return
        token = confirmation_token(rt.tokens, subscriber)
        now = rt.clock.now()
        outcome = send_transactional(
            rt.mailer,
            name="confirmation",
            subscriber=subscriber,
            profile=profile_of(rt.newsletter(session)),
            context={
                "confirm_url": f"{rt.links.public_url}/confirm/{token}",
                "expires_hours": int(rt.settings.confirmation_expiry_hours),
            },
            public_url=rt.links.public_url,
            bounce_address=f"bounces@{rt.settings.bounce_domain}",
            message_id_domain=rt.settings.sending_domain,
            now=now,
        )
        if outcome.accepted:
            subscriber.confirmation_sent_at = now
        elif not outcome.permanent:
            raise RuntimeError(f"confirmation mail deferred: {outcome.code} {outcome.text}")  # retried


@dramatiq.actor(queue_name="sends", max_retries=10)
def plan_send(send_id: int) -> None:
    """Render and plan a send, then enqueue its batches."""
    rt = runtime()
    with rt.session() as session:
        send = plan_send_domain(session, send_id, rt.links.public_url, rt.clock.now())
        if send.status != SendStatus.SENDING:
            return
        batches = pending_batches(session, send_id, send.batch_size, rt.clock.now())
    for first, last, delay in batches:
        send_batch.send_with_options(args=(send_id, first, last), delay=int(delay * 1000))


@dramatiq.actor(queue_name="deliveries", max_retries=20, time_limit=3_600_000)
def send_batch(send_id: int, first_id: int, last_id: int) -> None:
    """Send one batch of a send. Throttled or deferred deliveries re-enqueue the batch with a
    delay instead of raising (a raised rate-limit error would use up dramatiq's retries)."""
    rt = runtime()
    with rt.session() as session:
        report = send_batch_domain(
            session,
            send_id,
            first_id,
            last_id,
            composer=rt.composer(session, send_id),
            mailer=rt.mailer,
            throttle=rt.throttle,
            clock=rt.clock,
            policy=rt.policy,
        )
    if report.retry_after is not None and report.stopped is None:
        send_batch.send_with_options(
            args=(send_id, first_id, last_id), delay=int(report.retry_after * 1000) + 1
        )


def reconcile(rt: Runtime) -> int:
    """Re-enqueue what the ledger says is unfinished (Redis may have restarted empty) and turn
    expired leases into ``unknown``. Returns the number of batch messages enqueued."""
    enqueued = 0
    with rt.session() as session:
        expire_leases(session, rt.clock.now())
        sends = session.query(Send).filter(Send.status.in_([SendStatus.SENDING, SendStatus.PLANNING])).all()
        for send in sends:
            if send.status == SendStatus.PLANNING:
                plan_send.send(send.id)
                enqueued += 1
                continue
            for first, last, delay in pending_batches(session, send.id, send.batch_size, rt.clock.now()):
                send_batch.send_with_options(args=(send.id, first, last), delay=int(delay * 1000))
                enqueued += 1
    return enqueued
