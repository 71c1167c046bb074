"""The editors' desk on the web app, under ``/desk``: login (``access``), the home page
(``home``), the action log (``log``), the desk's accounts (``users``, operators only), and the
routers of the edition and send pages, each included here by one line.

Every desk page needs a login (``access.editor`` or ``access.operator``) and every POST the
session's CSRF token (``access.csrf``); every action is recorded (``worker.desk.audit``).
"""

from __future__ import annotations

from fastapi import APIRouter

from worker.runtime import Runtime
from worker.web.desk import editions, home, log, sends, starts, users
from worker.web.desk.access import access_router


def desk_router(runtime: Runtime) -> APIRouter:
    """Every desk route, prefixed ``/desk``; include it in the FastAPI app (which also installs
    ``access.refused`` as the handler of ``access.DeskRefusal``)."""
    router = APIRouter(prefix="/desk", include_in_schema=False)
    router.include_router(access_router())
    router.include_router(home.router(runtime))
    router.include_router(log.router(runtime))
    router.include_router(users.router(runtime))
    router.include_router(starts.router(runtime))  # /desk/editions/new
    # after starts (/desk/editions/new): {key} would match "new"
    router.include_router(editions.router(runtime))
    router.include_router(sends.router(runtime))
    return router
