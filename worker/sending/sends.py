"""Sends of an edition: creating one, rendering its renditions once per language, planning it,
and the operator's status changes (pause, resume, cancel)."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.editions.rendering import render_edition
from worker.editions.store import edition_contents, profile_of
from worker.models import Edition, Newsletter, Rendition, Send
from worker.sending.composer import RenditionText
from worker.sending.planning import plan_deliveries
from worker.sending.ports import NoMetrics, SendingMetrics
from worker.states import SendStatus, check, sources, sources_among


class SendStateError(ValueError):
    """The operation does not apply to the send in its current status."""


# What an operator may change a send to (pause, resume, cancel), and from which of the table's
# sources: resuming is only from ``paused`` (``planning`` → ``sending`` is planning's own step,
# ``finished`` → ``sending`` is ``retry_unknown``'s).
_OPERATOR_TARGETS = {
    SendStatus.PAUSED: sources(SendStatus.PAUSED),
    SendStatus.SENDING: sources_among(SendStatus.SENDING, SendStatus.PAUSED),
    SendStatus.CANCELLED: sources(SendStatus.CANCELLED),
}


def operator_sources(target: SendStatus) -> tuple[SendStatus, ...]:
    """The statuses an operator may change a send to ``target`` from; raises ``SendStateError``
    for a target an operator cannot set."""
    if target not in _OPERATOR_TARGETS:
        raise SendStateError(f"an operator cannot change a send to {target}")
    return tuple(_OPERATOR_TARGETS[target])


def create_send(session: Session, edition: Edition, now: datetime, batch_size: int = 100) -> Send:
    """A new ``scheduled`` send of ``edition``."""
    send = Send(
        edition_id=edition.id, status=SendStatus.SCHEDULED, batch_size=batch_size, created_at=now
    )
    session.add(send)
    session.flush()
    return send


def render_send(
    session: Session,
    send: Send,
    public_url: str,
    now: datetime,
    metrics: SendingMetrics | None = None,
) -> dict[str, Rendition]:
    """Render the edition once per language into the send's renditions (idempotent); each
    render's duration goes to ``metrics``.

    Raises ``worker.editions.rendering.TemplateProblem`` on a template error: before any delivery
    exists.
    """
    metrics = metrics or NoMetrics()
    existing = {
        r.language: r
        for r in session.scalars(select(Rendition).where(Rendition.send_id == send.id))
    }
    edition = session.get(Edition, send.edition_id)
    assert edition is not None
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    profile = profile_of(newsletter)
    for language, content in edition_contents(session, edition).items():
        if language in existing:
            continue
        started = time.perf_counter()
        rendered = render_edition(profile, content, public_url=public_url)
        metrics.render_observed(time.perf_counter() - started)
        existing[language] = Rendition(
            send_id=send.id,
            language=language,
            subject=rendered.subject,
            preheader=rendered.preheader,
            html=rendered.html,
            text=rendered.text,
            rendered_at=now,
        )
        session.add(existing[language])
    session.flush()
    return existing


def plan_send(
    session: Session,
    send_id: int,
    public_url: str,
    now: datetime,
    metrics: SendingMetrics | None = None,
) -> Send:
    """Render (timed into ``metrics``), then plan one delivery per confirmed subscriber; the send
    becomes ``sending``.

    Planning twice is a no-op. Commits. Raises ``SendStateError`` for a cancelled send.
    """
    send = session.get(Send, send_id)
    if send is None:
        raise SendStateError(f"no send {send_id}")
    if send.status == SendStatus.CANCELLED:
        raise SendStateError(f"send {send_id} is cancelled")
    renditions = render_send(session, send, public_url, now, metrics)
    edition = session.get(Edition, send.edition_id)
    assert edition is not None
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    default = (
        newsletter.default_language
        if newsletter.default_language in renditions
        else next(iter(renditions))
    )
    if send.status == SendStatus.SCHEDULED:
        send.status = check(send.status, SendStatus.PLANNING)
        send.started_at = now
    session.commit()
    send.planned_count = plan_deliveries(
        session,
        send,
        newsletter_id=newsletter.id,
        languages=tuple(sorted(renditions)),
        default_language=default,
    )
    if send.status == SendStatus.PLANNING:
        send.status = check(send.status, SendStatus.SENDING)
    session.commit()
    return send


def rendition_texts(session: Session, send_id: int) -> dict[str, RenditionText]:
    """The send's renditions as the composer needs them."""
    rows = session.scalars(select(Rendition).where(Rendition.send_id == send_id))
    return {r.language: RenditionText(r.language, r.subject, r.html, r.text) for r in rows}


def set_status(session: Session, send_id: int, target: str, now: datetime) -> Send:
    """Pause (sending → paused), resume (paused → sending) or cancel (any unfinished → cancelled).

    Batches check the status and stop; resume needs the caller to re-enqueue batches.
    Raises ``SendStateError`` when the change does not apply.
    """
    allowed = operator_sources(SendStatus(target))
    result = session.execute(
        update(Send).where(Send.id == send_id, Send.status.in_(allowed)).values(status=target)
    )
    send = session.get(Send, send_id, populate_existing=True)
    if send is None or not result.rowcount:  # type: ignore[attr-defined]
        status = send.status if send else "missing"
        raise SendStateError(f"send {send_id} is {status}: cannot change to {target}")
    if target == SendStatus.CANCELLED:
        send.finished_at = now
    session.commit()
    return send
