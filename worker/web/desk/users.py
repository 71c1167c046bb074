"""``/desk/users`` (operators only): who has access to the desk, their roles and last logins,
and a button to end a user's sessions (a lost laptop). Accounts themselves are made on the
command line (``newsletter users add|remove|reset``); addresses are not shown."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import RedirectResponse, Response

from worker.desk import accounts, audit
from worker.runtime import Runtime
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, operator, page


def router(runtime: Runtime) -> APIRouter:
    """The accounts page's routes on ``runtime``."""
    router = APIRouter()

    @router.get("/users")
    def users(request: Request, user: Annotated[DeskUser, Depends(operator)]) -> Response:
        """Every desk user: name, role, last login, disabled."""
        with runtime.session() as session:
            rows = accounts.users(session)
        return page(request, user, "users.html.j2", users=rows)

    @router.post("/users/{name}/end-sessions", dependencies=[Depends(csrf)])
    def end_sessions(
        request: Request,
        user: Annotated[DeskUser, Depends(operator)],
        name: Annotated[str, Path(max_length=64)],
    ) -> Response:
        """End every live session of ``name`` (recorded as ``user.sessions_ended``)."""
        now = runtime.clock.now()
        with runtime.session() as session:
            try:
                target = accounts.user_named(session, name)
            except accounts.AccountError:
                raise DeskRefusal(404, "No such desk user.") from None
            ended = accounts.end_sessions(session, target.id, now)
            audit.record(
                session, user.name, "user.sessions_ended", name, {"sessions": str(ended)}, at=now
            )
        return RedirectResponse("/desk/users", status_code=303)

    return router
