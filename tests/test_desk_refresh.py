"""An edition started at the desk is stored with its problems (so ``newsletter send start`` refuses
it too), and an edition not yet sent is refreshed from the feeds (worker/desk/starts.py,
``POST /desk/editions/{key}/refresh``), over real HTTP from the local feed server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.desk_kit import add_user, csrf_of, login
from tests.feed_server import feed_server
from tests.sendkit import seed
from worker.desk import drafts
from worker.desk.starts import refresh_from_feeds, store_checked
from worker.editions.feeds import Fetcher, fetch_feed
from worker.editions.files import read_newsletter_profile
from worker.editions.starts import start_from_feeds
from worker.editions.store import (
    EditionLocked,
    edition_contents,
    find_edition,
    get_newsletter,
    profile_of,
    save_newsletter,
    stored_problems,
)
from worker.models import DeskAction
from worker.runtime import Runtime
from worker.sending.sends import EditionHasProblems, create_send
from worker.web.app import create_app

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
WEEK = (date(2026, 11, 30), date(2026, 12, 6))
THURSDAY = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with feed_server() as base:
        yield base


def newsletter(rt: Runtime, site: str) -> None:
    """The sample newsletter in Minsk time with three feeds: a JSON Feed (en), a WordPress feed
    whose excerpts repeat the article (be), a WordPress feed (ru)."""
    profile = replace(
        read_newsletter_profile(SAMPLE / "newsletter.yaml"),
        timezone="Europe/Minsk",
        feeds={
            "en": f"{site}/feed.json",
            "be": f"{site}/be/feed/excerpts/",
            "ru": f"{site}/ru/feed/",
        },
    )
    with rt.session() as session:
        save_newsletter(session, profile, THURSDAY)


def on_thursday(site: str) -> Fetcher:
    """A fetcher that sees the feeds as they were on Thursday (later articles not out yet)."""

    def fetch(url: str) -> tuple[bytes, str]:
        path = url.removeprefix(site)
        shown = f"{site}/thursday{path}" if path != "/feed.json" else url
        return fetch_feed(shown, allow_hosts=("127.0.0.1",))

    return fetch


def started_on_thursday(rt: Runtime, site: str) -> None:
    newsletter(rt, site)
    with rt.session() as session:
        profile = profile_of(get_newsletter(session, THURSDAY))
        start_from_feeds(
            session,
            profile,
            "2026-W49",
            *WEEK,
            THURSDAY,
            fetch=on_thursday(site),
        )
        store_checked(session, "2026-W49", THURSDAY, rt.settings.public_url)
        session.commit()


def client_of(rt: Runtime) -> TestClient:
    add_user(rt, "ales", role="editor")
    client = TestClient(create_app(rt), client=("198.51.100.7", 40000))
    login(client)
    return client


def test_a_start_from_the_feeds_stores_its_problems_and_the_cli_send_refuses_it(
    rt: Runtime, site: str
) -> None:
    # Given the desk and the three feeds; the Atom feed's photo has no description
    newsletter(rt, site)
    with rt.session() as session:
        profile_feeds = {"en": f"{site}/feed.json", "be": f"{site}/be/feed/atom/"}
        profile = profile_of(get_newsletter(session, THURSDAY))
        save_newsletter(
            session, replace(profile, feeds={**profile.feeds, **profile_feeds}), THURSDAY
        )
        session.commit()
    client = client_of(rt)
    token = csrf_of(client.get("/desk/editions/new").text)
    # When an editor starts the week's edition from the feeds
    answer = client.post(
        "/desk/editions/new",
        data={
            "csrf": token,
            "way": "feeds",
            "key": "2026-W49",
            "start": "2026-11-30",
            "end": "2026-12-06",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 303
    # Then its problems are stored with it, at their fields
    with rt.session() as session:
        edition = find_edition(session, "2026-W49")
        assert edition is not None
        problems = stored_problems(session, edition)
        at_fields = [(p["language"], p["row"], p["field"], p["reason"]) for p in problems]
        assert ("be", 1, "image.alt", "image without alt text") in at_fields
        extra = "ru has 3 articles, {0} 2 — mark the extra one as not in {0}, or add it"
        missing = "article 3 is missing in {0}: write it, mark it as not in {0}, or remove the row"
        expected = [
            ("be", 1, "image.alt", "image without alt text"),
            ("be", None, "items", extra.format("be")),
            ("en", None, "items", extra.format("en")),
            ("be", 2, "item", missing.format("be")),
            ("en", 2, "item", missing.format("en")),
        ]
        assert sorted(at_fields, key=str) == sorted(expected, key=str)
        # And `newsletter send start` (create_send) refuses it, as the desk's send page does
        with pytest.raises(
            EditionHasProblems,
            match=r"edition 2026-W49 has 5 problems \(first: image without alt text\)",
        ):
            create_send(session, edition, THURSDAY)


def test_an_empty_start_is_stored_with_its_problems(rt: Runtime, site: str) -> None:
    newsletter(rt, site)
    client = client_of(rt)
    token = csrf_of(client.get("/desk/editions/new").text)
    client.post(
        "/desk/editions/new",
        data={
            "csrf": token,
            "way": "empty",
            "key": "2026-W50",
            "start": "2026-12-07",
            "end": "2026-12-13",
        },
        follow_redirects=False,
    )
    with rt.session() as session:
        edition = find_edition(session, "2026-W50")
        assert edition is not None
        reasons = [problem["reason"] for problem in stored_problems(session, edition)]
        assert "is empty" in reasons and "expected a non-empty list of items" in reasons
        with pytest.raises(EditionHasProblems):
            create_send(session, edition, THURSDAY)


def test_refresh_adds_the_new_articles_and_keeps_the_editors_changes(
    rt: Runtime, site: str
) -> None:
    # Given the week's edition started on Thursday, and an editor's changes to it
    started_on_thursday(rt, site)
    with rt.session() as session:
        draft = drafts.load_draft(session, "2026-W49")
        counts = {lang: len([c for c in t.cells if c]) for lang, t in draft.texts.items()}
        assert counts == {"en": 2, "be": 1, "ru": 2}
        ru = draft.texts["ru"]
        first = ru.cells[0]
        assert first is not None
        edited = drafts.ItemCell({**first.values, "title": "Рубль: правка редактора"})
        draft = replace(
            draft,
            texts={**draft.texts, "ru": replace(ru, subject="Выпуск недели",
                                                cells=(edited, *ru.cells[1:]))},
        )  # fmt: skip
        drafts.save_draft(session, draft, THURSDAY, rt.settings.public_url)
        session.commit()
    client = client_of(rt)
    edit_page = client.get("/desk/editions/2026-W49").text

    # When the editor refreshes it from the feeds on Sunday
    answer = client.post("/desk/editions/2026-W49/refresh", data={"csrf": csrf_of(edit_page)})

    # Then the page says what was added
    assert answer.status_code == 200
    assert "2 new articles: 1 be, 1 ru." in answer.text
    assert 'href="/desk/editions/2026-W49"' in answer.text
    with rt.session() as session:
        edition = find_edition(session, "2026-W49")
        assert edition is not None
        stored = drafts.load_draft(session, "2026-W49")
        # The new articles are in a new row after the last, the editor's changes untouched
        ru_cells = stored.texts["ru"].cells
        be_cells = stored.texts["be"].cells
        assert [c["url"] if c else None for c in ru_cells] == [
            "https://example.org/ru/2026/11/rouble/",
            "https://example.org/ru/2026/12/china/",
            "https://example.org/ru/2026/12/letters/",
        ]
        assert [c["url"] if c else None for c in be_cells] == [
            "https://example.org/be/2026/12/return/",
            None,
            "https://example.org/be/2026/12/taxes/",
        ]
        assert ru_cells[0] is not None and ru_cells[0]["title"] == "Рубль: правка редактора"
        assert stored.texts["ru"].subject == "Выпуск недели"
        # The feed's cleaned article: the repeated lead and the photo left the body
        taxes = be_cells[2]
        assert taxes is not None and taxes["lead"] == "Падаткі для ІП растуць з 1 студзеня."
        assert taxes["body"] == "Міністэрства тлумачыць чаму."
        # Checked and stored with the problems a save finds (en lacks the new row)
        assert "article 3 is missing in en: write it, mark it as not in en, or remove the row" in [
            p.reason for p in stored.problems
        ]
        # Recorded in the action log
        logged = session.scalars(
            select(DeskAction).where(DeskAction.action == "edition.refresh")
        ).all()
        assert [(a.user_name, a.subject, dict(a.detail or {})) for a in logged] == [
            ("ales", "2026-W49", {"added": "2 new articles: 1 be, 1 ru"})
        ]

    # And a second refresh finds nothing new and changes nothing
    again = client.post("/desk/editions/2026-W49/refresh", data={"csrf": csrf_of(edit_page)})
    assert "No new articles in the feeds." in again.text
    with rt.session() as session:
        edition = find_edition(session, "2026-W49")
        assert edition is not None
        counts = {lang: len(c.items) for lang, c in edition_contents(session, edition).items()}
        assert counts == {"en": 2, "be": 2, "ru": 3}
        assert drafts.load_draft(session, "2026-W49").row_count == 3

    # A refresh without the CSRF token is refused
    assert client.post("/desk/editions/2026-W49/refresh", data={}).status_code == 403


def test_refresh_in_belarusian_and_refusals(rt: Runtime, site: str) -> None:
    started_on_thursday(rt, site)
    client = client_of(rt)
    token = csrf_of(client.get("/desk/editions/2026-W49").text)
    answer = client.post("/desk/editions/2026-W49/refresh?lang=be", data={"csrf": token})
    assert "2 новыя артыкулы: 1 be, 1 ru." in answer.text
    missing = client.post("/desk/editions/1999-W01/refresh", data={"csrf": token})
    assert missing.status_code == 404 and "There is no edition 1999-W01." in missing.text


def test_an_edition_with_a_send_is_not_refreshed(rt: Runtime) -> None:
    seed(rt, [])
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        create_send(session, edition, THURSDAY)
        session.commit()
        with pytest.raises(EditionLocked):
            refresh_from_feeds(session, "2024-W28", THURSDAY, rt.settings.public_url)


def test_the_refresh_form_include(rt: Runtime, site: str) -> None:
    started_on_thursday(rt, site)
    environment = create_app(rt).state.pages.environment("ru")
    template = environment.get_template("desk/refresh_form.html.j2")
    with rt.session() as session:
        draft = drafts.load_draft(session, "2026-W49")
    shown = template.render(draft=draft, csrf="token-1")
    assert 'action="/desk/editions/2026-W49/refresh"' in shown
    assert 'name="csrf" value="token-1"' in shown and "Обновить из лент" in shown
    assert template.render(draft=replace(draft, locked=True), csrf="t").strip() == ""
    # The edit page carries it, outside the edit form (forms do not nest)
    page = client_of(rt).get("/desk/editions/2026-W49").text
    assert page.count('action="/desk/editions/2026-W49/refresh"') == 1
    assert page.index("/refresh") < page.index('action="/desk/editions/2026-W49"')


def test_a_period_that_is_not_one_is_refused_with_its_reason(rt: Runtime, site: str) -> None:
    started_on_thursday(rt, site)
    with rt.session() as session:
        draft = drafts.load_draft(session, "2026-W49")
        swapped = replace(draft, period_start="2026-12-06", period_end="2026-11-30")
        drafts.save_draft(session, swapped, THURSDAY, rt.settings.public_url)
        session.commit()
    client = client_of(rt)
    token = csrf_of(client.get("/desk/editions/2026-W49").text)
    answer = client.post("/desk/editions/2026-W49/refresh", data={"csrf": token})
    assert answer.status_code == 409
    assert (
        "Edition 2026-W49 cannot be refreshed: the period ends (2026-11-30) before it starts "
        "(2026-12-06): correct it and save first." in answer.text
    )
