"""``GET /archive/{key}/{lang}``: the public "view in browser" copy of an edition."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from worker.editions.store import profile_of
from worker.models import Newsletter
from worker.web.dependencies import RuntimeDep, SessionDep

router = APIRouter()


@router.get("/archive/{key}/{lang}", response_class=HTMLResponse)
def archive(key: str, lang: str, rt: RuntimeDep, session: SessionDep) -> Response:
    """The edition ``key`` in language ``lang`` (no personal links: the unsubscribe link points
    to the site); 404 when either is unknown."""
    from worker.editions.rendering import UNSUBSCRIBE_URL, render_edition
    from worker.editions.store import edition_contents, find_edition

    edition = find_edition(session, key)
    contents = edition_contents(session, edition) if edition is not None else {}
    if lang not in contents or edition is None:
        return PlainTextResponse("no such edition", status_code=404)
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    profile = profile_of(newsletter)
    rendered = render_edition(profile, contents[lang], public_url=rt.links.public_url)
    return HTMLResponse(rendered.html.replace(UNSUBSCRIBE_URL, profile.site))
