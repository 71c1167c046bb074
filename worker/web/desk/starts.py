"""``/desk/editions/new``: start an edition three ways — from the website's feeds for a period
(next week by default), from an uploaded zip of an edition folder, or empty from a key and a
period — then open it (303 to ``/desk/editions/{key}``).

The work is :mod:`worker.editions.starts`: the edition is stored whole or not at all, in the same
transaction as its line in the action log (``edition.start``). Only the edition's content comes
from an editor's zip: a ``newsletter.yaml`` in it that differs from the stored profile is refused,
naming the fields; an operator's is applied and logged (``newsletter.change``, the fields). A
refusal re-shows the form with each reason next to the field at fault (422); nothing is stored.
A feed that fails refuses the start until the editor ticks "start anyway", when its language
starts empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.desk import audit
from worker.desk.accounts import Role
from worker.editions.bundles import MAX_BUNDLE_BYTES
from worker.editions.feeds import default_key, feed_fetcher
from worker.editions.files import PROFILE_FILE, NewsletterProfile
from worker.editions.starts import (
    Refusal,
    StartRefused,
    period_of,
    start_empty,
    start_from_bundle,
    start_from_feeds,
)
from worker.editions.store import NoNewsletter, get_newsletter, profile_of
from worker.runtime import Runtime
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, editor, page, refused

PATH = "/desk/editions/new"
# The body cap of this route (worker/web/app.py): the largest bundle plus the form around it.
MAX_BODY_BYTES = MAX_BUNDLE_BYTES + 64 * 1024
WAYS = ("feeds", "zip", "empty")


def next_week(today: date) -> tuple[date, date]:
    """Monday to Sunday of the week after the one ``today`` is in."""
    monday = today + timedelta(days=7 - today.weekday())
    return monday, monday + timedelta(days=6)


@dataclass(frozen=True)
class _Form:
    """What the page shows: the chosen way, the values typed, each field's errors."""

    way: str
    key: str
    start: str
    end: str
    accept_failed: bool
    errors: dict[str, list[Refusal]]


def _profile(runtime: Runtime, now: datetime) -> NewsletterProfile | None:
    with runtime.session() as session:
        try:
            newsletter = get_newsletter(session, now, profile_path=runtime.settings.newsletter_path)
        except NoNewsletter:
            return None
        return profile_of(newsletter)


def _show(
    request: Request, user: DeskUser, form: _Form, chosen: NewsletterProfile | None, status: int
) -> Response:
    context: dict[str, Any] = {
        "form": form,
        "profile": chosen,
        "max_mb": MAX_BUNDLE_BYTES // (1024 * 1024),
    }
    return page(request, user, "start.html.j2", status=status, **context)


def _blank(runtime: Runtime, now: datetime, chosen: NewsletterProfile | None) -> _Form:
    """The form with next week (in the newsletter's time zone) filled in."""
    zone = ZoneInfo(chosen.timezone if chosen else "UTC")
    start, end = next_week(now.astimezone(zone).date())
    return _Form("feeds", default_key(start), str(start), str(end), False, {})


def too_large(runtime: Runtime) -> ASGIApp:
    """The answer to an upload over :data:`MAX_BODY_BYTES` (``worker.web.guards.BodyLimit``
    calls it instead of its JSON 413, without reading the body): the start form again, its zip
    field saying how large an archive may be, status 413. Without a live login, the desk's usual
    refusal (401)."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            user = await run_in_threadpool(editor, request)
        except DeskRefusal as exc:
            response = await refused(request, exc)
        else:
            response = await run_in_threadpool(_too_large_page, runtime, request, user)
        await response(scope, receive, send)

    return answer


def _too_large_page(runtime: Runtime, request: Request, user: DeskUser) -> Response:
    now = runtime.clock.now()
    chosen = _profile(runtime, now)
    blank = _blank(runtime, now, chosen)
    form = _Form("zip", blank.key, blank.start, blank.end, False, {"bundle": [_too_large()]})
    return _show(request, user, form, chosen, 413)


def _too_large() -> Refusal:
    return Refusal.of(
        "bundle",
        "bundle_too_large",
        "the archive is larger than %(mb)s MB",
        mb=str(MAX_BUNDLE_BYTES // 1024**2),
    )


def router(runtime: Runtime) -> APIRouter:
    """The start page's routes on ``runtime``."""
    router = APIRouter()

    @router.get("/editions/new")
    def new(request: Request, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """The three ways, with next week (in the newsletter's time zone) filled in."""
        now = runtime.clock.now()
        chosen = _profile(runtime, now)
        return _show(request, user, _blank(runtime, now, chosen), chosen, 200)

    @router.post("/editions/new", dependencies=[Depends(csrf)])
    def create(
        request: Request,
        user: Annotated[DeskUser, Depends(editor)],
        way: Annotated[str, Form(max_length=16)] = "",
        key: Annotated[str, Form(max_length=200)] = "",
        start: Annotated[str, Form(max_length=40)] = "",
        end: Annotated[str, Form(max_length=40)] = "",
        accept_failed: Annotated[str, Form(max_length=8)] = "",
        bundle: UploadFile | None = None,
    ) -> Response:
        """Start the edition ``way`` says; 303 to it, or the form again with the reasons."""
        now = runtime.clock.now()
        chosen = _profile(runtime, now)
        form = _Form(way, key.strip(), start.strip(), end.strip(), bool(accept_failed), {})
        try:
            started_key = _start(runtime, user, form, chosen, bundle, now)
        except StartRefused as refused:
            errors: dict[str, list[Refusal]] = {}
            for refusal in refused.refusals:
                errors.setdefault(refusal.field, []).append(refusal)
            return _show(request, user, _with_errors(form, errors), chosen, 422)
        return RedirectResponse(f"/desk/editions/{started_key}", status_code=303)

    return router


def _with_errors(form: _Form, errors: dict[str, list[Refusal]]) -> _Form:
    return _Form(form.way, form.key, form.start, form.end, form.accept_failed, errors)


def _start(
    runtime: Runtime,
    user: DeskUser,
    form: _Form,
    chosen: NewsletterProfile | None,
    bundle: UploadFile | None,
    now: datetime,
) -> str:
    """Store the edition (and its action-log line, one transaction); its key. Raises
    :class:`StartRefused`."""
    if form.way not in WAYS:
        raise StartRefused([Refusal.of("way", "way_unknown", "choose one of the three ways")])
    if form.way == "zip":
        data = _upload(bundle)
        with runtime.session() as session:
            started = start_from_bundle(
                session,
                data,
                now,
                runtime.settings.images_dir,
                may_change_profile=user.role == Role.OPERATOR,
            )
            key = started.edition.key
            audit.record(session, user.name, "edition.start", key, {"way": "zip"}, at=now)
            if started.profile_changes:
                changed = {"fields": ", ".join(started.profile_changes)[:500], "edition": key}
                audit.record(session, user.name, "newsletter.change", PROFILE_FILE, changed, at=now)
        return key
    if chosen is None:
        raise StartRefused(
            [
                Refusal.of(
                    "way",
                    "no_newsletter",
                    "no newsletter is set up yet: start from a zip of an edition folder",
                )
            ]
        )
    first, last = period_of(form.start, form.end)
    with runtime.session() as session:
        if form.way == "feeds":
            started = start_from_feeds(
                session,
                chosen,
                form.key,
                first,
                last,
                now,
                accept_failed_feeds=form.accept_failed,
                fetch=feed_fetcher(runtime.settings.feed_hosts),
            )
        else:
            started = start_empty(session, chosen, form.key, first, last, now)
        detail = {"way": form.way, "period": f"{first}..{last}"}
        if started.notes:
            detail["notes"] = "; ".join(started.notes)[:500]
        audit.record(session, user.name, "edition.start", started.edition.key, detail, at=now)
        return started.edition.key


def _upload(bundle: UploadFile | None) -> bytes:
    """The uploaded archive's bytes, at most :data:`MAX_BUNDLE_BYTES`."""
    if bundle is None or not bundle.filename:
        raise StartRefused(
            [Refusal.of("bundle", "bundle_missing", "choose a .zip file of an edition folder")]
        )
    data = bundle.file.read(MAX_BUNDLE_BYTES + 1)
    if len(data) > MAX_BUNDLE_BYTES:
        raise StartRefused([_too_large()])
    if not data:
        raise StartRefused([Refusal.of("bundle", "bundle_empty", "the file is empty")])
    return data
