"""The desk's edition and send pages (worker/web/desk/editions.py, sends.py) through the real app:
edit side by side, preview, test-send, send or schedule, progress, pause/resume/cancel, and the
refusals (problems, a second send, an editor's operator action, a missing CSRF token)."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from datetime import UTC, datetime, time
from email import message_from_bytes, policy
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.desk_kit import add_user, csrf_of, login
from tests.samples import SAMPLE_EDITION
from tests.sendkit import seed
from tests.stub_worker import StubWorker
from worker.desk import drafts
from worker.devtools.outbox import OutboxServer
from worker.editions.files import EditionSource, read_edition
from worker.editions.store import find_edition, save_edition
from worker.models import DeskAction, Send
from worker.runtime import Runtime
from worker.sending.schedule import WeeklyTime
from worker.sending.slots import set_slot
from worker.states import SendStatus
from worker.web.app import create_app

KEY = "2024-W28"
PASSWORD = "correct horse battery"


def desk(rt: Runtime, role: str = "editor", name: str = "ales") -> TestClient:
    """A client logged in as a desk user ``name`` with ``role`` (address ``<name>@example.org``)."""
    add_user(rt, name, PASSWORD, role, f"{name}@example.org")
    client = TestClient(create_app(rt), client=("198.51.100.7", 40000))
    login(client, name, PASSWORD)
    return client


class _Form(HTMLParser):
    """The text inputs, hidden inputs and text areas of a page, by name."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.fields: dict[str, str] = {}
        self._area: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and a.get("type") in ("text", "hidden") and name:
            self.fields[name] = a.get("value") or ""
        elif tag == "textarea" and name:
            self._area = name
            self.fields[name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._area = None

    def handle_data(self, data: str) -> None:
        if self._area is not None:
            self.fields[self._area] += data


def form_of(html: str) -> dict[str, str]:
    """The edit form as a browser posts it (without its submit buttons)."""
    parser = _Form()
    parser.feed(html)
    return parser.fields


def actions(rt: Runtime) -> list[tuple[str, str, str]]:
    with rt.session() as session:
        rows = session.scalars(select(DeskAction).order_by(DeskAction.id))
        return [(r.user_name, r.action, r.subject) for r in rows]


def test_the_edit_page_shows_three_languages_side_by_side_and_saves(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}")
    assert page.status_code == 200
    for name in ("en.subject", "be.items[0].title", "ru.items[0].body", "period.start"):
        assert f'name="{name}"' in page.text
    assert '<label for="f-be-items-0-title">' in page.text
    form = form_of(page.text)
    assert form["be.items[0].title"].startswith("Кітай")
    # an error: saved, reported at its field, the send refused
    form["ru.items[0].title"] = ""
    saved = client.post(f"/desk/editions/{KEY}", data=form | {"save": "1"})
    assert saved.status_code == 200
    assert 'id="f-ru-items-0-title-error-1">is empty<' in saved.text
    assert 'aria-invalid="true" aria-describedby="f-ru-items-0-title-error-1' in saved.text
    refused = client.get(f"/desk/editions/{KEY}/send")
    assert "It cannot be sent: the edition has 1 problem" in refused.text
    # fixed
    form["ru.items[0].title"] = "Китай не поддержал"
    fixed = client.post(f"/desk/editions/{KEY}", data=form | {"save": "1"})
    assert "Saved. No problems" in fixed.text
    assert ("ales", "edition.save", KEY) in actions(rt)


def test_a_missing_item_is_shown_missing(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    form = form_of(client.get(f"/desk/editions/{KEY}").text)
    added = client.post(f"/desk/editions/{KEY}", data=form | {"add": "1"})
    assert added.status_code == 200
    assert added.text.count("— missing") == 3  # the new row, in every language
    assert "Row 2 has no article in any language: fill it in or remove it" in added.text
    assert 'href="#item-1"' in added.text and 'id="item-1"' in added.text  # the list links there
    # every missing cell offers the editor's decision
    assert added.text.count('name="be.items[1].absent"') == 1
    assert '<label for="f-be-items-1-absent">Not in Belarusian</label>' in added.text
    removed = client.post(f"/desk/editions/{KEY}", data=form_of(added.text) | {"remove": "1"})
    assert "— missing" not in removed.text and "Saved. No problems" in removed.text


def test_an_article_in_one_language_only_is_marked_not_in_the_others(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    client = desk(rt)
    form = form_of(client.get(f"/desk/editions/{KEY}").text)
    form["rows"] = "2"
    for name, value in (("title", "Только по-русски"), ("url", "https://example.org/ru/only"),
                        ("lead", "Лид."), ("body", "Текст.")):  # fmt: skip
        form[f"ru.items[1].{name}"] = value
    once = client.post(f"/desk/editions/{KEY}", data=form)
    # in the desk's words, linked as the screen names the place
    assert (
        "Russian has 2 articles, English 1 — mark the extra one as not in English, or add it"
        in once.text
    )
    assert '<a href="#item-1">Belarusian · article 2</a>: Article 2 is missing in Belarusian' in (
        once.text
    )
    assert "differs from en.yaml" not in once.text
    # the same in Belarusian
    be = client.get(f"/desk/editions/{KEY}?lang=be").text
    assert "Руская: артыкулаў 2; Англійская: 1" in be
    assert ">Беларуская · артыкул 2</a>" in be and "Няма на мове: Беларуская" in be
    client.get(f"/desk/editions/{KEY}?lang=en")
    decided = form_of(once.text) | {"en.items[1].absent": "1", "be.items[1].absent": "1"}
    saved = client.post(f"/desk/editions/{KEY}", data=decided)
    assert "Saved. No problems: the edition can be sent." in saved.text
    assert saved.text.count("— not in this language") == 2
    assert 'name="en.items[1].absent" value="1" checked' in saved.text
    preview = client.get(f"/desk/editions/{KEY}/preview").text
    assert preview.count("Только по-русски") >= 1
    english = client.get(f"/desk/editions/{KEY}/preview/en.html").text
    assert "Только по-русски" not in english


def test_a_problem_at_a_field_is_named_as_the_screen_names_it(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    form = form_of(client.get(f"/desk/editions/{KEY}").text)
    form["be.items[0].image.alt"] = ""
    page = client.post(f"/desk/editions/{KEY}", data=form).text
    assert (
        '<a href="#f-be-items-0-image-alt">Belarusian · article 1 · Image description (alt text)'
        "</a>: image without alt text"
    ) in page
    ru = client.get(f"/desk/editions/{KEY}?lang=ru").text
    assert ">Белорусский · статья 1 · " in ru


def test_a_post_without_the_csrf_token_changes_nothing(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    form = form_of(client.get(f"/desk/editions/{KEY}").text)
    form["en.subject"] = "Changed"
    for token in ("", "forged"):
        reply = client.post(f"/desk/editions/{KEY}", data=form | {"csrf": token})
        assert reply.status_code == 403
    with rt.session() as session:
        assert drafts.load_draft(session, KEY).texts["en"].subject != "Changed"


def test_unknown_editions_and_bad_forms_are_not_a_500(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    assert client.get("/desk/editions/nope").status_code == 404
    assert client.get("/desk/editions/nope/preview").status_code == 404
    assert client.get(f"/desk/editions/{KEY}/preview/xx.html").status_code == 404
    token = csrf_of(client.get(f"/desk/editions/{KEY}").text)
    assert (
        client.post(f"/desk/editions/{KEY}", data={"csrf": token, "rows": "x"}).status_code == 400
    )
    assert client.get("/desk/sends/0").status_code == 404
    assert client.get("/desk/sends/99999").status_code == 404


def test_the_preview_frames_the_real_renditions_under_a_strict_policy(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}/preview")
    assert page.status_code == 200
    assert "frame-src 'self'" in page.headers["content-security-policy"]
    for language in ("en", "be", "ru"):
        assert f'src="/desk/editions/{KEY}/preview/{language}.html"' in page.text
    assert "% of the 102 KB at which Gmail clips" in page.text
    # the text part, with sample links where each reader's own will be
    assert "%%" not in page.text
    assert f"{rt.settings.public_url.rstrip('/')}/u/sample-reader" in page.text
    assert f"{rt.settings.public_url.rstrip('/')}/p/sample-reader" in page.text
    frame = client.get(f"/desk/editions/{KEY}/preview/be.html")
    assert frame.status_code == 200 and '<html lang="be"' in frame.text
    policy_header = frame.headers["content-security-policy"]
    assert "sandbox" in policy_header and "script" not in policy_header
    assert "frame-ancestors 'self'" in policy_header
    # the frame needs a login too
    assert (
        TestClient(create_app(rt))
        .get(f"/desk/editions/{KEY}/preview/be.html", follow_redirects=False)
        .status_code
        == 303
    )


def test_a_test_send_goes_to_the_users_own_address_in_every_language(
    rt: Runtime, smtp: OutboxServer
) -> None:
    seed(rt, ["reader@example.org"])
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}/test")
    assert "ales@example.org" in page.text
    sent = client.post(
        f"/desk/editions/{KEY}/test", data={"csrf": csrf_of(page.text), "language": "all"}
    )
    assert sent.status_code == 200 and sent.text.count(": 250") == 3
    received = smtp.handler.received
    assert [r.recipients for r in received] == [["ales@example.org"]] * 3
    languages = [
        message_from_bytes(r.data, policy=policy.default)["Content-Language"] for r in received
    ]
    assert languages == ["en", "be", "ru"]
    assert ("ales", "edition.test", KEY) in actions(rt)
    # no send, no delivery: nobody else got anything
    with rt.session() as session:
        assert session.scalars(select(Send)).all() == []


def test_schedule_then_confirm_then_progress(rt: Runtime) -> None:
    seed(rt, [f"be{n}@example.org" for n in range(3)], language="be")
    seed(rt, ["en@example.org"], language="en")
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}/send")
    assert "4 readers: 3 be, 1 en," in page.text
    token = csrf_of(page.text)
    review = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "review", "when": "later", "date": "2099-07-13",
              "time": "09:00"},
    )  # fmt: skip
    assert review.status_code == 200
    assert "4 readers: 3 be, 1 en, Monday 13 July 09:00 UTC" in review.text
    assert 'name="step" value="confirm"' in review.text
    with rt.session() as session:
        assert session.scalars(select(Send)).all() == []  # nothing yet: one more click
    done = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "later", "date": "2099-07-13",
              "time": "09:00"},
        follow_redirects=False,
    )  # fmt: skip
    assert done.status_code == 303
    with rt.session() as session:
        [send] = session.scalars(select(Send)).all()
        assert send.status == SendStatus.SCHEDULED
        assert send.scheduled_for == datetime(2099, 7, 13, 9, 0, tzinfo=UTC)
    assert done.headers["location"] == f"/desk/sends/{send.id}?scheduled=1"
    progress = client.get(done.headers["location"])
    assert progress.status_code == 200 and "scheduled" in progress.text
    # said plainly: local time first, UTC second; the readers it would go to, not "0 of 0"
    assert '<p class="ok" role="status" id="scheduled">Scheduled: Monday 13 July 09:00 UTC</p>' in (
        progress.text
    )
    assert "due Monday 13 July 09:00 UTC" in progress.text
    assert "4 readers would receive it now; the list is taken when the send starts." in (
        progress.text
    )
    assert "0 of 0 done" not in progress.text and "Deliveries by state" not in progress.text
    assert '<meta http-equiv="refresh"' in progress.text
    assert "Operator actions" not in progress.text  # an editor sees no pause/cancel
    # a second send is refused, saying why
    again = client.get(f"/desk/editions/{KEY}/send")
    assert f"send {send.id} already sent it" in again.text
    second = client.post(
        f"/desk/editions/{KEY}/send", data={"csrf": token, "step": "confirm", "when": "now"}
    )
    assert second.status_code == 400 and "was already sent by send" in second.text
    assert ("ales", "send.schedule", KEY) in actions(rt)
    assert f"/desk/sends/{send.id}" in client.get("/desk/sends").text


def test_the_send_page_preselects_later_at_the_next_monday_and_says_the_slot_is_off(
    rt: Runtime,
) -> None:
    seed(rt, ["a@example.org"])
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}/send").text
    monday = WeeklyTime(0, time(9, 0)).next_after(rt.clock.now(), "UTC")
    assert monday.weekday() == 0 and monday > rt.clock.now()
    assert 'id="when-later" name="when" value="later" checked' in page
    assert 'id="when-now" name="when" value="now">' in page  # not checked: a deliberate choice
    assert f'id="date" name="date" min="{rt.clock.now().date()}" value="{monday.date()}"' in page
    assert 'id="time" name="time" value="09:00"' in page
    assert "Weekly slot: off." in page
    # the suggested date posted with "Now" chosen is no date of the editor's: sent now
    token = csrf_of(page)
    now = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "review", "when": "now", "date": str(monday.date()),
              "time": "09:00", "suggested": str(monday.date())},
    )  # fmt: skip
    assert now.status_code == 200 and "Send it now" in now.text


def test_the_send_page_shows_the_weekly_slot_and_suggests_its_next_time(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    now = rt.clock.now()
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        set_slot(session, edition.newsletter_id, WeeklyTime.parse("monday 09:00"),
                 "Europe/Minsk", now)  # fmt: skip
    client = desk(rt)
    page = client.get(f"/desk/editions/{KEY}/send").text
    due = WeeklyTime(0, time(9, 0)).next_after(now, "Europe/Minsk")
    local = due.astimezone(ZoneInfo("Europe/Minsk"))
    words = f"Monday {local.day} {local:%B} 09:00 Minsk time (06:00 UTC)"
    assert (
        f"Weekly slot: on, every Monday at 09:00 (Europe/Minsk). Next: {words}. It would send "
        f"{KEY}, the newest edition not sent yet."
    ) in page
    assert f'value="{local.date()}"' in page and f"Suggested: {words}." in page
    token = csrf_of(page)
    review = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "review", "when": "later", "date": str(local.date()),
              "time": "09:00"},
    )  # fmt: skip
    assert f"1 reader: 1 en, Monday {local.day} {local:%B} 09:00 Minsk time (06:00 UTC)" in (
        review.text
    )
    assert "The list of readers is taken when the send starts" in review.text
    done = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "later", "date": str(local.date()),
              "time": "09:00"},
    )  # fmt: skip
    assert f"Scheduled: {words}" in done.text and f"due {words}" in done.text
    listed = client.get("/desk/sends").text
    assert f"<td>{words}</td>" in listed  # the list: local time first
    assert "<td>counted when it starts</td>" in listed and "0 / 0" not in listed
    home = client.get("/desk/").text
    assert f"scheduled ({words})" in home and "<td>counted when it starts</td>" in home


def test_an_editor_unschedules_a_send_that_has_not_started_and_may_edit_again(
    rt: Runtime,
) -> None:
    seed(rt, ["a@example.org"])
    editor = desk(rt)
    token = csrf_of(editor.get(f"/desk/editions/{KEY}/send").text)
    editor.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "later", "date": "2099-07-13",
              "time": "09:00"},
    )  # fmt: skip
    with rt.session() as session:
        send_id = session.scalars(select(Send.id)).one()
    page = editor.get(f"/desk/sends/{send_id}").text
    assert f'action="/desk/sends/{send_id}/unschedule"' in page
    locked = editor.get(f"/desk/editions/{KEY}").text
    assert "This edition has a send" in locked and "can be unscheduled on its page" in locked
    done = editor.post(
        f"/desk/sends/{send_id}/unschedule", data={"csrf": token}, follow_redirects=False
    )
    assert done.status_code == 303 and done.headers["location"].startswith(f"/desk/editions/{KEY}")
    with rt.session() as session:
        assert session.get(Send, send_id).status == SendStatus.CANCELLED  # type: ignore[union-attr]
    assert ("ales", "send.unschedule", str(send_id)) in actions(rt)
    edit = editor.get(done.headers["location"]).text
    assert "This edition has a send" not in edit and 'name="save"' in edit
    assert "Unscheduled: the edition can change again." in edit
    # a send that has started is the operators' to cancel
    token = csrf_of(editor.get(f"/desk/editions/{KEY}/send").text)
    editor.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "later", "date": "2099-07-13",
              "time": "09:00"},
    )  # fmt: skip
    with rt.session() as session:
        second = session.scalars(select(Send.id).where(Send.id != send_id)).one()
        session.execute(update(Send).where(Send.id == second).values(status=SendStatus.SENDING))
    refused = editor.post(f"/desk/sends/{second}/unschedule", data={"csrf": token})
    assert refused.status_code == 409 and "only an operator may cancel it" in refused.text
    with rt.session() as session:
        assert session.get(Send, second).status == SendStatus.SENDING  # type: ignore[union-attr]


def test_a_time_in_the_past_or_that_does_not_exist_is_refused(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    token = csrf_of(client.get(f"/desk/editions/{KEY}/send").text)
    for date, hour, says in (
        ("2001-01-01", "09:00", "is in the past"),
        ("2099-13-01", "09:00", "expected YYYY-MM-DD HH:MM"),
    ):
        reply = client.post(
            f"/desk/editions/{KEY}/send",
            data={"csrf": token, "step": "review", "when": "later", "date": date, "time": hour},
        )
        assert reply.status_code == 400 and says in reply.text


def test_an_editor_may_not_pause_or_cancel_an_operator_may(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    editor = desk(rt)
    token = csrf_of(editor.get(f"/desk/editions/{KEY}/send").text)
    editor.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "later", "date": "2099-07-13",
              "time": "09:00"},
    )  # fmt: skip
    with rt.session() as session:
        send_id = session.scalars(select(Send.id)).one()
    for action in ("pause", "resume", "cancel"):
        reply = editor.post(f"/desk/sends/{send_id}/{action}", data={"csrf": token})
        assert reply.status_code == 403 and "Only operators" in reply.text
    operator = desk(rt, "operator", "olga")
    page = operator.get(f"/desk/sends/{send_id}")
    assert "Operator actions" in page.text
    cancelled = operator.post(
        f"/desk/sends/{send_id}/cancel", data={"csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert cancelled.status_code == 303
    with rt.session() as session:
        assert session.get(Send, send_id).status == SendStatus.CANCELLED  # type: ignore[union-attr]
    assert ("olga", "send.cancel", str(send_id)) in actions(rt)
    # cancelled before it started: the edition may be sent (and edited) again
    assert "It cannot be sent again" not in editor.get(f"/desk/editions/{KEY}/send").text


def test_send_now_after_the_confirmation_mails_every_confirmed_reader_once(
    rt: Runtime, smtp: OutboxServer, stub_worker: StubWorker
) -> None:
    seed(rt, ["a@example.org", "b@example.org"], language="ru")
    seed(rt, ["c@example.org"], language="de")  # no German: gets the default, English
    client = desk(rt)
    token = csrf_of(client.get(f"/desk/editions/{KEY}/send").text)
    review = client.post(
        f"/desk/editions/{KEY}/send", data={"csrf": token, "step": "review", "when": "now"}
    )
    assert "3 readers: 2 ru, 1 en," in review.text and "Send it now" in review.text
    done = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": token, "step": "confirm", "when": "now"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    stub_worker.join()
    got = sorted(
        (r.recipients[0], message_from_bytes(r.data, policy=policy.default)["Content-Language"])
        for r in smtp.handler.received
    )
    assert got == [("a@example.org", "ru"), ("b@example.org", "ru"), ("c@example.org", "en")]
    assert "finished" in client.get(done.headers["location"]).text
    assert ("ales", "send.start", KEY) in actions(rt)


def test_an_edition_stored_unchecked_shows_its_problems_and_is_not_sent(rt: Runtime) -> None:
    # Given an edition stored as a start does it, without the folder's checks: empty in Russian
    seed(rt, ["a@example.org"])
    source = read_edition(SAMPLE_EDITION)
    empty_ru = dataclasses.replace(source.contents["ru"], subject="", items=())
    contents = {**source.contents, "ru": empty_ru}
    with rt.session() as session:
        save_edition(session, EditionSource(source.newsletter, contents), rt.clock.now())
    client = desk(rt)
    # Then the desk finds its problems although none were stored, and refuses to send it
    page = client.get(f"/desk/editions/{KEY}")
    assert "expected a non-empty list of items" in page.text
    send_page = client.get(f"/desk/editions/{KEY}/send")
    assert "It cannot be sent: the edition has" in send_page.text
    reply = client.post(
        f"/desk/editions/{KEY}/send",
        data={"csrf": csrf_of(send_page.text), "step": "confirm", "when": "now"},
    )
    assert reply.status_code == 400 and "The edition has problems" in reply.text
    with rt.session() as session:
        assert session.scalars(select(Send)).all() == []


def test_a_date_typed_with_now_chosen_is_asked_about_not_guessed(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    token = csrf_of(client.get(f"/desk/editions/{KEY}/send").text)
    for when, date, says in (
        ("now", "2099-07-13", "You typed a date (2099-07-13) but chose Now"),
        ("later", "", "Choose the date and time of the send."),
    ):
        reply = client.post(
            f"/desk/editions/{KEY}/send",
            data={"csrf": token, "step": "review", "when": when, "date": date, "time": "09:00"},
        )
        assert reply.status_code == 400 and says in reply.text
        assert 'name="step" value="confirm"' not in reply.text


def test_the_edition_downloads_as_the_zip_edition_load_reads(rt: Runtime, tmp_path: Path) -> None:
    seed(rt, [])
    client = desk(rt)
    reply = client.get(f"/desk/editions/{KEY}/export")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    assert reply.headers["content-disposition"] == f'attachment; filename="{KEY}.zip"'
    with zipfile.ZipFile(io.BytesIO(reply.content)) as bundle:
        bundle.extractall(tmp_path)
    [folder] = [p.parent for p in tmp_path.rglob("newsletter.yaml")]
    assert read_edition(folder).contents == read_edition(SAMPLE_EDITION).contents
    assert ("ales", "edition.export", KEY) in actions(rt)
    assert client.get("/desk/editions/nope/export").status_code == 404


def test_refusals_are_worded_in_the_desk_language(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    token = csrf_of(client.get(f"/desk/editions/{KEY}/send").text)
    reply = client.post(
        f"/desk/editions/{KEY}/send?lang=ru",
        data={"csrf": token, "step": "review", "when": "later", "date": "", "time": "09:00"},
    )
    assert "Выберите дату и время рассылки." in reply.text
    reply = client.post(
        f"/desk/editions/{KEY}/test?lang=be", data={"csrf": token, "language": "xx"}
    )
    assert reply.status_code == 400 and "Выберыце мову выпуску або ўсе мовы." in reply.text


def test_odd_characters_in_a_field_are_a_problem_at_the_field_never_a_500(rt: Runtime) -> None:
    seed(rt, [])
    client = desk(rt)
    form = form_of(client.get(f"/desk/editions/{KEY}").text)
    for odd in ("a\x00b", "line\x1bescape", "tab\there", "x" * 20_000):
        reply = client.post(f"/desk/editions/{KEY}", data=form | {"en.subject": odd})
        assert reply.status_code == 200, (odd[:10], reply.text[:300])
    reply = client.post(f"/desk/editions/{KEY}", data=form | {"en.subject": "a\x00b"})
    assert "Saved. No problems" not in reply.text
