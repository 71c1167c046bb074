"""``/desk/log``: the latest 200 lines of the action log, filtered by user and by action.

Shown to every desk user, editors included: in a newsroom who changed or sent what is
everyone's business, and the log holds no reader's data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from worker.desk import audit
from worker.runtime import Runtime
from worker.web.desk.access import DeskUser, editor, page


def router(runtime: Runtime) -> APIRouter:
    """The log page's route on ``runtime``."""
    router = APIRouter()

    @router.get("/log")
    def log(
        request: Request,
        user: Annotated[DeskUser, Depends(editor)],
        who: Annotated[str, Query(alias="user", max_length=64)] = "",
        action: Annotated[str, Query(max_length=64)] = "",
    ) -> Response:
        """The newest lines first; ``?user=NAME`` and ``?action=ACTION`` filter (exact)."""
        with runtime.session() as session:
            entries = audit.latest(session, user_name=who or None, action=action or None)
            actions = audit.actions(session)
        return page(
            request, user, "log.html.j2", entries=entries, actions=actions, who=who, action=action
        )

    return router
