"""The public archive of editions that have gone out.

``GET /archive`` (and ``/archive/{lang}``): the index, newest first; ``/archive/{lang}/feed.atom``:
its Atom feed (RFC 4287); ``/archive/{key}/{lang}``: one edition, the "view in browser" copy.
Only editions with a send that went out are public (``worker.editions.store.published_editions``):
an edition loaded or scheduled for next week is a 404 like a key that does not exist, with the same
body (issue 13, finding 10). ``?newsletter=<slug>`` picks another newsletter than the default.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.editions.files import EditionContent, NewsletterProfile
from worker.editions.localisation import format_period
from worker.editions.store import (
    DEFAULT_SLUG,
    edition_contents,
    find_edition,
    is_published,
    profile_of,
    published_editions,
)
from worker.models import Newsletter
from worker.runtime import Runtime
from worker.web.dependencies import PagesDep, RuntimeDep, SessionDep

router = APIRouter()

NOT_FOUND = "no such edition"
ATOM_TYPE = "application/atom+xml; charset=utf-8"  # RFC 4287 section 7
SlugQuery = Annotated[str, Query(max_length=100, pattern=r"^[a-z0-9][a-z0-9_-]*$")]


def _not_found() -> Response:
    """The one 404 of the archive: an unsent edition, an unknown key or language, an unknown
    newsletter all look the same."""
    return PlainTextResponse(NOT_FOUND, status_code=404)


def _newsletter(rt: Runtime, session: Session, slug: str) -> Newsletter | None:
    """The newsletter ``slug``; the default one is created from its profile file on first use
    (an empty archive rather than a 404 before the first edition is loaded)."""
    if slug == DEFAULT_SLUG:
        try:
            return rt.newsletter(session)
        except LookupError:  # no edition loaded and no profile file configured yet
            return None
    return session.scalar(select(Newsletter).where(Newsletter.slug == slug))


def _issues(session: Session, newsletter: Newsletter, lang: str) -> list[dict[str, object]]:
    """The published editions that have ``lang``, newest first, as the index and feed show them:
    key, subject, preheader, period (localised) and first send time."""
    issues: list[dict[str, object]] = []
    for published in published_editions(session, newsletter.id):
        content: EditionContent | None = edition_contents(session, published.edition).get(lang)
        if content is None:
            continue
        issues.append(
            {
                "key": published.edition.key,
                "subject": content.subject,
                "preheader": content.preheader,
                "period": format_period(content.period_start, content.period_end, lang),
                "published_at": published.published_at,
            }
        )
    return issues


def _query(slug: str) -> str:
    return "" if slug == DEFAULT_SLUG else f"?newsletter={slug}"


@router.get("/archive", response_class=HTMLResponse)
def archive_home(
    rt: RuntimeDep, pages: PagesDep, session: SessionDep, newsletter: SlugQuery = DEFAULT_SLUG
) -> Response:
    """The index in the newsletter's default language."""
    row = _newsletter(rt, session, newsletter)
    if row is None:
        return _not_found()
    return _index(rt.links.public_url, pages, session, row, profile_of(row).default_language)


@router.get("/archive/{lang}", response_class=HTMLResponse)
def archive_index(
    lang: str,
    rt: RuntimeDep,
    pages: PagesDep,
    session: SessionDep,
    newsletter: SlugQuery = DEFAULT_SLUG,
) -> Response:
    """The index in ``lang``: every published edition that has that language, newest first;
    404 for a language the newsletter does not have."""
    row = _newsletter(rt, session, newsletter)
    if row is None or lang not in profile_of(row).languages:
        return _not_found()
    return _index(rt.links.public_url, pages, session, row, lang)


def _index(
    public_url: str, pages: PagesDep, session: Session, newsletter: Newsletter, lang: str
) -> Response:
    profile = profile_of(newsletter)
    query = _query(newsletter.slug)
    response = pages.render(
        "archive_index",
        lang,
        newsletter_name=profile.name[lang],
        site=profile.site,
        issues=_issues(session, newsletter, lang),
        languages=profile.languages,
        query=query,
        feed_url=f"{public_url}/archive/{lang}/feed.atom{query}",
    )
    response.headers["Cache-Control"] = "public, max-age=300"  # the same for everyone
    return response


@router.get("/archive/{lang}/feed.atom")
def archive_feed(
    lang: str, rt: RuntimeDep, session: SessionDep, newsletter: SlugQuery = DEFAULT_SLUG
) -> Response:
    """The Atom feed (RFC 4287) of the index in ``lang``: one entry per published edition, its
    id and link the edition's archive page, updated at its first send; 404 as the index."""
    row = _newsletter(rt, session, newsletter)
    if row is None or lang not in profile_of(row).languages:
        return _not_found()
    profile = profile_of(row)
    body = atom_feed(
        profile,
        lang,
        _issues(session, row, lang),
        public_url=rt.links.public_url,
        query=_query(row.slug),
    )
    return Response(body, media_type=ATOM_TYPE, headers={"Cache-Control": "public, max-age=300"})


def atom_feed(
    profile: NewsletterProfile,
    lang: str,
    issues: list[dict[str, object]],
    *,
    public_url: str,
    query: str = "",
) -> bytes:
    """The Atom 1.0 document (UTF-8 bytes) for ``issues`` (as :func:`_issues` gives them).

    RFC 4287: the feed has id, title, updated (the newest entry's time, or 2000-01-01 for an
    empty feed so that it does not change on every request), an author (section 4.1.1) and a
    ``self`` link (section 4.2.7.2); each entry has id, title, updated, link and summary.
    """
    from feedgen.feed import FeedGenerator

    index = f"{public_url}/archive/{lang}{query}"
    feed = FeedGenerator()
    feed.id(index)
    feed.title(profile.name[lang])
    feed.author({"name": profile.name[lang]})
    feed.link(href=f"{public_url}/archive/{lang}/feed.atom{query}", rel="self")
    feed.link(href=index, rel="alternate")
    feed.language(lang)
    feed.subtitle(profile.about[lang] or profile.name[lang])
    newest = issues[0]["published_at"] if issues else datetime(2000, 1, 1, tzinfo=UTC)
    feed.updated(newest)
    for issue in reversed(issues):  # feedgen prepends: the newest ends up first
        url = f"{public_url}/archive/{issue['key']}/{lang}{query}"
        entry = feed.add_entry()
        entry.id(url)
        entry.title(str(issue["subject"]))
        entry.link(href=url, rel="alternate")
        entry.updated(issue["published_at"])
        entry.published(issue["published_at"])
        entry.summary(str(issue["preheader"] or issue["period"]))
    atom: bytes = feed.atom_str(pretty=True)
    return atom


@router.get("/archive/{key}/{lang}", response_class=HTMLResponse)
def archive(
    key: str, lang: str, rt: RuntimeDep, session: SessionDep, newsletter: SlugQuery = DEFAULT_SLUG
) -> Response:
    """The edition ``key`` in language ``lang`` (no personal links: the unsubscribe and
    preferences links point to the site); 404 when either is unknown or the edition has not
    gone out."""
    from worker.editions.placeholders import PREFERENCES_URL, UNSUBSCRIBE_URL
    from worker.editions.rendering import render_edition

    edition = find_edition(session, key, newsletter)
    if edition is None or not is_published(session, edition):
        return _not_found()
    contents = edition_contents(session, edition)
    if lang not in contents:
        return _not_found()
    row = session.get(Newsletter, edition.newsletter_id)
    assert row is not None
    profile = profile_of(row)
    rendered = render_edition(profile, contents[lang], public_url=rt.links.public_url)
    html = rendered.html.replace(UNSUBSCRIBE_URL, profile.site)
    return HTMLResponse(html.replace(PREFERENCES_URL, profile.site))
