"""dramatiq actors: each passes ids and JSON scalars, opens a session, calls the domain, commits.

Start workers with ``dramatiq worker.actors``. Actors are idempotent (messages are delivered at
least once) and never raise for bad input: refusals are recorded in the database.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, cast

import dramatiq
from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.orm import Session

from worker import broker
from worker.broker import batch_name
from worker.editions.files import NewsletterProfile
from worker.editions.store import profile_of
from worker.logs import log_context
from worker.models import Newsletter, Send, Subscriber
from worker.operators import metrics
from worker.runtime import Runtime, runtime
from worker.runtime import use_runtime as use_runtime  # re-exported for the demo and tests
from worker.sending.batch import send_batch as send_batch_domain
from worker.sending.identity import bounce_address
from worker.sending.planning import pending_batches
from worker.sending.ports import SmtpOutcome
from worker.sending.sends import plan_send as plan_send_domain
from worker.sending.sends import start_due_sends
from worker.sending.slots import fire_due_slots
from worker.sending.transactional import send_transactional
from worker.settings import Settings
from worker.states import SendStatus, SubscriberStatus
from worker.subscriptions.addresses import recipient_domain
from worker.subscriptions.driver import CONFIRMATION_SENT, driver
from worker.subscriptions.limits import Verdict
from worker.subscriptions.signups import (
    AddressRules,
    awaiting_confirmation,
    confirmation_token,
    process_signup,
)
from worker.subscriptions.tokens import preferences_token, unsubscribe_token

log = logging.getLogger(__name__)

# This module is the workers' entry point (``dramatiq worker.actors`` imports it, then takes
# dramatiq's global broker). Actors bind to the global broker when they are declared, so it is
# set up first, from the environment, unless an entry point (the demo, tests) already did.
if not broker.installed():
    broker.setup(Settings.from_env())


# Ahead of bulk work in a worker that consumes every queue: dramatiq orders the messages a
# process has fetched by priority, lowest first (default 0).
TRANSACTIONAL_PRIORITY = -10


@dramatiq.actor(queue_name="signups", max_retries=10, priority=TRANSACTIONAL_PRIORITY)
def handle_signup(event: Any) -> None:
    """A signup event from the website (see docs/signup-event.md): any JSON value. Never raises
    for bad input: refusals and limited signups are recorded in ``signup_refusal``.

    A new reader whose domain slot is free (taken with the abuse limits) is mailed here, after
    the signup is committed, in the same session; every other due mail, and a mail this could
    not send (no slot, the relay's 4xx), goes to ``send_confirmation``: a deferral never raises,
    since a retried event would be a duplicate that mails nobody."""
    rt = runtime()
    newsletter, profile = rt.signup_newsletter()
    with rt.session() as session:
        outcome = process_signup(
            session,
            event,
            newsletter=newsletter,
            profile=profile,
            rules=AddressRules.from_settings(rt.settings),
            limiter=rt.limiter,
            hash_key=rt.settings.secret_key,
            now=rt.clock.now(),
        )
        session.commit()  # the signup is kept before any mail names it
        metrics.signup_handled(outcome.status, outcome.reason)
        if outcome.reason:
            log.info("signup %s: %s", outcome.status, outcome.reason)
        subscriber_id = outcome.subscriber_id
        if not outcome.send_confirmation or subscriber_id is None:
            return
        slot, reader = outcome.slot, outcome.reader
        if slot is not None and not slot.allowed:  # the domain's slots are taken: wait for one
            send_confirmation.send_with_options(args=(subscriber_id,), delay=_slot_delay(slot))
            return
        if slot is None or reader is None:  # not a new reader: the mail takes its own slot
            send_confirmation.send(subscriber_id)
            return
        with log_context(subscriber_id=subscriber_id):
            now = rt.clock.now()
            try:  # a new reader: no re-permission (that is an imported one)
                sent = mail_confirmation(
                    rt, reader, newsletter=newsletter, profile=profile, repermission=False, now=now
                )
            except Exception:  # nothing was handed to the relay: the actor tries again
                log.exception("confirmation mail not sent, handed to send_confirmation")
                send_confirmation.send_with_options(args=(subscriber_id,), delay=DEFERRED_MS)
                return
            record_confirmation_outcome(session, subscriber_id, sent, now)
    if not sent.accepted and not sent.permanent:  # recorded above; retried with a delay
        send_confirmation.send_with_options(args=(subscriber_id,), delay=DEFERRED_MS)


# Confirmation mails wait for a recipient-domain slot at most this long per hop.
MAX_DOMAIN_WAIT_MS = 60_000
# A confirmation mail the relay deferred from ``handle_signup`` is tried again this much later
# by ``send_confirmation`` (dramatiq's first retry backoff, which a raise would have given).
DEFERRED_MS = 15_000


def _slot_delay(verdict: Verdict) -> int:
    """Milliseconds until the domain's next slot frees (at most ``MAX_DOMAIN_WAIT_MS``)."""
    return min(MAX_DOMAIN_WAIT_MS, int(verdict.retry_after * 1000) + 10)


@dramatiq.actor(queue_name="transactional", max_retries=10, priority=TRANSACTIONAL_PRIORITY)
def send_confirmation(subscriber_id: int) -> None:
    """Send the double opt-in confirmation mail to a pending subscriber, or to a confirmed one
    whose change waits for confirmation (nothing otherwise).

    Paced by the per-recipient-domain limit: without a slot the message re-enqueues itself with
    a delay (which does not use up dramatiq's retries)."""
    rt = runtime()
    newsletter, profile = rt.signup_newsletter()  # before the session: one connection at a time
    with rt.session() as session, log_context(subscriber_id=subscriber_id):
        subscriber, repermission = awaiting_confirmation(session, subscriber_id)
        if subscriber is None:
            return  # confirmed, unsubscribed or purged since; a pending change still mails
        verdict = rt.limiter.allow_domain(
            recipient_domain(subscriber.ascii_email, subscriber.email)
        )
        if not verdict.allowed:
            send_confirmation.send_with_options(args=(subscriber_id,), delay=_slot_delay(verdict))
            return
        now = rt.clock.now()
        outcome = mail_confirmation(
            rt,
            subscriber,
            newsletter=newsletter,
            profile=profile,
            repermission=repermission,
            now=now,
        )
        record_confirmation_outcome(session, subscriber_id, outcome, now)
    if not outcome.accepted and not outcome.permanent:
        # A 4xx, recorded above: raising makes dramatiq retry with backoff.
        raise RuntimeError(f"confirmation mail deferred: {outcome.code} {outcome.text}")


def mail_confirmation(
    rt: Runtime,
    subscriber: Subscriber,
    *,
    newsletter: Newsletter,
    profile: NewsletterProfile,
    repermission: bool,
    now: datetime,
) -> SmtpOutcome:
    """Hand ``subscriber``'s confirmation mail (a pending reader or a pending change, as
    ``awaiting_confirmation`` reads it) of ``newsletter`` to the relay, dated ``now``; returns
    the relay's outcome, counted in the metrics. Raises only for what comes before the relay
    (the template, the token)."""
    token = confirmation_token(rt.tokens, subscriber)
    outcome = send_transactional(
        rt.mailer,
        name="confirmation",
        subscriber=subscriber,
        profile=profile,
        context={
            "confirm_url": f"{rt.links.public_url}/confirm/{token}",
            "expires_hours": int(rt.settings.confirmation_expiry_hours),
            "repermission": repermission,
        },
        public_url=rt.links.public_url,
        bounce_address=bounce_address(rt.settings.bounce_domain),
        message_id_domain=rt.settings.sending_domain,
        slug=newsletter.slug,
        signer=rt.dkim_signer,
        now=now,
    )
    metrics.confirmation_mail(outcome)
    return outcome


def record_confirmation_outcome(
    session: Session, subscriber_id: int, outcome: SmtpOutcome, now: datetime
) -> None:
    """Keep the relay's refusal of a confirmation mail on the subscriber (``subscribers show``,
    the dashboard) and log it; a sent mail clears the last refusal. One UPDATE in ``session``'s
    transaction (a sent mail: on its DBAPI connection, ``subscriptions.driver``; the subscriber
    read by ``awaiting_confirmation`` is a copy)."""
    if outcome.accepted:
        driver(session).rows(CONFIRMATION_SENT, {"subscriber_id": subscriber_id, "now": now})
        return
    reply = f"{outcome.code} {outcome.text}".strip()[:500]
    session.execute(
        _CONFIRMATION_REFUSED, {"subscriber_id": subscriber_id, "now": now, "reply": reply}
    )
    log.warning(
        "confirmation mail %s: %s",
        "refused" if outcome.permanent else "deferred, will retry",
        reply,
    )


_SUBSCRIBER = cast(Table, Subscriber.__table__)
# Built once: a refused or deferred confirmation mail's outcome (the reply is sealed).
_CONFIRMATION_REFUSED = (
    update(_SUBSCRIBER)
    .where(_SUBSCRIBER.c.id == bindparam("subscriber_id"))
    .values(confirmation_error=bindparam("reply"), confirmation_failed_at=bindparam("now"))
)


@dramatiq.actor(queue_name="transactional", max_retries=10)
def send_welcome(subscriber_id: int) -> None:
    """The optional welcome mail (setting ``welcome_mail``) to a confirmed subscriber."""
    rt = runtime()
    with rt.session() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None or subscriber.status != SubscriberStatus.CONFIRMED:
            return
        url = rt.links.unsubscribe_url(unsubscribe_token(rt.tokens, subscriber.id))
        preferences = rt.links.preferences_url(preferences_token(rt.tokens, subscriber.id))
        newsletter = rt.newsletter(session)
        outcome = send_transactional(
            rt.mailer,
            name="welcome",
            subscriber=subscriber,
            profile=profile_of(newsletter),
            context={"unsubscribe_url": url, "preferences_url": preferences},
            public_url=rt.links.public_url,
            bounce_address=bounce_address(rt.settings.bounce_domain),
            message_id_domain=rt.settings.sending_domain,
            slug=newsletter.slug,
            signer=rt.dkim_signer,
            now=rt.clock.now(),
        )
        if not outcome.accepted and not outcome.permanent:
            raise RuntimeError(f"welcome mail deferred: {outcome.code} {outcome.text}")  # retried


QUEUE_PATIENCE = 15  # × batch_grace_seconds: how long an enqueued batch may wait unstarted


def enqueue_batch(send_id: int, first_id: int, last_id: int, delay: float = 0.0) -> None:
    """Enqueue one batch message (``delay`` in seconds) and record that it is alive."""
    # a queued message may wait behind many others: patience, not the running batch's grace
    rt = runtime()
    patience = QUEUE_PATIENCE * rt.settings.batch_grace_seconds
    rt.hints.alive(batch_name(send_id, first_id, last_id), delay + patience)
    send_batch.send_with_options(args=(send_id, first_id, last_id), delay=int(delay * 1000) + 1)


@dramatiq.actor(queue_name="sends", max_retries=10)
def plan_send(send_id: int) -> None:
    """Render and plan a send, then enqueue its batches."""
    rt = runtime()
    name = f"plan:{send_id}"
    rt.hints.alive(name, rt.settings.batch_grace_seconds + 3600)  # planning 1M takes minutes
    with rt.session() as session, log_context(send_id=send_id):
        send = plan_send_domain(
            session, send_id, rt.links.public_url, rt.clock.now(), metrics=rt.metrics
        )
        if send.status != SendStatus.SENDING:
            rt.hints.forget(name)
            return
        batches = pending_batches(session, send_id, send.batch_size, rt.clock.now())
    for first, last in batches:
        enqueue_batch(send_id, first, last)
    rt.hints.forget(name)


@dramatiq.actor(queue_name="deliveries", max_retries=20, time_limit=3_600_000)
def send_batch(send_id: int, first_id: int, last_id: int) -> None:
    """Send one batch of a send. Throttled or deferred deliveries re-enqueue the batch with a
    delay instead of raising (a raised rate-limit error would use up dramatiq's retries)."""
    rt = runtime()
    name = batch_name(send_id, first_id, last_id)
    grace = rt.settings.batch_grace_seconds
    connection = rt.connection
    with rt.session() as session, log_context(send_id=send_id):
        report = send_batch_domain(
            rt.ledger(session),
            send_id,
            first_id,
            last_id,
            composer=rt.composer(session, send_id),
            mailer=connection.mailer,
            throttle=rt.throttle,
            clock=rt.clock,
            policy=rt.policy,
            heartbeat=lambda: rt.hints.alive(name, grace, extend_only=False),
            slot=connection,
        )
    if report.retry_after is not None and report.stopped is None:
        enqueue_batch(send_id, first_id, last_id, report.retry_after)
    else:
        rt.hints.forget(name)


PLANNING_PATIENCE = 3600.0  # seconds a plan_send message may take before it is re-enqueued


def expect_planning(rt: Runtime, send_id: int) -> None:
    """Record the planning hint of send ``send_id`` before the commit that starts it (started
    now: ``scheduled`` with no time; claimed by the scheduler: ``planning``). The reconciler
    enqueues the planning of a started send that has no live hint, so a hint written after that
    commit left a moment in which another scheduler's reconciler enqueued it a second time
    (found by the suite loop). A hint left by a commit that then failed names no started send
    and runs out by itself."""
    rt.hints.alive(f"plan:{send_id}", rt.settings.batch_grace_seconds + PLANNING_PATIENCE)


def start_planning(rt: Runtime, send_id: int) -> None:
    """Enqueue the planning of send ``send_id``, committed as started with its hint recorded
    before (``expect_planning``). Without a live hint the reconciler enqueues it again
    (``reconcile``): the message may be lost with a Redis restart before any worker took it, or
    never sent when the caller died after the commit."""
    expect_planning(rt, send_id)  # extends, never shortens, the hint recorded before the commit
    plan_send.send(send_id)


def start_scheduled(rt: Runtime) -> list[str]:
    """The scheduler's first step: fire due weekly slots, then claim every scheduled send that is
    due and enqueue its planning. Each claim is one conditional UPDATE, committed (with its
    planning hint recorded before) before the message is enqueued, so a send starts once however
    many schedulers run; a message lost after the claim is re-enqueued by ``reconcile`` (a
    ``planning`` send with no live hint).
    Returns one line per event, for the scheduler's output (ids and edition keys only)."""
    events: list[str] = []
    with rt.session() as session:
        now = rt.clock.now()
        for firing in fire_due_slots(session, now, rt.settings.send_batch_size):
            if firing.send_id is None:
                metrics.slot_fired("empty")
                log.warning("weekly slot %s fired with no unsent edition loaded", firing.slot_id)
                events.append(f"slot {firing.slot_id}: no unsent edition loaded, nothing sent")
            else:
                metrics.slot_fired("scheduled")
                events.append(f"slot {firing.slot_id}: edition {firing.edition_key} scheduled")
        claimed = start_due_sends(session, now)
        for send_id in claimed:
            expect_planning(rt, send_id)
        session.commit()
    for send_id in claimed:
        start_planning(rt, send_id)
        log.info("scheduled send %s started", send_id)
        events.append(f"send {send_id} started (scheduled)")
    return events


def reconcile(rt: Runtime) -> int:
    """Re-enqueue what the ledger says is unfinished and no live message covers (Redis may have
    restarted empty; a killed worker's message returns only after dramatiq's heartbeat timeout):
    the planning of a send that is ``planning`` or was started now (``scheduled`` with no time),
    and the due batches of a ``sending`` one.

    Settles expired claims first (``expire_leases``), then enqueues each due batch whose hint is
    missing or past its deadline, and finishes sends with nothing left. Returns the number of
    messages enqueued.
    """
    enqueued = 0
    with rt.session() as session:
        now = rt.clock.now()
        ledger = rt.ledger(session)
        ledger.expire_leases(now)
        sends = session.execute(
            select(Send.id, Send.status, Send.batch_size).where(
                or_(
                    Send.status.in_([SendStatus.SENDING, SendStatus.PLANNING]),
                    # started now (no time): planned by a message that may be lost
                    and_(Send.status == SendStatus.SCHEDULED, Send.scheduled_for.is_(None)),
                )
            )
        ).all()
        session.commit()  # what follows commits or rolls back one send at a time
        work: list[tuple[int, int, int]] = []
        for send_id, status, batch_size in sends:
            try:
                if status != SendStatus.SENDING:  # planning, or started now and not yet
                    if rt.hints.stalled([f"plan:{send_id}"]):
                        plan_send.send(send_id)
                        rt.hints.alive(f"plan:{send_id}", rt.settings.batch_grace_seconds)
                        enqueued += 1
                    continue
                due = pending_batches(session, send_id, batch_size, now)
                names = {batch_name(send_id, f, last): (send_id, f, last) for f, last in due}
                work += [names[name] for name in rt.hints.stalled(list(names))]
                if not due:
                    ledger.finish_send_if_done(send_id, now)
            except Exception as exc:
                # one broken send (a batch size of 0 stored before settings were checked, a
                # row the database refuses) must not stop the others: its work is rolled back
                session.rollback()
                metrics.reconcile_failed()
                log.error("reconcile: send %s skipped: %s", send_id, _reason(exc))
    for send_id, first, last in work:
        enqueue_batch(send_id, first, last)
        enqueued += 1
    return enqueued


def _reason(exc: Exception) -> str:
    """The first line of an error (a database error's own message, not its SQL)."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    return f"{type(original).__name__}: {lines[0] if lines else ''}"
