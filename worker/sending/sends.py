"""Sends of an edition: creating one, rendering its renditions once per language, planning it,
and the operator's status changes (pause, resume, cancel)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from worker.editions.rendering import render_edition
from worker.editions.store import edition_contents, profile_of, stored_problems
from worker.models import Edition, Newsletter, Rendition, Send
from worker.sending.composer import RenditionText
from worker.sending.planning import plan_deliveries, readers_by_language
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


class Repeat(StrEnum):
    """What a send does when the edition was sent before (the duplicate guard)."""

    REFUSE = "refuse"  # the default: a second send of an edition is refused
    ONLY_NEW = "only_new"  # plan only readers with no delivery of this edition yet
    AGAIN = "again"  # an explicit full resend: every confirmed reader gets it again


class Audience(StrEnum):
    """Who a send plans (``Send.audience``)."""

    ALL = "all"  # every confirmed reader
    NEW = "new"  # confirmed readers with no delivery of this edition in another send


class DuplicateSend(ValueError):
    """The edition has an earlier send and neither ``--only-new`` nor ``--again`` was given."""

    def __init__(self, edition_key: str, earlier: Send) -> None:
        self.earlier_id = earlier.id
        super().__init__(
            f"edition {edition_key} was already sent by send {earlier.id} ({earlier.status}): "
            "a second send would mail readers again. Use --only-new for readers who have not "
            "had it yet, or --again for a full resend"
        )


class EditionHasProblems(ValueError):
    """The edition was saved on the desk with problems (``newsletter edition check`` would
    refuse it): it is not sent until a save without them."""

    def __init__(self, edition_key: str, problems: list[dict[str, object]]) -> None:
        self.problems = problems
        first = problems[0].get("reason", "") if problems else ""
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"edition {edition_key} has {len(problems)} {noun} (first: {first}); fix them on "
            f"the desk (/desk/editions/{edition_key}) or load a checked folder"
        )


class NobodyNew(ValueError):
    """``--only-new`` with no reader left to plan: every confirmed reader already has a
    delivery of the edition, so the send would be empty."""

    def __init__(self, edition_key: str) -> None:
        super().__init__(
            f"nobody new to send to: every confirmed reader already has a delivery of {edition_key}"
        )


def earlier_sends(session: Session, edition_id: int) -> list[Send]:
    """The sends of ``edition_id`` that count as sent: every send not cancelled, and cancelled
    ones that had started (they may have mailed readers). Oldest first."""
    return list(
        session.scalars(
            select(Send)
            .where(
                Send.edition_id == edition_id,
                or_(Send.status != SendStatus.CANCELLED, Send.started_at.is_not(None)),
            )
            .order_by(Send.id)
        )
    )


@dataclass(frozen=True)
class When:
    """When a send is due: ``at`` a UTC instant given in ``timezone`` (an IANA name)."""

    at: datetime
    timezone: str


def create_send(
    session: Session,
    edition: Edition,
    now: datetime,
    batch_size: int = 100,
    *,
    repeat: Repeat = Repeat.REFUSE,
    when: When | None = None,
) -> Send:
    """A new ``scheduled`` send of ``edition``, flushed.

    Without ``when`` the caller plans it at once (``actors.plan_send``); with it the scheduler
    starts it at ``when.at`` (``start_due_sends``). Raises ``DuplicateSend`` naming the earlier
    send when the edition was sent before and ``repeat`` is ``REFUSE``; ``EditionHasProblems``
    when the desk stored it with problems; ``NobodyNew`` when ``repeat`` is ``ONLY_NEW`` and no
    confirmed reader is without a delivery of the edition now (scheduled or not: an empty send
    is never created); ``ValueError`` for a ``batch_size`` below 1 or a ``when`` in the past.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: at least 1")
    if when is not None and when.at <= now:
        raise ValueError(f"{when.at:%Y-%m-%d %H:%M} UTC is in the past")
    problems = stored_problems(session, edition)
    if problems:
        raise EditionHasProblems(edition.key, problems)
    earlier = earlier_sends(session, edition.id)
    if earlier and repeat is Repeat.REFUSE:
        raise DuplicateSend(edition.key, earlier[-1])
    if repeat is Repeat.ONLY_NEW and not any(
        readers_by_language(session, edition.newsletter_id, edition.id, only_new=True).values()
    ):
        raise NobodyNew(edition.key)
    send = Send(
        edition_id=edition.id,
        status=SendStatus.SCHEDULED,
        batch_size=batch_size,
        created_at=now,
        scheduled_for=when.at if when else None,
        timezone=when.timezone if when else None,
        audience=Audience.NEW if repeat is Repeat.ONLY_NEW else Audience.ALL,
    )
    session.add(send)
    session.flush()
    return send


def start_due_sends(session: Session, now: datetime) -> list[int]:
    """Claim the scheduled sends due at ``now``: ``scheduled`` → ``planning`` in one
    ``UPDATE … WHERE status = 'scheduled' … RETURNING``, so of two schedulers only one claims a
    send. Does not commit: the caller records each claim's planning hint, then commits, then
    enqueues (``actors.start_scheduled``), so the claim is durable before anyone enqueues and no
    reconciler sees a claimed send without its hint. Returns the claimed ids, ascending."""
    claimed = session.scalars(
        update(Send)
        .where(
            Send.status.in_(sources_among(SendStatus.PLANNING, SendStatus.SCHEDULED)),
            Send.scheduled_for.is_not(None),
            Send.scheduled_for <= now,
        )
        .values(status=SendStatus.PLANNING, started_at=now)
        .returning(Send.id)
        .execution_options(synchronize_session=False)
    ).all()
    return sorted(claimed)


@dataclass(frozen=True)
class ScheduledSend:
    """A send waiting for its time, as ``newsletter send schedule`` lists it."""

    send_id: int
    edition_key: str
    at: datetime
    timezone: str | None
    only_new: bool
    readers: dict[str, int]  # readers it would plan now, by language


def scheduled_sends(session: Session) -> list[ScheduledSend]:
    """The sends still ``scheduled`` with a time, soonest first. Reads only."""
    rows = session.execute(
        select(Send, Edition)
        .join(Edition, Edition.id == Send.edition_id)
        .where(Send.status == SendStatus.SCHEDULED, Send.scheduled_for.is_not(None))
        .order_by(Send.scheduled_for, Send.id)
    ).all()
    listed = []
    for send, edition in rows:
        assert send.scheduled_for is not None
        only_new = send.audience == Audience.NEW
        readers = readers_by_language(session, edition.newsletter_id, edition.id, only_new)
        listed.append(
            ScheduledSend(
                send.id, edition.key, send.scheduled_for, send.timezone, only_new, readers
            )
        )
    return listed


def cancel_scheduled(session: Session, send_id: int, now: datetime) -> bool:
    """Cancel ``send_id`` if it has not started (``scheduled`` → ``cancelled``, one conditional
    UPDATE, so a scheduler claiming it at the same moment wins or loses cleanly). Commits.
    Returns False when it is not (or no longer) scheduled."""
    result = session.execute(
        update(Send)
        .where(
            Send.id == send_id,
            Send.status.in_(sources_among(SendStatus.CANCELLED, SendStatus.SCHEDULED)),
        )
        .values(status=SendStatus.CANCELLED, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


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
        only_new=send.audience == Audience.NEW,
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
