"""``/desk/sends``: past and running sends; ``/desk/sends/{id}``: one send's live progress and its
funnel per language and per recipient domain (the dashboard's numbers, ``worker.desk.history``).

Pause, resume and cancel are for operators only (an editor gets 403 and a page saying so), the
same changes as ``newsletter send pause|resume|cancel``; each is recorded in the action log.
Unscheduling a send that has not started is every editor's (it is their schedule, and it makes
the edition editable again): ``POST /desk/sends/{id}/unschedule``, also logged; a send that has
started is refused (409) and stays the operators' to cancel. The
progress page refreshes itself every few seconds while the send moves (a meta refresh: no
script).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from worker.desk import audit, history, plans
from worker.editions.store import find_edition
from worker.runtime import Runtime
from worker.sending.sends import SendStateError, cancel_scheduled, set_status
from worker.states import SendStatus
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, editor, language, operator, page

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
        lang = language(request)
        due = {
            item.summary.id: plans.moment(item.scheduled_for, item.timezone or "UTC", lang)
            for item in listed
            if item.scheduled_for is not None
        }  # local time first, then UTC, as on the send's page
        return page(request, user, "sends.html.j2", sends=listed, due=due)

    @router.get("/sends/{send_id}")
    def progress(
        request: Request, send_id: int, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """Counts by state, done of planned, the funnel per language and domain."""
        if not 1 <= send_id < 2**63:
            raise DeskRefusal(404, "There is no such send.")
        lang = language(request)
        with runtime.session() as session:
            shown = history.progress(session, send_id, runtime.clock.now())
            if shown is None:
                raise DeskRefusal(404, f"There is no send {send_id}.")
            would_receive = None
            edition = find_edition(session, shown.edition_key)
            waiting = shown.status in ("scheduled", "planning")
            if waiting and not shown.planned and edition is not None:
                # before planning, the readers it would go to now (the list is taken at the start)
                would_receive = plans.plan(session, edition).total
        due = ""
        if shown.scheduled_for is not None:
            due = plans.moment(shown.scheduled_for, shown.timezone or "UTC", lang)
        return page(
            request,
            user,
            "send_progress.html.j2",
            progress=shown,
            refresh=REFRESH_SECONDS if shown.live else 0,
            due=due,
            would_receive=would_receive,
            just_scheduled=request.query_params.get("scheduled") == "1",
        )

    @router.post("/sends/{send_id}/unschedule", dependencies=[Depends(csrf)])
    def unschedule(send_id: int, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """Cancel a send that has not started (any desk user); then the edition again, which
        may change once more. A send that has started: 409, the operators' to cancel."""
        if not 1 <= send_id < 2**63:
            raise DeskRefusal(404, "There is no such send.")
        now = runtime.clock.now()
        with runtime.session() as session:
            shown = history.progress(session, send_id, now)
            if shown is None:
                raise DeskRefusal(404, f"There is no send {send_id}.")
            if not cancel_scheduled(session, send_id, now):
                raise DeskRefusal(
                    409,
                    f"Send {send_id} has started ({shown.status}): only an operator may cancel "
                    "it now.",
                )
            audit.record(session, user.name, "send.unschedule", str(send_id), at=now)
            session.commit()
        return RedirectResponse(f"/desk/editions/{shown.edition_key}?unscheduled=1", 303)

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
