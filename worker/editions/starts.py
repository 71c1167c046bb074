"""Starting a new edition in the database, three ways: from the website's feeds, from an edition
folder's zip, or empty (the desk's "New edition", ``worker/web/desk/starts.py``).

Each way either stores the whole edition or nothing and raises :class:`StartRefused` with every
reason, each tied to the form field at fault. An edition started from feeds or empty is a draft:
it may not pass ``edition check`` yet (no items, a photo without alt text, languages with
different numbers of items) and the desk shows what is missing; sending refuses it until then.
An uploaded zip is stored only when ``edition check`` accepts it, as ``edition load`` does. Its
``newsletter.yaml`` (sender, reply-to, feeds, …) is the newsletter's profile, which only an
operator may change: a zip whose profile differs from the stored one is refused unless the
uploader may change it (:func:`profile_changes` names the fields), then applied as ``edition
load`` applies it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.editions.bundles import BundleProblem, extract_bundle
from worker.editions.feeds import (
    FeedEdition,
    FeedProblem,
    Fetcher,
    edition_from_feeds,
    fetch_feed,
)
from worker.editions.files import (
    PROFILE_FILE,
    EditionContent,
    EditionSource,
    NewsletterProfile,
    check_edition,
    read_edition,
)
from worker.editions.images import ImagesNotConfigured, copy_images
from worker.editions.schema import EDITION_KEY
from worker.editions.store import DEFAULT_SLUG, find_edition, profile_of, save_edition
from worker.models import Edition, Newsletter


@dataclass(frozen=True)
class Refusal:
    """One reason a start was refused: ``field`` is the form field at fault (``key``,
    ``period``, ``feeds``, ``bundle``, ``way``), ``message`` says what and where in English.
    ``code`` and ``params`` let the desk say it in the page's language
    (``templates/desk/refusals.html.j2``, whose English text is ``message``); a refusal without
    a code is shown as ``message``."""

    field: str
    message: str
    code: str = ""
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, where: str, code: str, text: str, **params: str) -> Refusal:
        """The refusal ``code`` of field ``where``; its message is ``text % params``
        (``text`` is the English msgid of the desk's catalogue)."""
        return cls(where, text % params, code, params)


class StartRefused(ValueError):
    """Nothing was stored; ``refusals`` says why, field by field."""

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        super().__init__("; ".join(refusal.message for refusal in refusals))


@dataclass(frozen=True)
class Started:
    """A stored new edition and what its start reported (feed problems accepted, notes)."""

    edition: Edition
    notes: list[str] = field(default_factory=list)
    # The fields of the newsletter's profile this start changed (an operator's zip upload).
    profile_changes: list[str] = field(default_factory=list)


def profile_changes(stored: NewsletterProfile | None, uploaded: NewsletterProfile) -> list[str]:
    """The fields in which ``uploaded`` differs from ``stored``, in the order of
    :class:`NewsletterProfile`; a per-language mapping is compared key by key, in the uploaded
    order (``["from_address", "feeds.ru"]``). With nothing stored, every field that has a value.
    ``[]`` when they are equal."""
    changed: list[str] = []
    for spec in fields(NewsletterProfile):
        new = getattr(uploaded, spec.name)
        old = getattr(stored, spec.name) if stored is not None else None
        if isinstance(new, Mapping):
            before: Mapping[str, str] = old if isinstance(old, Mapping) else {}
            for key in [*new, *(k for k in before if k not in new)]:
                if before.get(key) != new.get(key):
                    changed.append(f"{spec.name}.{key}")
        elif new != old and not (stored is None and new in (None, "", ())):
            changed.append(spec.name)
    return changed


def period_of(start: str, end: str) -> tuple[date, date]:
    """The period from two ISO dates; raises :class:`StartRefused` on field ``period``."""
    try:
        first, last = date.fromisoformat(start.strip()), date.fromisoformat(end.strip())
    except ValueError:
        raise StartRefused(
            [
                Refusal.of(
                    "period",
                    "period_format",
                    "expected two dates like 2026-11-30, got '%(start)s' and '%(end)s'",
                    start=start,
                    end=end,
                )
            ]
        ) from None
    if last < first:
        raise StartRefused(
            [
                Refusal.of(
                    "period",
                    "period_order",
                    "the period ends (%(end)s) before it starts (%(start)s)",
                    end=str(last),
                    start=str(first),
                )
            ]
        )
    return first, last


def _new_key(session: Session, key: str) -> str:
    key = key.strip()
    if not EDITION_KEY.match(key):
        raise StartRefused(
            [
                Refusal.of(
                    "key",
                    "key_format",
                    "edition key '%(key)s' must be letters, digits, '.', '_' or '-'",
                    key=key,
                )
            ]
        )
    if find_edition(session, key) is not None:
        raise StartRefused(
            [
                Refusal.of(
                    "key",
                    "key_exists",
                    "edition %(key)s exists already: open it, or choose another key",
                    key=key,
                )
            ]
        )
    return key


def start_empty(
    session: Session, profile: NewsletterProfile, key: str, start: date, end: date, now: datetime
) -> Started:
    """Store the edition ``key`` of ``start``..``end`` with no subject and no items in each
    language of ``profile``, to fill in at the desk. Raises :class:`StartRefused`."""
    key = _new_key(session, key)
    contents = {
        language: EditionContent(key, language, start, end, "", "", ())
        for language in profile.languages
    }
    edition = save_edition(session, EditionSource(profile, contents), now)
    return Started(edition)


def start_from_feeds(
    session: Session,
    profile: NewsletterProfile,
    key: str,
    start: date,
    end: date,
    now: datetime,
    *,
    accept_failed_feeds: bool = False,
    fetch: Fetcher = fetch_feed,
) -> Started:
    """Store the edition ``key`` of ``start``..``end`` from the feeds of ``profile``
    (:func:`worker.editions.feeds.edition_from_feeds`). A failed feed refuses the start (field
    ``feeds``, one refusal per feed) unless ``accept_failed_feeds``, when its language starts
    empty; no item at all in any language refuses it always. Raises :class:`StartRefused`."""
    key = _new_key(session, key)
    if not profile.feeds:
        raise StartRefused(
            [
                Refusal.of(
                    "feeds",
                    "feeds_none",
                    "newsletter.yaml names no feeds: add one address per language under 'feeds'",
                )
            ]
        )
    try:
        started: FeedEdition = edition_from_feeds(profile, start, end, key=key, fetch=fetch)
    except ValueError as error:
        raise StartRefused([Refusal("feeds", str(error))]) from None
    if started.problems and not accept_failed_feeds:
        raise StartRefused([_feed_refusal(problem) for problem in started.problems])
    if not any(content.items for content in started.contents.values()):
        raise StartRefused(
            [
                Refusal.of(
                    "feeds",
                    "no_articles",
                    "no article in any feed was published from %(start)s to %(end)s",
                    start=str(start),
                    end=str(end),
                )
            ]
            + [_feed_refusal(problem) for problem in started.problems]
        )
    edition = save_edition(session, EditionSource(profile, started.contents), now)
    return Started(edition, [str(problem) for problem in started.problems] + started.notes)


def start_from_bundle(
    session: Session,
    data: bytes,
    now: datetime,
    images_dir: str,
    *,
    may_change_profile: bool = False,
) -> Started:
    """Store the edition in the zip ``data`` (:mod:`worker.editions.bundles`) once ``edition
    check`` accepts it, with its images copied to ``images_dir``. Its ``newsletter.yaml`` must
    equal the stored profile unless ``may_change_profile`` (an operator), when it becomes the
    newsletter's profile as with ``edition load`` and ``Started.profile_changes`` names what
    changed. Raises :class:`StartRefused` (field ``bundle``: the archive's problem, each problem
    of the edition with file and line, or a profile change not allowed, naming its fields;
    field ``key`` when the edition exists already)."""
    with tempfile.TemporaryDirectory(prefix="upload-") as scratch:
        try:
            folder = extract_bundle(data, Path(scratch) / "edition")
        except BundleProblem as error:
            raise StartRefused([_archive_refusal(str(error))]) from None
        problems = check_edition(folder)
        if problems:
            raise StartRefused(
                [
                    Refusal.of(
                        "bundle",
                        "edition_problem",
                        "the edition in the archive has a mistake: %(problem)s",
                        problem=str(problem),
                    )
                    for problem in problems
                ]
            )
        source = read_edition(folder)
        newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == DEFAULT_SLUG))
        changes = profile_changes(
            profile_of(newsletter) if newsletter is not None else None, source.newsletter
        )
        if changes and not may_change_profile:
            raise StartRefused([profile_refusal(changes)])
        _new_key(session, source.key)
        try:
            copy_images(folder, source, images_dir)
        except (ImagesNotConfigured, OSError) as error:
            raise StartRefused([_archive_refusal(str(error))]) from None
    return Started(save_edition(session, source, now), profile_changes=changes)


def profile_refusal(changes: list[str]) -> Refusal:
    """The refusal of a profile change by someone who may not make it, naming the fields."""
    return Refusal.of(
        "bundle",
        "profile_locked",
        "%(file)s changes %(fields)s: only an operator may change the newsletter's profile",
        file=PROFILE_FILE,
        fields=", ".join(changes),
    )


def _archive_refusal(reason: str) -> Refusal:
    return Refusal.of("bundle", "archive", "the archive cannot be used: %(reason)s", reason=reason)


def _feed_refusal(problem: FeedProblem) -> Refusal:
    """A failed feed as a refusal of field ``feeds``: code ``feed.<what>``
    (:class:`worker.editions.feeds.FeedProblem`), its message as the problem says it."""
    return Refusal("feeds", str(problem), f"feed.{problem.code or 'other'}", problem.params)
