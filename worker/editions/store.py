"""Newsletters and their editions in the database: loading an edition folder, reading it back."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.editions.files import (
    EditionContent,
    EditionSource,
    NewsletterProfile,
    read_newsletter_profile,
)
from worker.models import Delivery, Edition, EditionContentRow, Newsletter, Send
from worker.states import DeliveryState, SendStatus

DEFAULT_SLUG = "weekly"


class EditionLocked(ValueError):
    """The edition has a send that has started: its content can no longer change."""


PROBLEMS_KEY = "problems"
"""Key of the stored content JSON under which the desk keeps the problems of a draft saved with
problems (``worker/desk/drafts.py``); a content with any is not sent (``EditionHasProblems``)."""


def profile_to_json(profile: NewsletterProfile) -> dict[str, Any]:
    data = asdict(profile)
    data["languages"] = list(profile.languages)
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}


def profile_from_json(data: dict[str, Any]) -> NewsletterProfile:
    # Profiles stored before a field existed lack it: the dataclass default applies.
    return NewsletterProfile(**{**data, "languages": tuple(data["languages"])})


def profile_of(newsletter: Newsletter) -> NewsletterProfile:
    """The ``NewsletterProfile`` stored with ``newsletter``."""
    return profile_from_json(newsletter.profile)


def save_newsletter(
    session: Session, profile: NewsletterProfile, now: datetime, slug: str = DEFAULT_SLUG
) -> Newsletter:
    """Create the newsletter ``slug`` or update its profile; returns the row (flushed)."""
    newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
    if newsletter is None:
        newsletter = Newsletter(slug=slug, created_at=now, profile={}, default_language="en")
        session.add(newsletter)
    newsletter.profile = profile_to_json(profile)
    newsletter.default_language = profile.default_language
    session.flush()
    return newsletter


class NoNewsletter(LookupError):
    """No newsletter is set up yet: no edition was loaded and ``NEWSLETTER_NEWSLETTER_PATH`` is
    unset. The message says both ways out."""


def get_newsletter(
    session: Session, now: datetime, slug: str = DEFAULT_SLUG, profile_path: str = ""
) -> Newsletter:
    """The newsletter ``slug``; created from ``profile_path`` (a newsletter.yaml) on first use.

    Raises ``NoNewsletter`` (a ``LookupError``) when it does not exist and no profile path is
    configured.
    """
    newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
    if newsletter is not None:
        return newsletter
    if not profile_path:
        raise NoNewsletter(
            f"no newsletter {slug!r} yet: load an edition first (`newsletter edition load "
            "PATH`) or set NEWSLETTER_NEWSLETTER_PATH to its newsletter.yaml"
        )
    profile = read_newsletter_profile(Path(profile_path))
    try:
        with session.begin_nested():  # two workers may create it at once: the loser reads it
            return save_newsletter(session, profile, now, slug)
    except IntegrityError:
        newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug))
        if newsletter is None:
            raise
        return newsletter


def save_edition(
    session: Session, source: EditionSource, now: datetime, slug: str = DEFAULT_SLUG
) -> Edition:
    """Store ``source`` (an already checked edition folder) and the newsletter profile with it.

    Loading the same edition again replaces its content, until a send of it has started.
    Raises ``EditionLocked`` after that.
    """
    newsletter = save_newsletter(session, source.newsletter, now, slug)
    edition = session.scalar(
        select(Edition).where(Edition.newsletter_id == newsletter.id, Edition.key == source.key)
    )
    if edition is None:
        edition = Edition(
            newsletter_id=newsletter.id, key=source.key, created_at=now, updated_at=now
        )
        session.add(edition)
        session.flush()
    elif is_locked(session, edition):
        raise EditionLocked(f"edition {source.key} has a send already; it cannot change any more")
    first = next(iter(source.contents.values()))
    edition.period_start, edition.period_end = first.period_start, first.period_end
    edition.updated_at = now
    existing = {
        row.language: row
        for row in session.scalars(
            select(EditionContentRow).where(EditionContentRow.edition_id == edition.id)
        )
    }
    for language, content in source.contents.items():
        row = existing.pop(language, None)
        if row is None:
            edition.contents.append(EditionContentRow(language=language, data=content.to_json()))
        else:
            row.data = content.to_json()
    for stale in existing.values():
        edition.contents.remove(stale)
        session.delete(stale)
    session.flush()
    return edition


def is_locked(session: Session, edition: Edition) -> bool:
    """Whether ``edition`` has a send that is not cancelled: its content can no longer change."""
    query = select(Send.id).where(
        Send.edition_id == edition.id, Send.status != SendStatus.CANCELLED
    )
    return session.scalar(query.limit(1)) is not None


def stored_problems(session: Session, edition: Edition) -> list[dict[str, Any]]:
    """The problems the desk stored with ``edition`` (a draft saved with problems), in
    language order; empty when its stored content is valid (every CLI-loaded edition)."""
    rows = session.scalars(
        select(EditionContentRow)
        .where(EditionContentRow.edition_id == edition.id)
        .order_by(EditionContentRow.language)
    )
    return [problem for row in rows for problem in row.data.get(PROBLEMS_KEY) or []]


def edition_contents(session: Session, edition: Edition) -> dict[str, EditionContent]:
    """The stored content of ``edition`` per language."""
    rows = session.scalars(
        select(EditionContentRow).where(EditionContentRow.edition_id == edition.id)
    )
    return {row.language: EditionContent.from_json(row.data) for row in rows}


def find_edition(session: Session, key: str, slug: str = DEFAULT_SLUG) -> Edition | None:
    return session.scalar(
        select(Edition).join(Newsletter).where(Newsletter.slug == slug, Edition.key == key)
    )


@dataclass(frozen=True)
class PublishedEdition:
    """An edition that readers have received, and when it first went out (UTC)."""

    edition: Edition
    published_at: datetime


def _published_sends() -> Any:
    """Sends whose edition readers have: finished, or with at least one copy the relay took."""
    delivered = exists().where(Delivery.send_id == Send.id, Delivery.state == DeliveryState.SENT)
    return or_(Send.status == SendStatus.FINISHED, delivered)


def published_editions(session: Session, newsletter_id: int) -> list[PublishedEdition]:
    """The editions of ``newsletter_id`` that have gone out (see :func:`_published_sends`),
    newest first. Loaded or scheduled editions that never went out are not public: their keys
    are guessable weeks (issue 13, finding 10)."""
    first_out = func.min(func.coalesce(Send.started_at, Send.finished_at, Send.created_at))
    rows = session.execute(
        select(Edition, first_out)
        .join(Send, Send.edition_id == Edition.id)
        .where(Edition.newsletter_id == newsletter_id, _published_sends())
        .group_by(Edition.id)
        .order_by(first_out.desc(), Edition.id.desc())
    ).all()
    return [PublishedEdition(edition, when) for edition, when in rows]


def is_published(session: Session, edition: Edition) -> bool:
    """Whether ``edition`` has gone out (the archive serves only those)."""
    query = select(Send.id).where(Send.edition_id == edition.id, _published_sends()).limit(1)
    return session.scalar(query) is not None
