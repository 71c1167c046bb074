"""The public archive: only editions that went out (issue 13, finding 10), an index per language
newest first, and an Atom feed (RFC 4287) that a real feed reader accepts."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import feedparser
import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import select

from tests.samples import SAMPLE_EDITION
from worker import actors
from worker.editions.files import read_edition
from worker.editions.store import save_edition
from worker.models import Delivery, Edition, Subscriber
from worker.runtime import Runtime
from worker.sending.sends import Repeat, create_send
from worker.states import DeliveryState, SendStatus
from worker.web.app import create_app

ATOM = "{http://www.w3.org/2005/Atom}"
W28_OUT = datetime(2024, 7, 15, 9, 0, tzinfo=UTC)
W29_OUT = datetime(2024, 7, 22, 9, 0, tzinfo=UTC)


def next_week(tmp_path: Path) -> Path:
    """The sample edition as 2024-W29, with its own subjects."""
    folder = tmp_path / "2024-W29"
    shutil.copytree(SAMPLE_EDITION, folder)
    for language in ("en", "be", "ru"):
        path = folder / f"{language}.yaml"
        text = path.read_text().replace("edition: 2024-W28", "edition: 2024-W29")
        path.write_text(text.replace('subject: "', 'subject: "W29 ', 1))
    return folder


def load(rt: Runtime, folder: Path) -> int:
    with rt.session() as session:
        return save_edition(session, read_edition(folder), rt.clock.now()).id


def finished_send(rt: Runtime, edition_id: int, started: datetime) -> None:
    """A send of the edition that ran to its end."""
    with rt.session() as session:
        edition = session.get(Edition, edition_id)
        assert edition is not None
        send = create_send(session, edition, started)
        send.status, send.started_at, send.finished_at = SendStatus.FINISHED, started, started


def sending_with_one_copy_out(rt: Runtime, edition_id: int, started: datetime) -> None:
    """A send still under way whose first copy the relay has taken (state ``sent``)."""
    actors.handle_signup(
        {"version": 1, "event_id": "a1", "email": "a@example.org", "language": "en"}
    )
    with rt.session() as session:
        reader = session.scalars(select(Subscriber)).one()
        edition = session.get(Edition, edition_id)
        assert edition is not None
        send = create_send(session, edition, started, repeat=Repeat.AGAIN)  # after others
        send.status, send.started_at = SendStatus.SENDING, started
        session.flush()
        session.add(
            Delivery(
                send_id=send.id,
                subscriber_id=reader.id,
                language="en",
                domain="example.org",
                state=DeliveryState.SENT,
                sent_at=started,
                updated_at=started,
            )
        )


PUBLIC_PATHS = ("/archive/2024-W28/en", "/archive/2024-W28/be", "/archive/2024-W28/ru")


def test_editions_that_never_went_out_are_a_404_that_reveals_nothing(rt: Runtime) -> None:
    # Given the sample edition loaded, and then scheduled, but never sent
    edition_id = load(rt, SAMPLE_EDITION)
    client = TestClient(create_app(rt))
    unknown = client.get("/archive/2099-W01/en")
    assert unknown.status_code == 404
    for path in PUBLIC_PATHS:
        # Then a guessed week is answered exactly as a key that does not exist
        answer = client.get(path)
        assert (answer.status_code, answer.text) == (404, unknown.text)
    with rt.session() as session:
        edition = session.get(Edition, edition_id)
        assert edition is not None
        # not the first send of the edition in this test: the duplicate guard is told so
        cancelled = create_send(session, edition, W28_OUT, repeat=Repeat.AGAIN)
        cancelled.status = SendStatus.CANCELLED  # stopped before anything went out
        create_send(session, edition, W28_OUT, repeat=Repeat.AGAIN)  # scheduled for later
    for path in PUBLIC_PATHS:
        assert client.get(path).status_code == 404
    assert "2024-W28" not in client.get("/archive").text
    assert "2024-W28" not in client.get("/archive/en/feed.atom").text
    assert client.get("/archive/2024-W28/en?newsletter=other").status_code == 404

    # When its first copy has gone out, it is public in every language
    sending_with_one_copy_out(rt, edition_id, W28_OUT)
    for path in PUBLIC_PATHS:
        page = client.get(path)
        assert page.status_code == 200
        assert "%%" not in page.text  # no placeholder (unsubscribe, preferences) left
    assert client.get("/archive/2024-W28/de").status_code == 404


def test_index_lists_sent_editions_newest_first_per_language(rt: Runtime, tmp_path: Path) -> None:
    w28 = load(rt, SAMPLE_EDITION)
    w29 = load(rt, next_week(tmp_path))
    client = TestClient(create_app(rt))
    assert "W29" not in client.get("/archive/en").text

    finished_send(rt, w28, W28_OUT)
    finished_send(rt, w29, W29_OUT)

    home = client.get("/archive")
    assert home.status_code == 200 and '<html lang="en">' in home.text
    assert home.text.index("/archive/2024-W29/en") < home.text.index("/archive/2024-W28/en")
    be = client.get("/archive/be")
    assert '<html lang="be">' in be.text and "Архіў" in be.text
    assert be.text.index("/archive/2024-W29/be") < be.text.index("/archive/2024-W28/be")
    assert 'href="/archive/ru" hreflang="ru"' in be.text
    assert client.get("/archive/de").status_code == 404
    assert client.get("/archive/en?newsletter=none").status_code == 404


@pytest.mark.parametrize("language", ["en", "be", "ru"])
def test_atom_feed_is_valid_rfc_4287(rt: Runtime, tmp_path: Path, language: str) -> None:
    finished_send(rt, load(rt, SAMPLE_EDITION), W28_OUT)
    finished_send(rt, load(rt, next_week(tmp_path)), W29_OUT)
    client = TestClient(create_app(rt))

    answer = client.get(f"/archive/{language}/feed.atom")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/atom+xml; charset=utf-8"
    # A feed reader accepts it as Atom 1.0 without complaint
    parsed = feedparser.parse(answer.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.language == language
    base = "http://testserver/archive"
    assert [entry.link for entry in parsed.entries] == [
        f"{base}/2024-W29/{language}",
        f"{base}/2024-W28/{language}",
    ]
    assert parsed.entries[0].title.startswith("W29 ")
    assert parsed.entries[0].updated_parsed[:4] == (2024, 7, 22, 9)
    # RFC 4287 section 4.1.1: the feed has id, title, updated, an author and a self link; each
    # entry (section 4.1.2) has id, title, updated; ids are absolute IRIs
    root = etree.fromstring(answer.content)
    assert root.tag == f"{ATOM}feed"
    for child in ("id", "title", "updated", "author"):
        assert root.find(f"{ATOM}{child}") is not None, child
    assert root.find(f"{ATOM}link[@rel='self']").get("href") == f"{base}/{language}/feed.atom"
    entries = root.findall(f"{ATOM}entry")
    assert len(entries) == 2
    for entry in entries:
        for child in ("id", "title", "updated"):
            assert (entry.findtext(f"{ATOM}{child}") or "").strip(), child
        assert (entry.findtext(f"{ATOM}id") or "").startswith("http://testserver/")
    assert client.get("/archive/de/feed.atom").status_code == 404


def test_empty_feed_is_valid_and_stable(rt: Runtime) -> None:
    load(rt, SAMPLE_EDITION)  # loaded, never sent
    client = TestClient(create_app(rt))
    first, second = client.get("/archive/en/feed.atom"), client.get("/archive/en/feed.atom")
    parsed = feedparser.parse(first.content)
    assert not parsed.bozo and parsed.version == "atom10" and parsed.entries == []
    assert first.content == second.content


def test_a_fresh_install_has_an_empty_archive_not_an_error(rt: Runtime) -> None:
    client = TestClient(create_app(rt))
    home = client.get("/archive/be")
    assert home.status_code == 200 and "Пакуль не выйшла ніводнага выпуску." in home.text
    assert client.get("/archive").status_code == 200
