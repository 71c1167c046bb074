"""What the web routes depend on: the app's runtime, its pages, a database session.

``create_app`` puts the runtime and the pages on ``app.state``; routes declare them with these
typed aliases instead of closing over them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from worker.runtime import Runtime
from worker.web.pages import Pages


def app_runtime(request: Request) -> Runtime:
    """The runtime the app was created with."""
    rt: Runtime = request.app.state.runtime
    return rt


def app_pages(request: Request) -> Pages:
    """The app's page renderer."""
    pages: Pages = request.app.state.pages
    return pages


def db_session(rt: Annotated[Runtime, Depends(app_runtime)]) -> Iterator[Session]:
    """A session of the app's runtime, committed when the route returns (before the response
    is sent, so a reader who reloads sees the change)."""
    with rt.session() as session:
        yield session


RuntimeDep = Annotated[Runtime, Depends(app_runtime)]
PagesDep = Annotated[Pages, Depends(app_pages)]
# scope="function": commit before the response, not after it has been sent.
SessionDep = Annotated[Session, Depends(db_session, scope="function")]
