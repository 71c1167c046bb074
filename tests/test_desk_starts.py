"""``/desk/editions/new``: an edition started from the feeds, from a zip, or empty; each refusal
shown on the form with nothing stored (worker/web/desk/starts.py)."""

from __future__ import annotations

import html
import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import UploadFile
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.desk_kit import add_user, csrf_of, login
from tests.feed_server import feed_server
from worker.editions import starts as starts_domain
from worker.editions.bundles import bundle_of
from worker.editions.feeds import FeedProblem, FetchProblem, ending_week, fetch_feed
from worker.editions.files import NewsletterProfile, read_edition, read_newsletter_profile
from worker.editions.starts import (
    Refusal,
    StartRefused,
    _feed_refusal,
    period_of,
    profile_changes,
    profile_refusal,
)
from worker.editions.store import edition_contents, find_edition, profile_of, save_newsletter
from worker.models import DeskAction, Edition
from worker.runtime import Runtime
from worker.settings import TEMPLATES_DIR
from worker.web.app import create_app
from worker.web.desk import starts as starts_web
from worker.web.desk.starts import _upload, period_help
from worker.web.pages import Pages

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
WEEK = {"start": "2026-11-30", "end": "2026-12-06"}


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with feed_server() as base:
        yield base


def stored_profile(site: str, ru: str = "/ru/feed/") -> NewsletterProfile:
    """The newsletter's profile in these tests: the sample's, with the three feeds."""
    return replace(
        read_newsletter_profile(SAMPLE / "newsletter.yaml"),
        timezone="Europe/Minsk",
        feeds={"en": f"{site}/feed.json", "be": f"{site}/be/feed/atom/", "ru": f"{site}{ru}"},
    )


def desk(rt: Runtime, site: str, ru: str = "/ru/feed/", role: str = "editor") -> TestClient:
    """A logged-in desk user's client (an editor unless ``role``); the newsletter's profile
    names the three feeds."""
    with rt.session() as session:
        save_newsletter(session, stored_profile(site, ru), rt.clock.now())
    add_user(rt, "ales", role=role)
    client = TestClient(create_app(rt), client=("198.51.100.7", 40000))
    login(client)
    return client


def post(
    client: TestClient, data: dict[str, str], files: dict[str, tuple[str, bytes, str]] | None = None
) -> httpx.Response:
    token = csrf_of(client.get("/desk/editions/new").text)
    answer: httpx.Response = client.post(
        "/desk/editions/new",
        data={"csrf": token, **data},
        files=files,
        follow_redirects=False,
    )
    return answer


def editions(rt: Runtime) -> list[str]:
    with rt.session() as session:
        return sorted(session.scalars(select(Edition.key)))


def actions(rt: Runtime) -> list[tuple[str, str, str, dict[str, str]]]:
    with rt.session() as session:
        rows = session.scalars(select(DeskAction).where(DeskAction.action == "edition.start"))
        return [(r.user_name, r.action, r.subject, dict(r.detail or {})) for r in rows]


def test_the_page_offers_three_ways_with_the_week_that_is_ending(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    page = client.get("/desk/editions/new")
    assert page.status_code == 200
    today = rt.clock.now().astimezone(ZoneInfo("Europe/Minsk")).date()
    monday, sunday = ending_week(today)
    assert monday <= today <= sunday and monday.weekday() == 0
    assert f'value="{monday}"' in page.text and f'value="{sunday}"' in page.text
    year, week, _ = today.isocalendar()
    assert f'value="{year}-W{week:02d}"' in page.text
    # The period and the sending day in words, in the desk's language
    assert period_help(date(2026, 11, 30), date(2026, 12, 6), "en") == {
        "first": "Monday 30 November",
        "last": "Sunday 6 December",
        "sent": "Monday 7 December",
    }
    words = period_help(monday, sunday, "en")
    assert (
        f"Articles published {words['first']} – {words['last']}; sent {words['sent']}." in page.text
    )
    russian = client.get("/desk/editions/new?lang=ru").text
    assert "Статьи, опубликованные в период понедельник " in russian
    # A refused start says the period typed in words, with the reasons
    form = {"csrf": csrf_of(page.text), "way": "empty", "key": "2026 W49", **WEEK}
    refused = client.post("/desk/editions/new?lang=en", data=form)
    assert refused.status_code == 422
    said = "Articles published Monday 30 November – Sunday 6 December; sent Monday 7 December."
    assert said in refused.text
    for label in ("From the website's feeds", "From a zip archive", "Empty"):
        assert label in page.text
    belarusian = client.get("/desk/editions/new?lang=be").text
    assert "Са стужак сайта" in belarusian and "Пачаць пусты выпуск" in belarusian
    assert "Из лент сайта" in client.get("/desk/editions/new?lang=ru").text
    assert ending_week(date(2026, 12, 3)) == (date(2026, 11, 30), date(2026, 12, 6))
    assert ending_week(date(2026, 12, 7)) == (date(2026, 12, 7), date(2026, 12, 13))
    anonymous = TestClient(create_app(rt)).get("/desk/editions/new", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/desk/login")


def test_from_the_feeds(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    answer = post(client, {"way": "feeds", "key": "2026-W49", **WEEK})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/desk/editions/2026-W49"
    with rt.session() as session:
        edition = find_edition(session, "2026-W49")
        assert edition is not None
        counts = {lang: len(c.items) for lang, c in edition_contents(session, edition).items()}
    assert counts == {"en": 2, "be": 2, "ru": 3}
    assert actions(rt) == [
        (
            "ales",
            "edition.start",
            "2026-W49",
            {
                "way": "feeds",
                "period": "2026-11-30..2026-12-06",
                "notes": "the languages have different numbers of items (2 en, 2 be, 3 ru)",
            },
        )
    ]


def test_a_failed_feed_is_shown_and_nothing_stored_until_accepted(rt: Runtime, site: str) -> None:
    client = desk(rt, site, ru="/ru/missing/")
    refused = post(client, {"way": "feeds", "key": "2026-W49", **WEEK})
    assert refused.status_code == 422
    text = refused.text
    assert f"ru feed: HTTP 404 at {site}/ru/missing/" in text
    assert "Nothing was stored." in text and 'value="2026-W49"' in text
    assert editions(rt) == [] and actions(rt) == []

    accepted = post(client, {"way": "feeds", "key": "2026-W49", "accept_failed": "1", **WEEK})
    assert accepted.status_code == 303
    assert editions(rt) == ["2026-W49"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"way": "empty", "key": "2026 W49", **WEEK}, "edition key '2026 W49' must be"),
        (
            {"way": "empty", "key": "2026-W49", "start": "2026-12-06", "end": "2026-11-30"},
            "the period ends (2026-11-30) before it starts (2026-12-06)",
        ),
        ({"way": "empty", "key": "2026-W49", "start": "soon", "end": ""}, "expected two dates"),
        ({"way": "mail", "key": "2026-W49", **WEEK}, "choose one of the three ways"),
        ({"way": "zip"}, "choose a .zip file of an edition folder"),
        (
            {"way": "feeds", "key": "2027-W02", "start": "2027-01-04", "end": "2027-01-10"},
            "no article in any feed was published from 2027-01-04 to 2027-01-10",
        ),
    ],
)
def test_form_errors_store_nothing(
    rt: Runtime, site: str, data: dict[str, str], expected: str
) -> None:
    client = desk(rt, site)
    answer = post(client, data)
    assert answer.status_code == 422
    assert expected in answer.text
    assert editions(rt) == [] and actions(rt) == []


def test_empty_and_then_the_same_key_again(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    answer = post(
        client, {"way": "empty", "key": "2026-W50", "start": "2026-12-07", "end": "2026-12-13"}
    )
    assert answer.headers["location"] == "/desk/editions/2026-W50"
    with rt.session() as session:
        edition = find_edition(session, "2026-W50")
        assert edition is not None
        assert all(c.items == () for c in edition_contents(session, edition).values())
    again = post(client, {"way": "feeds", "key": "2026-W50", **WEEK})
    assert again.status_code == 422
    assert "edition 2026-W50 exists already" in again.text
    assert [a[3]["way"] for a in actions(rt)] == ["empty"]


def test_from_a_zip_and_its_refusals(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    source = replace(read_edition(SAMPLE), newsletter=stored_profile(site))
    # An archive that tries to leave its folder
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("newsletter.yaml", (SAMPLE / "newsletter.yaml").read_bytes())
        archive.writestr("../../etc/cron.d/x", b"* * * * * root sh")
    evil = post(client, {"way": "zip"}, {"bundle": ("e.zip", buffer.getvalue(), "application/zip")})
    assert evil.status_code == 422
    assert "a path with &#39;..&#39; or &#39;.&#39; is refused" in evil.text
    # An edition with a mistake: reported with file and line
    broken = replace(
        source,
        contents={**source.contents, "ru": replace(source.contents["ru"], subject="a\nb")},
    )
    answer = post(
        client, {"way": "zip"}, {"bundle": ("b.zip", bundle_of(broken), "application/zip")}
    )
    assert answer.status_code == 422
    assert "ru.yaml:7: subject: must be one line" in answer.text
    assert editions(rt) == []
    # A good one
    good = post(client, {"way": "zip"}, {"bundle": ("w.zip", bundle_of(source), "application/zip")})
    assert good.status_code == 303
    assert good.headers["location"] == "/desk/editions/2024-W28"
    with rt.session() as session:
        edition = find_edition(session, "2024-W28")
        assert edition is not None
        assert edition_contents(session, edition) == dict(source.contents)
    assert [(a[2], a[3]) for a in actions(rt)] == [("2024-W28", {"way": "zip"})]


def test_a_post_without_the_csrf_token_is_refused(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    answer = client.post(
        "/desk/editions/new", data={"way": "empty", "key": "x1", **WEEK}, follow_redirects=False
    )
    assert answer.status_code == 403
    assert editions(rt) == []


def test_an_upload_over_the_cap_is_refused_before_it_is_read(rt: Runtime, site: str) -> None:
    client = desk(rt, site)
    huge = b"PK" + b"\0" * (21 * 1024 * 1024)
    answer = post(client, {"way": "zip"}, {"bundle": ("big.zip", huge, "application/zip")})
    # The start form again (a desk page, not the app's JSON), its zip field saying why
    assert answer.status_code == 413
    assert answer.headers["content-type"].startswith("text/html")
    assert '<p class="error" id="bundle-error-1"' in answer.text
    assert "the archive is larger than 20 MB" in answer.text
    assert "Nothing was stored." in answer.text and 'name="csrf"' in answer.text
    client.get("/desk/editions/new?lang=ru")
    answer = post(client, {"way": "zip"}, {"bundle": ("big.zip", huge, "application/zip")})
    assert answer.status_code == 413 and "архив больше 20 МБ" in answer.text
    # Without a login: the desk's refusal, the body unread
    anonymous = TestClient(create_app(rt)).post(
        "/desk/editions/new", files={"bundle": ("big.zip", huge, "application/zip")}
    )
    assert anonymous.status_code == 401 and "Log in again" in anonymous.text
    # Other routes keep the app's JSON 413
    assert TestClient(create_app(rt)).post("/signup", content=huge).status_code == 413
    client.get("/desk/editions/new?lang=en")
    just_over = b"PK" + b"\0" * (20 * 1024 * 1024)  # over the bundle cap, under the body cap
    answer = post(client, {"way": "zip"}, {"bundle": ("big.zip", just_over, "application/zip")})
    assert answer.status_code == 422 and "the archive is larger than 20 MB" in answer.text
    assert editions(rt) == []


def profile_rows(rt: Runtime) -> list[tuple[str, str, str, dict[str, str]]]:
    with rt.session() as session:
        rows = session.scalars(select(DeskAction).where(DeskAction.action == "newsletter.change"))
        return [(r.user_name, r.action, r.subject, dict(r.detail or {})) for r in rows]


def changed_profile_zip(site: str) -> bytes:
    """The sample edition with a newsletter.yaml that changes the sender and the Russian feed."""
    profile = replace(
        stored_profile(site),
        from_address="news@attacker.example",
        feeds={**stored_profile(site).feeds, "ru": "https://attacker.example/ru.xml"},
    )
    return bundle_of(replace(read_edition(SAMPLE), newsletter=profile))


def test_an_editor_zip_may_not_change_the_newsletter_profile(rt: Runtime, site: str) -> None:
    # Given an editor, and a zip whose newsletter.yaml changes the sender and a feed
    client = desk(rt, site)
    upload = {"bundle": ("w.zip", changed_profile_zip(site), "application/zip")}
    # When the editor uploads it
    answer = post(client, {"way": "zip"}, upload)
    # Then it is refused, naming the fields, and nothing changed
    assert answer.status_code == 422
    assert (
        "newsletter.yaml changes from_address, feeds.ru: only an operator may change the "
        "newsletter's profile" in answer.text
    )
    assert editions(rt) == [] and actions(rt) == [] and profile_rows(rt) == []
    with rt.session() as session:
        assert profile_of(rt.newsletter(session)) == stored_profile(site)


def test_an_operator_zip_changes_the_profile_and_the_log_says_which_fields(
    rt: Runtime, site: str
) -> None:
    client = desk(rt, site, role="operator")
    upload = {"bundle": ("w.zip", changed_profile_zip(site), "application/zip")}
    answer = post(client, {"way": "zip"}, upload)
    assert answer.status_code == 303
    with rt.session() as session:
        profile = profile_of(rt.newsletter(session))
    assert profile.from_address == "news@attacker.example"
    assert profile.feeds["ru"] == "https://attacker.example/ru.xml"
    assert profile_rows(rt) == [
        (
            "ales",
            "newsletter.change",
            "newsletter.yaml",
            {"fields": "from_address, feeds.ru", "edition": "2024-W28"},
        )
    ]


def test_profile_changes_name_each_field() -> None:
    sample = read_newsletter_profile(SAMPLE / "newsletter.yaml")
    assert profile_changes(sample, sample) == []
    changed = replace(
        sample,
        reply_to="desk@example.org",
        name={**sample.name, "be": "Іншая назва"},
        feeds={"ru": "https://example.org/ru/feed/"},
        timezone="Europe/Minsk",
    )
    assert profile_changes(sample, changed) == ["name.be", "reply_to", "feeds.ru", "timezone"]
    assert profile_changes(changed, sample) == ["name.be", "reply_to", "feeds.ru", "timezone"]
    # Nothing stored yet: every field with a value is a change
    assert profile_changes(None, sample)[:3] == ["name.en", "name.be", "name.ru"]


def said(refusal: Refusal, lang: str) -> str:
    """The refusal as the start page shows it in ``lang`` (templates/desk/refusals.html.j2)."""
    template = (
        Pages()
        .environment(lang)
        .from_string('{% from "desk/refusals.html.j2" import said %}{{ said(r) }}')
    )
    return html.unescape(template.render(r=refusal))


def sample_refusals() -> list[Refusal]:
    """One refusal of each kind, made by the code that refuses."""
    found: list[Refusal] = []
    for start, end in (("soon", ""), ("2026-12-06", "2026-11-30")):
        with pytest.raises(StartRefused) as raised:
            period_of(start, end)
        found += raised.value.refusals
    found.append(profile_refusal(["from_address", "feeds.ru"]))
    for url in ("http://127.0.0.1:1/feed", "http://0.0.0.0:1/feed"):
        with pytest.raises(FetchProblem) as fetched:
            fetch_feed(url)
        problem = fetched.value
        found.append(
            _feed_refusal(FeedProblem("ru", url, str(problem), problem.code, problem.params))
        )
    found.append(
        _feed_refusal(
            FeedProblem("be", "", "no feed address in newsletter.yaml 'feeds'", "missing")
        )
    )
    for upload in (None, UploadFile(io.BytesIO(b""), filename="e.zip")):
        with pytest.raises(StartRefused) as raised:
            _upload(upload)
        found += raised.value.refusals
    return found


def test_every_refusal_reads_the_same_in_english_and_is_translated() -> None:
    for refusal in sample_refusals():
        assert refusal.code, refusal
        assert said(refusal, "en") == refusal.message
        for lang in ("be", "ru"):
            assert said(refusal, lang) != refusal.message, (lang, refusal)
    # Every code the start refuses with has its text in the template
    template = (TEMPLATES_DIR / "desk" / "refusals.html.j2").read_text(encoding="utf-8")
    sources = [Path(starts_domain.__file__), Path(starts_web.__file__)]
    codes = {
        c for s in sources for c in re.findall(r'Refusal\.of\(\s*"\w+",\s*"(\w+)"', s.read_text())
    }
    assert len(codes) >= 12
    for code in codes | {
        f"feed.{c}"
        for c in (
            "http",
            "too_large",
            "timeout",
            "redirects",
            "unreachable",
            "blocked",
            "missing",
            "not_feed",
            "too_deep",
        )
    }:
        assert f'r.code == "{code}"' in template, code


def test_refusals_in_belarusian_and_russian(rt: Runtime, site: str) -> None:
    client = desk(rt, site, ru="/ru/missing/")
    client.get("/desk/editions/new?lang=ru")  # the desk's language is remembered
    answer = post(client, {"way": "feeds", "key": "2026-W49", **WEEK})
    assert answer.status_code == 422
    assert f"Лента ru: HTTP 404 по адресу {site}/ru/missing/" in answer.text
    upload = {"bundle": ("w.zip", changed_profile_zip(site), "application/zip")}
    refused = post(client, {"way": "zip"}, upload)
    assert (
        "newsletter.yaml меняет from_address, feeds.ru: профиль рассылки может менять только "
        "оператор" in refused.text
    )
    client.get("/desk/editions/new?lang=be")
    answer = post(client, {"way": "empty", "key": "2026 W49", **WEEK})
    assert "ключ выпуску «2026 W49» можа складацца толькі з літар" in answer.text
