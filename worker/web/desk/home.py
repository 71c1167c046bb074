"""``/desk/``: the newsletter's editions (key, period, languages, last change, send status) and
the recent sends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from worker.desk import listing, plans
from worker.editions.store import NoNewsletter
from worker.runtime import Runtime
from worker.web.desk.access import DeskUser, editor, language, page


def router(runtime: Runtime) -> APIRouter:
    """The home page's routes on ``runtime``."""
    router = APIRouter()

    @router.get("/")
    def home(request: Request, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """Editions, newest change first, each with its latest send; the ten newest sends."""
        with runtime.session() as session:
            try:
                newsletter_id: int | None = runtime.newsletter(session).id
                set_up = True
            except NoNewsletter:
                newsletter_id, set_up = None, False
            editions = listing.editions(session, newsletter_id)
            sends = listing.recent_sends(session, newsletter_id)
        lang = language(request)
        due = {
            s.id: plans.moment(s.scheduled_for, s.timezone or "UTC", lang)
            for s in sends
            if s.scheduled_for is not None
        }  # local time first, then UTC
        return page(
            request, user, "home.html.j2", editions=editions, sends=sends, set_up=set_up, due=due
        )

    return router
