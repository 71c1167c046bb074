"""The desk's domain blocks (worker/desk/): drafts side by side, send plans, past sends, previews.

Each runs on SQLite and PostgreSQL (the ``rt`` fixture) with the sample edition stored as
``newsletter edition load`` stores it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.samples import SAMPLE_EDITION
from tests.sendkit import seed, start_send
from worker.cli import main
from worker.desk import drafts, history, plans, previews
from worker.desk.drafts import MISSING, FieldProblem
from worker.devtools.outbox import OutboxServer
from worker.editions.files import check_edition, read_edition
from worker.editions.rendering import RenderedMessage
from worker.editions.store import (
    EditionLocked,
    edition_contents,
    find_edition,
    profile_of,
    save_newsletter,
    stored_problems,
)
from worker.editions.writing import write_edition
from worker.models import EditionContentRow, Newsletter, Send
from worker.runtime import Runtime
from worker.sending.proofs import ProofSetup, proof_message, send_proof
from worker.sending.schedule import WeeklyTime
from worker.sending.sends import DuplicateSend, EditionHasProblems, Repeat, When, create_send
from worker.sending.slots import fire_due_slots, set_slot
from worker.sending.smtp import SmtpMailer
from worker.subscriptions.addresses import parse_address

KEY = "2024-W28"
NOW = datetime(2024, 7, 12, 10, 0, tzinfo=UTC)


def _form(draft: drafts.Draft) -> dict[str, str]:
    """The edit form as the page posts it, filled with ``draft``'s values."""
    form = {
        "rows": str(draft.row_count),
        "period.start": draft.period_start,
        "period.end": draft.period_end,
    }
    for language, text in draft.texts.items():
        form[f"{language}.subject"] = text.subject
        form[f"{language}.preheader"] = text.preheader
    for row, cells in enumerate(draft.rows()):
        for language, cell in cells.items():
            for name in drafts.ITEM_FIELDS:
                form[drafts.field_name(language, row, name)] = cell[name] if cell else ""
    return form


def _three_rows(rt: Runtime) -> dict[str, str]:
    """Store the sample edition with its one item copied into rows 2 and 3 (new titles and
    links); returns the form of that edition."""
    seed(rt, [])
    with rt.session() as session:
        form = _form(drafts.load_draft(session, KEY))
    form["rows"] = "3"
    for row in (1, 2):
        for language in ("en", "be", "ru"):
            for name in drafts.ITEM_FIELDS:
                form[drafts.field_name(language, row, name)] = form[
                    drafts.field_name(language, 0, name)
                ]
            form[f"{language}.items[{row}].title"] = f"Item {row + 1} ({language})"
            form[f"{language}.items[{row}].url"] = f"https://example.org/{language}/{row}"
    assert _save(rt, form).problems == ()
    return form


def _save(rt: Runtime, form: dict[str, str]) -> drafts.Draft:
    with rt.session() as session:
        draft = drafts.draft_from_form(drafts.load_draft(session, KEY), form)
        saved = drafts.save_draft(session, draft, NOW, rt.settings.public_url)
        session.commit()
    return saved


# --- drafts ------------------------------------------------------------------------------------


def test_a_stored_edition_reads_as_rows_of_three_languages(rt: Runtime) -> None:
    seed(rt, [])
    source = read_edition(SAMPLE_EDITION)
    with rt.session() as session:
        draft = drafts.load_draft(session, KEY)
    assert draft.languages == ("en", "be", "ru")
    assert draft.row_count == len(source.contents["en"].items)
    first = draft.rows()[0]
    assert first["be"] is not MISSING
    assert first["be"]["title"] == source.contents["be"].items[0].title
    assert draft.texts["ru"].subject == source.contents["ru"].subject
    assert draft.period_start == "2024-07-08" and draft.sendable and not draft.locked


def _with_feeds_and_zone(rt: Runtime) -> None:
    """Give the stored newsletter feeds and a time zone (newsletter.yaml ``feeds:``,
    ``timezone:``)."""
    with rt.session() as session:
        newsletter = session.scalars(select(Newsletter)).one()
        profile = dataclasses.replace(
            profile_of(newsletter),
            feeds={"en": "https://example.org/en/feed.xml", "be": "https://example.org/be/feed"},
            timezone="Europe/Minsk",
        )
        save_newsletter(session, profile, rt.clock.now())


def test_saving_an_unchanged_form_stores_exactly_what_edition_load_stored(rt: Runtime) -> None:
    seed(rt, [])
    _with_feeds_and_zone(rt)
    with rt.session() as session:
        before = {r.language: r.data for r in session.scalars(select(EditionContentRow))}
        profile = session.scalars(select(Newsletter)).one().profile
        form = _form(drafts.load_draft(session, KEY))
    saved = _save(rt, form)
    assert saved.problems == ()
    with rt.session() as session:
        after = {r.language: r.data for r in session.scalars(select(EditionContentRow))}
        # the newsletter's profile (feeds and time zone too) is written back unchanged
        assert session.scalars(select(Newsletter)).one().profile == profile
    assert after == before


def test_an_error_is_reported_at_its_field_and_the_draft_is_kept_but_not_sendable(
    rt: Runtime,
) -> None:
    form = _three_rows(rt)
    form["be.items[1].title"] = ""
    form["ru.items[0].url"] = "example.org/no-scheme"
    form["en.subject"] = "A new subject the editor typed"
    saved = _save(rt, form)
    assert saved.problems_of("be.items[1].title") == ["is empty"]
    assert saved.problems_of("ru.items[0].url") == [
        "bad URL 'example.org/no-scheme': must start with https:// (or http://)"
    ]
    assert not saved.sendable
    # the editor's work is stored as typed
    assert saved.texts["en"].subject == "A new subject the editor typed"
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        assert len(stored_problems(session, edition)) == 2
        # still readable by every reader of stored editions
        assert edition_contents(session, edition)["en"].subject == "A new subject the editor typed"
        with pytest.raises(EditionHasProblems, match="2 problems"):
            create_send(session, edition, NOW)
    # fixed: sendable again
    form["be.items[1].title"] = "Загаловак"
    form["ru.items[0].url"] = "https://example.org/ru/fixed"
    fixed = _save(rt, form)
    assert fixed.problems == () and fixed.sendable
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        assert stored_problems(session, edition) == []
        assert edition_contents(session, edition)["be"].items[1].title == "Загаловак"


def test_an_item_missing_in_one_language_is_shown_missing_not_dropped(rt: Runtime) -> None:
    form = _three_rows(rt)
    for name in drafts.ITEM_FIELDS:
        form[drafts.field_name("ru", 1, name)] = ""
    saved = _save(rt, form)
    assert saved.rows()[1]["ru"] is MISSING
    assert saved.rows()[2]["ru"] is not MISSING  # the rows after it keep their place
    assert saved.problems_of("ru.items[1].item") == [
        "article 2 is missing in ru: write it, mark it as not in ru, or remove the row"
    ]
    # the count in the desk's words, not the file check's ("differs from en.yaml")
    assert saved.problems_of("ru") == [
        "en has 3 articles, ru 2 — mark the extra one as not in ru, or add it"
    ]
    (count,) = saved.problems_at("ru")
    assert count.code == "count" and count.values == {
        "more": "en", "more_count": "3", "count": "2", "extra": "1"
    }  # fmt: skip
    # reloaded from the database: still missing at the same row
    with rt.session() as session:
        again = drafts.load_draft(session, KEY)
    assert again.rows()[1]["ru"] is MISSING and again.rows()[2]["ru"] is not MISSING
    assert again.problems_at("ru")[0].code == "count"


def test_an_article_marked_not_in_a_language_is_sendable_and_left_out_of_its_mail(
    rt: Runtime, tmp_path: Path
) -> None:
    form = _three_rows(rt)
    for language in ("en", "be"):  # row 2 is a Russian-only article
        for name in drafts.ITEM_FIELDS:
            form[drafts.field_name(language, 1, name)] = ""
    # one decision only: be stays a problem
    form["en.items[1].absent"] = "1"
    half = _save(rt, form)
    assert half.rows()[1]["en"] is drafts.ABSENT and half.rows()[1]["be"] is MISSING
    assert [(p.code, p.language, p.row) for p in half.problems] == [
        ("count", "be", None), ("missing", "be", 1)
    ]  # fmt: skip
    with rt.session() as session:  # stored with its problems: the decision is kept
        assert drafts.load_draft(session, KEY).rows()[1]["en"] is drafts.ABSENT
    form["be.items[1].absent"] = "1"
    saved = _save(rt, form)
    assert saved.problems == () and saved.sendable
    rows = saved.rows()
    assert [rows[1][language] is drafts.ABSENT for language in ("en", "be", "ru")] == [
        True, True, False
    ]  # fmt: skip
    assert rows[2]["en"] is not None and rows[2]["en"]["title"] == "Item 3 (en)"  # aligned
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        contents = edition_contents(session, edition)
        assert contents["en"].absent == (1,) and contents["ru"].absent == ()
        assert [item.title for item in contents["ru"].items][1:] == ["Item 2 (ru)", "Item 3 (ru)"]
        assert len(contents["en"].items) == 2
        newsletter = session.get(Newsletter, edition.newsletter_id)
        assert newsletter is not None
        profile = profile_of(newsletter)
        rendered = previews.previews(session, edition, "https://news.example.org")
    assert "Item 2 (ru)" in rendered["ru"].html
    assert "Item 3 (en)" in rendered["en"].html and "Item 2 (en)" not in rendered["en"].html
    # the folder written back (what `edition export` writes) says so, and the check accepts it
    folder = tmp_path / "out"
    write_edition(folder, profile, contents)
    assert "- absent: true" in (folder / "en.yaml").read_text("utf-8")
    assert check_edition(folder) == []


def test_removing_a_row_removes_it_in_every_language_and_stays_valid(rt: Runtime) -> None:
    _three_rows(rt)
    with rt.session() as session:
        before = drafts.load_draft(session, KEY)
    form = _form(before) | {"remove": "0"}
    saved = _save(rt, form)
    assert saved.row_count == before.row_count - 1 and saved.sendable
    second = before.rows()[1]["be"]
    assert second is not None and saved.rows()[0]["be"] == second


def test_a_period_that_is_not_a_date_is_kept_as_typed(rt: Runtime) -> None:
    seed(rt, [])
    with rt.session() as session:
        form = _form(drafts.load_draft(session, KEY))
    form["period.end"] = "2024-07-32"
    saved = _save(rt, form)
    assert saved.period_end == "2024-07-32"
    assert saved.problems_of("period.end") == ["expected a date like 2024-07-08, got '2024-07-32'"]


def test_an_edition_with_a_send_cannot_change(rt: Runtime) -> None:
    seed(rt, [])
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        create_send(session, edition, NOW)
        session.commit()
        draft = drafts.load_draft(session, KEY)
        assert draft.locked
        with pytest.raises(EditionLocked):
            drafts.save_draft(session, draft, NOW, rt.settings.public_url)


def test_a_slot_skips_an_edition_with_problems_instead_of_failing(rt: Runtime) -> None:
    newsletter_id = seed(rt, [])
    with rt.session() as session:
        form = _form(drafts.load_draft(session, KEY))
    form["en.subject"] = ""
    _save(rt, form)
    with rt.session() as session:
        set_slot(session, newsletter_id, WeeklyTime.parse("monday 09:00"), "Europe/Minsk", NOW)
        session.commit()
        fired = fire_due_slots(session, datetime(2024, 7, 15, 7, 0, tzinfo=UTC), 10)
        assert [f.send_id for f in fired] == [None]
        assert session.scalars(select(Send)).all() == []


def test_field_problem_names_point_at_form_fields() -> None:
    assert FieldProblem("be", 2, "image.alt", "x").name == "be.items[2].image.alt"
    assert FieldProblem("en", None, "subject", "x").name == "en.subject"
    assert FieldProblem(None, None, "period.end", "x").name == "period.end"
    assert FieldProblem("ru", None, "items", "x").name == "ru"


def test_a_forged_row_count_is_refused_with_the_field() -> None:
    draft = drafts.Draft("k", ("en",), "en", "", "", {})
    with pytest.raises(drafts.FormError, match="rows: 100000"):
        drafts.draft_from_form(draft, {"rows": "100000"})
    with pytest.raises(drafts.FormError, match="is not a number"):
        drafts.draft_from_form(draft, {"rows": "x"})


# --- plans -------------------------------------------------------------------------------------


def test_the_plan_counts_readers_as_the_send_will_plan_them(rt: Runtime) -> None:
    seed(rt, [f"be{n}@example.org" for n in range(5)], language="be")
    seed(rt, [f"ru{n}@example.org" for n in range(3)], language="ru")
    seed(rt, [f"en{n}@example.org" for n in range(2)], language="en")
    seed(rt, [f"uk{n}@example.org" for n in range(4)], language="uk")  # gets the default, en
    seed(rt, ["pending@example.org"], language="be", status="pending")
    at = datetime(2024, 7, 15, 6, 0, tzinfo=UTC)
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        plan = plans.plan(session, edition, at=at, zone_name="Europe/Minsk")
    assert plan.readers == (("en", 6), ("be", 5), ("ru", 3)) and plan.total == 14
    assert not plan.refused
    assert plans.sentence(plan, "en", NOW) == (
        "14 readers: 6 en, 5 be, 3 ru, Monday 15 July 09:00 Minsk time (06:00 UTC)"
    )
    assert plans.sentence(plan, "ru", NOW) == (
        "14 читателей: 6 en, 5 be, 3 ru, понедельник 15 июля 09:00, время: Минск (06:00 UTC)"
    )
    assert plans.sentence(plan, "be", NOW) == (
        "14 чытачоў: 6 en, 5 be, 3 ru, панядзелак 15 ліпеня 09:00, час: Мінск (06:00 UTC)"
    )
    # and the send plans exactly that many
    send_id = start_send(rt)
    with rt.session() as session:
        send = session.get(Send, send_id)
        assert send is not None and send.planned_count == 14


def test_big_numbers_are_grouped_in_the_desk_language(rt: Runtime) -> None:
    plan = plans.Plan(KEY, (("be", 5210), ("ru", 4100), ("en", 3035)), NOW, "UTC", False, (), 0)
    assert plans.sentence(plan, "en", NOW) == (
        "12,345 readers: 5,210 be, 4,100 ru, 3,035 en, Friday 12 July 10:00 UTC"
    )
    assert plans.sentence(plan, "ru", NOW).startswith("12\xa0345 читателей: 5\xa0210 be")


def test_the_plan_says_a_second_send_is_refused_as_the_cli_does(rt: Runtime) -> None:
    seed(rt, ["a@example.org"])
    send_id = start_send(rt)
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        plan = plans.plan(session, edition)
        assert plan.earlier == (send_id,) and plan.refused
        assert not plans.plan(session, edition, repeat=Repeat.ONLY_NEW).refused
        assert plans.plan(session, edition, repeat=Repeat.ONLY_NEW).total == 0
        with pytest.raises(DuplicateSend):
            create_send(session, edition, NOW)


def test_the_newsletter_zone_is_its_own_else_the_weekly_slots(rt: Runtime) -> None:
    newsletter_id = seed(rt, [])
    with rt.session() as session:
        assert plans.newsletter_zone(session, newsletter_id) == "UTC"
        set_slot(session, newsletter_id, WeeklyTime.parse("monday 09:00"), "Europe/Vilnius", NOW)
        assert plans.newsletter_zone(session, newsletter_id) == "Europe/Vilnius"
    _with_feeds_and_zone(rt)
    with rt.session() as session:
        assert plans.newsletter_zone(session, newsletter_id) == "Europe/Minsk"


# --- history and previews ------------------------------------------------------------------------


def test_past_sends_and_progress_are_the_dashboards_numbers(rt: Runtime) -> None:
    seed(rt, ["a@example.org", "b@gmail.com"], language="be")
    send_id = start_send(rt)
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        later = create_send(
            session,
            edition,
            rt.clock.now(),
            repeat=Repeat.AGAIN,
            when=When(datetime(2100, 1, 1, tzinfo=UTC), "Europe/Minsk"),
        )
        session.commit()
        listed = history.past_sends(session)
        assert [p.summary.id for p in listed] == [later.id, send_id]
        assert listed[0].timezone == "Europe/Minsk" and listed[1].summary.states == {"queued": 2}
        progress = history.progress(session, send_id, rt.clock.now())
        assert progress is not None
        assert progress.planned == 2 and progress.done == 0 and progress.live
        assert [lang for lang, _ in progress.report.by_language] == ["be"]
        assert {domain for domain, _ in progress.report.by_domain} == {"gmail.com", "other"}
        assert history.progress(session, 999_999, rt.clock.now()) is None


def test_previews_are_the_real_renditions_with_inbox_line_and_size(rt: Runtime) -> None:
    seed(rt, [])
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        shown = previews.previews(session, edition, rt.settings.public_url)
        stored = edition_contents(session, edition)
    assert list(shown) == ["en", "be", "ru"]
    be = shown["be"]
    assert be.error is None and be.subject == stored["be"].subject
    assert "<html" in be.html and stored["be"].items[0].title in " ".join(be.text.split())
    assert be.html_bytes == len(be.html.encode()) and be.encoded_bytes > be.html_bytes
    assert not be.clipped and 0 < be.percent_of_limit < 100
    assert be.inbox.desktop.startswith(be.subject)
    assert len(be.inbox.desktop) <= previews.DESKTOP_LINE


def test_the_inbox_line_cuts_like_a_list_does() -> None:
    line = previews.inbox_line("Weekly", "S" * 30, "word " * 40)
    assert line.desktop.startswith("S" * 30 + " – word") and line.desktop.endswith("…")
    assert len(line.desktop) <= previews.DESKTOP_LINE
    assert len(line.phone_preheader) <= previews.PHONE_PREHEADER
    assert previews.cut("short", 10) == "short"


# --- proof copies (the desk's test-send and `newsletter edition test-send`) -----------------------


def test_edition_test_send_mails_one_proof_in_the_language_asked(
    smtp: OutboxServer, tmp_path: Path
) -> None:
    env = {
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
    }
    args = ["edition", "test-send", str(SAMPLE_EDITION), "--to", "Editor@Example.org"]
    result = CliRunner().invoke(main, [*args, "--lang", "ru"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "test copy (ru) sent to Editor@Example.org: 250" in result.output
    [received] = smtp.handler.received
    message = message_from_bytes(received.data, policy=policy.default)
    assert received.recipients == ["Editor@example.org"]  # the domain is normalised
    assert received.envelope_from.startswith("bounces@")
    assert message["Content-Language"] == "ru"
    assert message["Subject"] == read_edition(SAMPLE_EDITION).contents["ru"].subject
    assert "http://127.0.0.1:8000/u/test-copy" in message["List-Unsubscribe"]
    # both parts begin by saying what it is, in the copy's language
    note = "Тестовая копия — ссылки на настройки и отписку в ней не работают"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert text.splitlines()[:2] == [note, ""]
    body_at = html.index("<body")
    assert html.index(note) > body_at
    assert html.index(note) < html.index(read_edition(SAMPLE_EDITION).contents["ru"].items[0].title)


def test_a_proof_is_the_stored_rendition_to_the_editor(rt: Runtime, smtp: OutboxServer) -> None:
    seed(rt, [])
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        shown = previews.previews(session, edition, rt.settings.public_url)
    setup = ProofSetup("weekly", "news.example.org", "http://testserver", "news.example.org")
    profile = read_edition(SAMPLE_EDITION).newsletter
    to = parse_address("editor@example.org")
    rendered = RenderedMessage(
        shown["be"].subject, shown["be"].preheader, shown["be"].html, shown["be"].text, "be"
    )
    message = proof_message(setup, profile, KEY, "be", rendered, to, NOW)
    mailer = SmtpMailer(rt.settings.smtp_url, timeout=10)
    outcome = send_proof(setup, mailer, to, message)
    mailer.close()
    assert outcome.accepted
    [received] = smtp.handler.received
    parsed = message_from_bytes(received.data, policy=policy.default)
    assert parsed["Subject"] == shown["be"].subject and parsed["Content-Language"] == "be"
    assert "X-Newsletter-Delivery" not in parsed  # a proof is nobody's delivery
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.splitlines()[0] == (
        "Тэставая копія — спасылкі на налады і адпіску ў ёй не працуюць"
    )
    assert "%%" not in text and "http://testserver/p/test-copy" in text


def test_a_long_edition_is_flagged_against_gmails_clipping(rt: Runtime) -> None:
    seed(rt, [])
    with rt.session() as session:
        form = _form(drafts.load_draft(session, KEY))
    form["en.items[0].body"] = "A sentence of the analysis, long enough. " * 2600  # ~104 KB
    saved = _save(rt, form)
    assert saved.sendable  # clipping is a warning, as in `edition check`, not a problem
    assert any("Gmail clips" in warning for warning in saved.warnings["en"])
    with rt.session() as session:
        edition = find_edition(session, KEY)
        assert edition is not None
        shown = previews.previews(session, edition, rt.settings.public_url)
    assert shown["en"].near_clipping and shown["en"].clipped
    assert not shown["be"].near_clipping
