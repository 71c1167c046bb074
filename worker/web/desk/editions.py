"""``/desk/editions/{key}``: edit an edition side by side, preview it, send proofs, send it.

- ``GET/POST /desk/editions/{key}``: the edit form (``worker.desk.drafts``): every row an item,
  every language a column (stacked on a phone), the problems of ``newsletter edition check``
  next to the field at fault. A draft with problems is saved all the same and cannot be sent.
- ``GET /desk/editions/{key}/preview``: each language's real rendition in frames at desktop
  (640 px) and phone (375 px) width, the text part, the inbox line, the size against Gmail's
  clipping (``worker.desk.previews``). The frames load ``…/preview/{language}.html``, served
  with its own policy: no script, sandboxed, only framed by the desk itself.
- ``GET/POST /desk/editions/{key}/test``: proof copies to the logged-in user's own address, one
  language or all (``worker.sending.proofs``, the relay of the readers' copies).
- ``GET /desk/editions/{key}/export``: the edition as a zip of its folder (``edition export``).
- ``GET/POST /desk/editions/{key}/send``: what the send will do (``worker.desk.plans``), now or at
  a local time; one more click to confirm. Refused, with the reason, while the edition has
  problems or after it was sent.

Every change and every mail is recorded in the action log (``worker.desk.audit``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from typing import Annotated, Any

from babel.dates import get_day_names
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from worker.desk import audit, drafts, plans, previews
from worker.editions.bundles import BundleProblem, export_bundle
from worker.editions.images import stored_image
from worker.editions.rendering import RenderedMessage
from worker.editions.store import EditionLocked, find_edition, profile_of
from worker.models import Edition, Newsletter
from worker.runtime import Runtime
from worker.sending.proofs import ProofSetup, proof_message, send_proof
from worker.sending.schedule import ScheduleError, describe, local_instant, zone
from worker.sending.sends import When, create_send
from worker.sending.smtp import SmtpMailer
from worker.subscriptions.addresses import AddressError, parse_address
from worker.web.desk.access import DeskRefusal, DeskUser, csrf, editor, language, page

# The rendition in a frame: its inline styles and remote images, nothing else; no script, no
# form, no navigation of the desk (sandbox), framed only by the desk's own pages.
RENDITION_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src https: http: data:",
        "frame-ancestors 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "sandbox allow-popups allow-popups-to-escape-sandbox",
    ]
)
# The preview page: the app's policy, plus frames of the desk's own renditions.
PREVIEW_PAGE_POLICY = "; ".join(
    [
        "default-src 'none'",
        "style-src 'unsafe-inline'",
        "img-src 'self' data:",
        "frame-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
_MAX_KEY = 64


def _edition(session: Any, key: str) -> tuple[Edition, Newsletter]:
    edition = find_edition(session, key[:_MAX_KEY])
    if edition is None:
        raise DeskRefusal(404, f"There is no edition {key[:_MAX_KEY]}.")
    newsletter = session.get(Newsletter, edition.newsletter_id)
    assert newsletter is not None
    return edition, newsletter


def _image_files(runtime: Runtime, key: str, draft: drafts.Draft) -> list[str]:
    """The edition's own images (``border.jpg``) that the web app serves."""
    names = {
        cell["image.url"]
        for text in draft.texts.values()
        for cell in text.cells
        if cell is not None and cell["image.url"]
    }
    return [
        name for name in names if stored_image(runtime.settings.images_dir, key, name) is not None
    ]


def _own_hosts(runtime: Runtime) -> list[str]:
    return [h.strip() for h in runtime.settings.image_hosts.split(",") if h.strip()]


def _edition_page(request: Request, user: DeskUser, draft: drafts.Draft, saved: bool) -> Response:
    """The edit page of ``draft``; languages named in the desk's language; ``?unscheduled=1``
    (where unscheduling a send leads) says the edition may change again."""
    names = drafts.language_names(draft.languages, language(request))
    return page(
        request,
        user,
        "edition.html.j2",
        draft=draft,
        saved=saved,
        drafts=drafts,
        language_names=names,
        unscheduled=request.query_params.get("unscheduled") == "1",
    )


def router(runtime: Runtime) -> APIRouter:
    """The edition pages on ``runtime``."""
    router = APIRouter()

    def _checked(key: str) -> drafts.Draft:
        """The edition with its problems, stored or found now (``drafts.checked_draft``)."""
        with runtime.session() as session:
            try:
                stored = drafts.load_draft(session, key)
                return drafts.checked_draft(
                    session,
                    key,
                    runtime.settings.public_url,
                    image_files=_image_files(runtime, key, stored),
                    own_hosts=_own_hosts(runtime),
                )
            except drafts.NoEdition:
                raise DeskRefusal(404, f"There is no edition {key}.") from None

    # --- edit ---------------------------------------------------------------------------------

    @router.get("/editions/{key}")
    def edit_form(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """The edition side by side, with the problems stored at its last save."""
        draft = _checked(key[:_MAX_KEY])
        return _edition_page(request, user, draft, saved=False)

    @router.post("/editions/{key}", dependencies=[Depends(csrf)])
    async def edit(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """Save the posted form: checked, stored (with its problems, if any), shown again."""
        form = await request.form()
        values = {name: value for name, value in form.items() if isinstance(value, str)}
        return await run_in_threadpool(_save, request, key[:_MAX_KEY], user, values)

    def _save(request: Request, key: str, user: DeskUser, values: dict[str, str]) -> Response:
        now = runtime.clock.now()
        with runtime.session() as session:
            try:
                draft = drafts.draft_from_form(drafts.load_draft(session, key), values)
                saved = drafts.save_draft(
                    session,
                    draft,
                    now,
                    runtime.settings.public_url,
                    image_files=_image_files(runtime, key, draft),
                    own_hosts=_own_hosts(runtime),
                )
            except drafts.NoEdition:
                raise DeskRefusal(404, f"There is no edition {key}.") from None
            except drafts.FormError as error:
                raise DeskRefusal(400, f"The form could not be read: {error}.") from None
            except EditionLocked:
                raise DeskRefusal(
                    409,
                    f"Edition {key} has a send already: it can no longer change. "
                    "Cancel a scheduled send first to edit it.",
                ) from None
            audit.record(
                session,
                user.name,
                "edition.save",
                key,
                {"problems": str(len(saved.problems)), "rows": str(saved.row_count)},
                at=now,
            )
        return _edition_page(request, user, saved, saved=True)

    # --- export -------------------------------------------------------------------------------

    @router.get("/editions/{key}/export")
    def export(key: str, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """The stored edition as a zip of its folder (what ``newsletter edition export``
        writes; ``edition load`` reads it back to the same edition)."""
        now = runtime.clock.now()
        with runtime.session() as session:
            edition, _ = _edition(session, key)
            try:
                data = export_bundle(session, edition.key, runtime.settings.images_dir)
            except BundleProblem as error:
                raise DeskRefusal(409, f"The edition cannot be exported: {error}") from None
            audit.record(session, user.name, "edition.export", edition.key, at=now)
        return Response(
            data,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{edition.key}.zip"',
                "Cache-Control": "no-store",
            },
        )

    # --- preview ------------------------------------------------------------------------------

    @router.get("/editions/{key}/preview")
    def preview(request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """Every language at desktop and phone width, its text part, inbox line and size."""
        with runtime.session() as session:
            edition, _ = _edition(session, key)
            shown = previews.previews(session, edition, runtime.settings.public_url)
            draft = drafts.load_draft(session, edition.key)
        response = page(
            request,
            user,
            "preview.html.j2",
            key=edition.key,
            previews=shown,
            draft=draft,
            warn_kb=previews.WARN_BYTES // 1024,
        )
        response.headers["Content-Security-Policy"] = PREVIEW_PAGE_POLICY
        return response

    @router.get("/editions/{key}/preview/{language}.html")
    def rendition(key: str, language: str, user: Annotated[DeskUser, Depends(editor)]) -> Response:
        """One language's HTML as readers get it, for the preview's frames."""
        with runtime.session() as session:
            edition, _ = _edition(session, key)
            shown = previews.previews(
                session, edition, runtime.settings.public_url, only=language[:16]
            )
        if language not in shown or shown[language].error:
            raise DeskRefusal(404, f"Edition {edition.key} has no {language[:16]} rendition.")
        return HTMLResponse(
            shown[language].html,
            headers={
                "Content-Security-Policy": RENDITION_POLICY,
                "Cache-Control": "no-store",
                "X-Frame-Options": "SAMEORIGIN",
            },
        )

    # --- proofs ---------------------------------------------------------------------------------

    @router.get("/editions/{key}/test")
    def test_form(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """Where proofs go (the user's own address) and in which language."""
        with runtime.session() as session:
            edition, newsletter = _edition(session, key)
            languages = profile_of(newsletter).languages
        return page(
            request,
            user,
            "test.html.j2",
            key=edition.key,
            edition_languages=languages,
            sent=[],
            error="",
            detail="",
        )

    @router.post("/editions/{key}/test", dependencies=[Depends(csrf)])
    async def test_send(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """Send the proofs; the page says what the relay answered for each."""
        form = await request.form()
        chosen = form.get("language")
        return await run_in_threadpool(
            _test, request, key, user, chosen if isinstance(chosen, str) else ""
        )

    def _test(request: Request, key: str, user: DeskUser, chosen: str) -> Response:
        settings = runtime.settings
        now = runtime.clock.now()
        with runtime.session() as session:
            edition, newsletter = _edition(session, key)
            profile = profile_of(newsletter)
            shown = previews.previews(session, edition, settings.public_url)
        languages = list(shown) if chosen == "all" else [chosen] if chosen in shown else []
        error = detail = ""
        sent: list[tuple[str, str]] = []
        if not languages:
            error = "no_language"  # the template words each code in the desk's language
        elif not user.address:
            error = "no_address"
        else:
            try:
                to = parse_address(user.address)
            except AddressError as exc:
                to, error, detail = None, "bad_address", exc.message
            if to is not None:
                setup = ProofSetup(
                    slug=newsletter.slug,
                    sending_domain=settings.sending_domain,
                    public_url=settings.public_url,
                    bounce_domain=settings.bounce_domain,
                    signer=runtime.dkim_signer,
                )
                mailer = SmtpMailer(settings.smtp_url, timeout=settings.smtp_timeout_seconds)
                try:
                    for language in languages:
                        shown_one = shown[language]
                        if shown_one.error:
                            sent.append((language, shown_one.error))
                            continue
                        rendered = RenderedMessage(
                            shown_one.subject,
                            shown_one.preheader,
                            shown_one.html,
                            shown_one.text,
                            language,
                        )
                        message = proof_message(
                            setup, profile, edition.key, language, rendered, to, now
                        )
                        outcome = send_proof(setup, mailer, to, message)
                        sent.append((language, f"{outcome.code} {outcome.text}"))
                finally:
                    mailer.close()
        with runtime.session() as session:
            audit.record(
                session,
                user.name,
                "edition.test",
                edition.key,
                {"languages": ",".join(language for language, _ in sent) or "-",
                 "refused": error or "-"},
                at=now,
            )  # fmt: skip
        return page(
            request,
            user,
            "test.html.j2",
            status=400 if error else 200,
            key=edition.key,
            edition_languages=profile.languages,
            sent=sent,
            error=error,
            detail=detail,
        )

    # --- send or schedule -----------------------------------------------------------------------

    @router.get("/editions/{key}/send")
    def send_form(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """What a send now would do, the choice of now or later, and why it is refused if so."""
        return _send_page(request, key, user, "", False, "")

    @router.post("/editions/{key}/send", dependencies=[Depends(csrf)])
    async def send(
        request: Request, key: str, user: Annotated[DeskUser, Depends(editor)]
    ) -> Response:
        """``step=review``: the confirmation with the exact sentence; ``step=confirm``: the
        send is created (and enqueued when it is for now), then its progress page."""
        form = await request.form()
        step = form.get("step")
        when = form.get("when")
        date_text, time_text = form.get("date"), form.get("time")
        at_text = ""
        if when == "later":
            at_text = f"{date_text if isinstance(date_text, str) else ''} " + (
                time_text if isinstance(time_text, str) else ""
            )
        if step == "confirm":
            return await run_in_threadpool(_start, request, key, user, at_text.strip())
        typed = date_text.strip() if isinstance(date_text, str) else ""
        suggested = form.get("suggested")
        detail = typed[:10]
        if when == "later" and not typed:
            error = "no_date"
        elif when != "later" and typed and typed != suggested:
            # a date of the editor's own with "Now" chosen: ask, rather than guess either way
            # (the date the page suggested is no choice of theirs)
            error = "date_with_now"
        else:
            error = ""
        return await run_in_threadpool(
            _send_page, request, key, user, at_text.strip(), not error, error, detail
        )

    def _send_page(
        request: Request,
        key: str,
        user: DeskUser,
        at_text: str,
        confirm: bool,
        error: str,
        detail: str = "",
    ) -> Response:
        """The send page; ``error`` is a code the template words in the desk's language
        (``no_date``, ``date_with_now``, ``in_past``, ``problems``; ``detail`` completes it) or
        a reason worded by the domain (a time that does not exist, the duplicate guard)."""
        now = runtime.clock.now()
        with runtime.session() as session:
            edition, newsletter = _edition(session, key)
            zone_name = plans.newsletter_zone(session, newsletter.id)
            at = None
            if at_text and not error:
                try:
                    at = local_instant(at_text[:40], zone_name)
                except ScheduleError as exc:
                    error, confirm = str(exc), False
                else:
                    if at <= now:
                        error, detail = "in_past", describe(at, zone_name)
                        at, confirm = None, False
            plan = plans.plan(session, edition, at=at, zone_name=zone_name)
            slot = plans.slot_state(session, newsletter.id)
            suggested = plans.suggested_time(session, newsletter.id, now, zone_name)
        # problems stored with the edition, or found now (an edition started empty)
        plan = replace(plan, problems=len(_checked(edition.key).problems))
        lang = language(request)
        local = suggested.astimezone(zone(zone_name))
        return page(
            request,
            user,
            "send.html.j2",
            slot=slot,
            slot_day=get_day_names("wide", locale=lang)[slot.weekday]
            if slot.weekday is not None
            else "",
            slot_next=plans.moment(slot.next_at, slot.timezone or zone_name, lang)
            if slot.next_at is not None
            else "",
            suggested_date=local.date().isoformat(),
            suggested_time=f"{local:%H:%M}",
            suggested_words=plans.moment(suggested, zone_name, lang),
            status=400 if error else 200,
            key=edition.key,
            plan=plan,
            sentence=plans.sentence(plan, lang, now),
            zone_name=zone_name,
            at_text=at_text if at is not None else "",
            confirm=confirm and not plan.refused,
            error=error,
            detail=detail,
            today=now.astimezone(UTC).date().isoformat(),
        )

    def _start(request: Request, key: str, user: DeskUser, at_text: str) -> Response:
        now = runtime.clock.now()
        found = _checked(key[:_MAX_KEY]).problems
        if found:
            return _send_page(request, key, user, "", False, "problems", found[0].reason)
        with runtime.session() as session:
            edition, newsletter = _edition(session, key)
            zone_name = plans.newsletter_zone(session, newsletter.id)
            try:
                when = When(local_instant(at_text[:40], zone_name), zone_name) if at_text else None
                new = create_send(
                    session, edition, now, runtime.settings.send_batch_size, when=when
                )
            except ValueError as exc:  # ScheduleError, DuplicateSend, EditionHasProblems, past
                refused: ValueError | None = exc
            else:
                refused = None
                send_id = new.id
                if when is None:
                    from worker.actors import expect_planning

                    expect_planning(runtime, send_id)  # before the commit that starts it
                audit.record(
                    session,
                    user.name,
                    "send.schedule" if when else "send.start",
                    edition.key,
                    {"send": str(send_id), "at": describe(when.at, zone_name) if when else "now"},
                    at=now,
                )
        if refused is not None:  # DuplicateSend, EditionHasProblems, a time in the past
            return _send_page(request, key, user, "", False, str(refused))
        if when is None:
            from worker.actors import start_planning

            start_planning(runtime, send_id)
            return RedirectResponse(f"/desk/sends/{send_id}", status_code=303)
        return RedirectResponse(f"/desk/sends/{send_id}?scheduled=1", status_code=303)

    return router
