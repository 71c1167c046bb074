"""An edition just started at the desk, checked and stored with its problems; an edition not yet
sent, refreshed from the feeds.

**Checked at the start.** An edition started from the feeds or empty is a draft that
``newsletter edition check`` may refuse (no items, a photo without alt text, languages with
different numbers of items). :func:`store_checked` runs the desk's checks on it right away
(:func:`worker.desk.drafts.save_draft`) so that its problems are stored with it, and every send
of it is refused (``EditionHasProblems``: the send page, ``newsletter send start``, the weekly
slot) until a save without them, not only sends that go through the desk.

**Refreshed from the feeds.** Started on a Thursday, the week's edition lacks the articles of
Friday to Sunday. :func:`refresh_from_feeds` fetches the edition's period again and adds each
article that is not yet in the edition (the same link, in the same language) after the
edition's last row; the i-th new article of each language shares the i-th new row, as edition
folders match items by position. Nothing already in the edition changes: not an item the editor
rewrote, not one they removed (only links still in the edition count as present, so a removed
article comes back), not a subject. The result is saved like a desk save: checked, stored with
its problems.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime

from sqlalchemy.orm import Session

from worker.desk import drafts
from worker.editions.feeds import Fetcher, edition_from_feeds, fetch_feed
from worker.editions.files import EditionItem
from worker.editions.images import stored_image
from worker.editions.store import EditionLocked, find_edition, is_locked, profile_of
from worker.models import Newsletter


def served_images(images_dir: str, key: str, draft: drafts.Draft) -> list[str]:
    """The names of ``draft``'s own images (``border.jpg``, not an address) that are stored
    under ``images_dir`` for edition ``key``, i.e. served by the web app."""
    names = {
        cell["image.url"]
        for text in draft.texts.values()
        for cell in text.cells
        if cell is not None and cell["image.url"]
    }
    return sorted(name for name in names if stored_image(images_dir, key, name) is not None)


def store_checked(
    session: Session,
    key: str,
    now: datetime,
    public_url: str,
    images_dir: str = "",
    own_hosts: Iterable[str] = (),
) -> drafts.Draft:
    """Check the stored edition ``key`` as a desk save does (``public_url``: the web app's
    address; ``images_dir``: ``NEWSLETTER_IMAGES_DIR``; ``own_hosts``: ``NEWSLETTER_IMAGE_HOSTS``)
    and store it again with its problems (none: stored as ``edition load`` stores it). Returns
    the draft as stored. Raises :class:`worker.desk.drafts.NoEdition`, :class:`EditionLocked`.
    Flushes; the caller commits."""
    draft = drafts.load_draft(session, key)
    return drafts.save_draft(
        session,
        draft,
        now,
        public_url,
        image_files=served_images(images_dir, key, draft) if images_dir else (),
        own_hosts=own_hosts,
    )


@dataclass(frozen=True)
class Refreshed:
    """What a refresh added: ``added`` new articles per language (every language of the
    newsletter, 0 where none), the feeds that failed (their languages got nothing), and the
    edition as stored after it."""

    added: dict[str, int]
    problems: list[str]
    draft: drafts.Draft

    @property
    def total(self) -> int:
        """How many articles were added in all."""
        return sum(self.added.values())

    def summary(self) -> str:
        """In words: ``2 new articles: 1 ru, 1 be``, ``1 new article: 1 en``, or ``no new
        articles``; the languages in the newsletter's order."""
        if not self.total:
            return "no new articles"
        noun = "article" if self.total == 1 else "articles"
        counted = ", ".join(f"{n} {language}" for language, n in self.added.items() if n)
        return f"{self.total} new {noun}: {counted}"


class NotRefreshable(ValueError):
    """The edition cannot be refreshed from the feeds; the message says why (no feeds in the
    newsletter, a period that is not two dates or ends before it starts)."""


def refresh_from_feeds(
    session: Session,
    key: str,
    now: datetime,
    public_url: str,
    images_dir: str = "",
    own_hosts: Iterable[str] = (),
    *,
    fetch: Fetcher = fetch_feed,
) -> Refreshed:
    """Add to the stored edition ``key`` the articles its period's feeds now have and it has
    not (see the module docstring); store it checked (the arguments of :func:`store_checked`;
    ``fetch``: url -> body and content type, :func:`worker.editions.feeds.fetch_feed`).

    Raises :class:`worker.desk.drafts.NoEdition`; :class:`EditionLocked` when a send of it
    exists that is not cancelled (it can no longer change); :class:`NotRefreshable`. A feed that
    fails is reported in ``problems`` and its language gets nothing. Flushes; the caller
    commits."""
    edition = find_edition(session, key)
    if edition is None:
        raise drafts.NoEdition(f"no edition {key}")
    if is_locked(session, edition):
        raise EditionLocked(f"edition {key} has a send already; it cannot change any more")
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    profile = profile_of(newsletter)
    if not profile.feeds:
        raise NotRefreshable("the newsletter has no feeds (feeds: in newsletter.yaml)")
    draft = drafts.load_draft(session, key)
    try:
        start, end = date.fromisoformat(draft.period_start), date.fromisoformat(draft.period_end)
    except ValueError:
        raise NotRefreshable(
            f"the period {draft.period_start!r}..{draft.period_end!r} is not two dates: "
            "correct it and save first"
        ) from None
    try:
        fetched = edition_from_feeds(profile, start, end, key=key, fetch=fetch)
    except ValueError as error:  # a period the wrong way round
        raise NotRefreshable(f"{error}: correct it and save first") from None
    new: dict[str, list[drafts.ItemCell]] = {}
    for language in draft.languages:
        content = fetched.contents.get(language)
        text = draft.texts.get(language)
        present = {cell["url"] for cell in text.cells if cell is not None} if text else set()
        new[language] = [
            _cell_of(item)
            for item in (content.items if content else ())
            if item.url and item.url not in present
        ]
    added = {language: len(cells) for language, cells in new.items()}
    problems = [str(problem) for problem in fetched.problems]
    if not any(added.values()):
        return Refreshed(added, problems, draft)  # nothing new: the edition stays as stored
    draft = _with_rows(draft, new)
    images = served_images(images_dir, key, draft) if images_dir else ()
    stored = drafts.save_draft(
        session, draft, now, public_url, image_files=images, own_hosts=own_hosts
    )
    return Refreshed(added, problems, stored)


def _with_rows(draft: drafts.Draft, new: dict[str, list[drafts.ItemCell]]) -> drafts.Draft:
    """``draft`` with rows added after its last: row ``n`` of the added ones holds each
    language's ``n``-th new cell (:data:`worker.desk.drafts.MISSING` when it has fewer)."""
    base = draft.row_count
    texts = dict(draft.texts)
    for language, cells in new.items():
        text = texts.get(language) or drafts.LanguageDraft(language, "", "", ())
        padded = list(text.cells) + [drafts.MISSING] * (base - len(text.cells))
        texts[language] = replace(text, cells=tuple(padded + list(cells)))
    return replace(draft, texts=texts, problems=(), warnings={})


def _cell_of(item: EditionItem) -> drafts.ItemCell:
    """An edition item from the feeds as a desk cell (every field as text)."""
    image = item.image
    values = {
        "section": item.section or "",
        "title": item.title,
        "standfirst": item.standfirst or "",
        "url": item.url,
        "image.url": image.url if image else "",
        "image.alt": image.alt if image else "",
        "image.credit": (image.credit or "") if image else "",
        "lead": item.lead,
        "body": item.body.rstrip("\n"),
    }
    return drafts.ItemCell(values)
