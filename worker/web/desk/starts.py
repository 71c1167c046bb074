"""``/desk/editions/new``: start an edition three ways — from the website's feeds for a period,
from an uploaded zip of an edition folder, or empty from a key and a period — then open it (303
to ``/desk/editions/{key}``). The period is by default the week that is ending (Monday to Sunday
of today in the newsletter's time zone), for the edition sent the Monday after, keyed by its ISO
week; the form says so in words.

The work is :mod:`worker.editions.starts`: the edition is stored whole or not at all, in the same
transaction as its line in the action log (``edition.start``), checked as a desk save checks it
and stored with its problems (:func:`worker.desk.starts.store_checked`), so that no way of
sending it (the desk, ``newsletter send start``, the weekly slot) takes it before it is fixed.
Only the edition's content comes from an editor's zip: a ``newsletter.yaml`` in it that differs
from the stored profile is refused, naming the fields; an operator's is applied and logged
(``newsletter.change``, the fields). A refusal re-shows the form with each reason next to the
field at fault (422); nothing is stored. A feed that fails refuses the start until the editor
ticks "start anyway", when its language starts empty.

``POST /desk/editions/{key}/refresh`` adds to an edition not yet sent the articles its period's
feeds have now and it has not (:func:`worker.desk.starts.refresh_from_feeds`, through the same
guarded fetcher as a start), recorded as ``edition.refresh``, and says what it added ("2 new
articles: 1 be, 1 ru").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date
from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from worker.desk import audit, drafts
from worker.desk.accounts import Role
from worker.desk.starts import NotRefreshable, refresh_from_feeds, store_checked
from worker.editions.bundles import MAX_BUNDLE_BYTES
from worker.editions.feeds import default_key, ending_week, feed_fetcher, sending_day
from worker.editions.files import PROFILE_FILE, NewsletterProfile
from worker.editions.starts import (
    Refusal,
    StartRefused,
    period_of,
    start_empty,
    start_from_bundle,
    start_from_feeds,
)
from worker.editions.store import EditionLocked, NoNewsletter, get_newsletter, profile_of
from worker.runtime import Runtime
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, editor, language, page, refused

PATH = "/desk/editions/new"
# The body cap of this route (worker/web/app.py): the largest bundle plus the form around it.
MAX_BODY_BYTES = MAX_BUNDLE_BYTES + 64 * 1024
WAYS = ("feeds", "zip", "empty")


def period_help(start: date, end: date, language: str) -> dict[str, str]:
    """The default period in words, in the desk's ``language`` (weekdays and months from CLDR
    via Babel): ``first``, ``last`` and ``sent`` (the Monday after), e.g. "Monday 30 November"."""
    locale = Locale.parse(language)
    days = {"first": start, "last": end, "sent": sending_day(end)}
    return {name: format_date(day, "EEEE d MMMM", locale=locale) for name, day in days.items()}


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
    request: Request,
    user: DeskUser,
    form: _Form,
    chosen: NewsletterProfile | None,
    status: int,
    default_period: dict[str, str] | None = None,
) -> Response:
    context: dict[str, Any] = {
        "form": form,
        "default_period": default_period,
        "profile": chosen,
        "max_mb": MAX_BUNDLE_BYTES // (1024 * 1024),
    }
    return page(request, user, "start.html.j2", status=status, **context)


def _blank(runtime: Runtime, now: datetime, chosen: NewsletterProfile | None) -> _Form:
    """The form with the week that is ending (in the newsletter's time zone) filled in."""
    zone = ZoneInfo(chosen.timezone if chosen else "UTC")
    start, end = ending_week(now.astimezone(zone).date())
    return _Form("feeds", default_key(start), str(start), str(end), False, {})


def _words(request: Request, form: _Form) -> dict[str, str] | None:
    """The period of ``form`` in words, in the page's language (:func:`period_help`); None
    when it is not two dates in order (the form then says what is wrong with it)."""
    try:
        start, end = date.fromisoformat(form.start), date.fromisoformat(form.end)
    except ValueError:
        return None
    return period_help(start, end, language(request)) if start <= end else None


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
    return _show(request, user, form, chosen, 413, _words(request, blank))


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
        """The three ways, with the week that is ending (in the newsletter's time zone) filled
        in and said in words."""
        now = runtime.clock.now()
        chosen = _profile(runtime, now)
        blank = _blank(runtime, now, chosen)
        return _show(request, user, blank, chosen, 200, _words(request, blank))

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
            words = _words(request, form)
            return _show(request, user, _with_errors(form, errors), chosen, 422, words)
        return RedirectResponse(f"/desk/editions/{started_key}", status_code=303)

    @router.post("/editions/{key}/refresh", dependencies=[Depends(csrf)])
    def refresh(request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """Add the feeds' new articles to edition ``key``; a page saying what was added."""
        key = key[:_MAX_KEY]
        now = runtime.clock.now()
        settings = runtime.settings
        with runtime.session() as session:
            try:
                refreshed = refresh_from_feeds(
                    session,
                    key,
                    now,
                    settings.public_url,
                    settings.images_dir,
                    _own_hosts(settings.image_hosts),
                    fetch=feed_fetcher(settings.feed_hosts),
                )
            except drafts.NoEdition:
                raise DeskRefusal(404, f"There is no edition {key}.") from None
            except EditionLocked:
                raise DeskRefusal(
                    409,
                    f"Edition {key} has a send already: it can no longer change. "
                    "Cancel a scheduled send first to refresh it.",
                ) from None
            except NotRefreshable as error:
                raise DeskRefusal(409, f"Edition {key} cannot be refreshed: {error}.") from None
            detail = {"added": refreshed.summary()}
            if refreshed.problems:
                detail["problems"] = "; ".join(refreshed.problems)[:500]
            audit.record(session, user.name, "edition.refresh", key, detail, at=now)
        counts = ", ".join(f"{n} {lang}" for lang, n in refreshed.added.items() if n)
        return page(
            request,
            user,
            "refreshed.html.j2",
            key=key,
            total=refreshed.total,
            counts=counts,
            problems=refreshed.problems,
            draft=refreshed.draft,
        )

    return router


_MAX_KEY = 64  # an edition key's length (its pattern on the forms)


def _own_hosts(image_hosts: str) -> list[str]:
    """``NEWSLETTER_IMAGE_HOSTS`` as a list of hosts."""
    return [host.strip() for host in image_hosts.split(",") if host.strip()]


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
            _check(runtime, session, key, now)
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
        _check(runtime, session, started.edition.key, now)
        audit.record(session, user.name, "edition.start", started.edition.key, detail, at=now)
        return started.edition.key


def _check(runtime: Runtime, session: Session, key: str, now: datetime) -> None:
    """Check the edition just started and store it with its problems (see the module)."""
    settings = runtime.settings
    store_checked(
        session,
        key,
        now,
        settings.public_url,
        settings.images_dir,
        _own_hosts(settings.image_hosts),
    )


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
