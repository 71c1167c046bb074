"""``/desk/sends``: past and running sends; ``/desk/sends/{id}``: one send's live progress and its
funnel per language and per recipient domain (the dashboard's numbers, ``worker.desk.history``).

Pause, resume and cancel are for operators only (an editor gets 403 and a page saying so), the
same changes as ``newsletter send pause|resume|cancel``; each is recorded in the action log. The
progress page refreshes itself every few seconds while the send moves (a meta refresh: no
script).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from worker.desk import audit, history
from worker.runtime import Runtime
from worker.sending.sends import SendStateError, cancel_scheduled, set_status
from worker.states import SendStatus
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, editor, operator, page

REFRESH_SECONDS = 5
_ACTIONS = {
    "pause": SendStatus.PAUSED,
    "resume": SendStatus.SENDING,
    "cancel": SendStatus.CANCELLED,
}


def router(runtime: Runtime) -> APIRouter:
    """The send pages on ``runtime``."""
    router = APIRouter()

    @router.get("/sends")
    def sends(request: Request, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """The 50 newest sends with their deliveries per state."""
        with runtime.session() as session:
            listed = history.past_sends(session)
        return page(request, user, "sends.html.j2", sends=listed)

    @router.get("/sends/{send_id}")
    def progress(
        request: Request, send_id: int, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """Counts by state, done of planned, the funnel per language and domain."""
        if not 1 <= send_id < 2**63:
            raise DeskRefusal(404, "There is no such send.")
        with runtime.session() as session:
            shown = history.progress(session, send_id, runtime.clock.now())
        if shown is None:
            raise DeskRefusal(404, f"There is no send {send_id}.")
        return page(
            request,
            user,
            "send_progress.html.j2",
            progress=shown,
            refresh=REFRESH_SECONDS if shown.live else 0,
        )

    @router.post("/sends/{send_id}/{action}", dependencies=[Depends(csrf)])
    def change(send_id: int, action: str, user: Annotated[DeskUser, Depends(operator)]) -> Response:
        """Pause, resume or cancel (operators only); then back to the progress page."""
        if action not in _ACTIONS or not 1 <= send_id < 2**63:
            raise DeskRefusal(404, "There is no such action.")
        now = runtime.clock.now()
        with runtime.session() as session:
            done = False
            if action == "cancel":
                done = cancel_scheduled(session, send_id, now)  # not started: nobody mailed
            if not done:
                try:
                    set_status(session, send_id, _ACTIONS[action], now)
                except SendStateError as error:
                    raise DeskRefusal(409, str(error)) from None
            audit.record(session, user.name, f"send.{action}", str(send_id), at=now)
        if action == "resume":
            from worker.actors import reconcile

            reconcile(runtime)  # re-enqueue the batches the pause left
        return RedirectResponse(f"/desk/sends/{send_id}", status_code=303)

    return router
