"""Starting a new edition in the database (worker/editions/starts.py), on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tests.feed_server import feed_server, local_fetch
from worker.editions.bundles import bundle_of
from worker.editions.files import NewsletterProfile, read_edition, read_newsletter_profile
from worker.editions.starts import (
    StartRefused,
    period_of,
    start_empty,
    start_from_bundle,
    start_from_feeds,
)
from worker.editions.store import edition_contents, find_edition
from worker.runtime import Runtime

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "editions" / "2024-W28"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
WEEK = (date(2026, 11, 30), date(2026, 12, 6))


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with feed_server() as base:
        yield base


def profile(site: str, ru: str = "/ru/feed/") -> NewsletterProfile:
    sample = read_newsletter_profile(SAMPLE / "newsletter.yaml")
    feeds = {"en": f"{site}/feed.json", "be": f"{site}/be/feed/atom/", "ru": f"{site}{ru}"}
    return replace(sample, timezone="Europe/Minsk", feeds=feeds)


def messages(raised: pytest.ExceptionInfo[StartRefused]) -> list[tuple[str, str]]:
    return [(refusal.field, refusal.message) for refusal in raised.value.refusals]


def test_from_feeds_stores_every_language(rt: Runtime, site: str) -> None:
    with rt.session() as session:
        started = start_from_feeds(
            session, profile(site), "2026-W49", *WEEK, NOW, fetch=local_fetch
        )
        session.commit()
    assert started.notes == ["the languages have different numbers of items (2 en, 2 be, 3 ru)"]
    with rt.session() as session:
        edition = find_edition(session, "2026-W49")
        assert edition is not None and edition.period_start == WEEK[0]
        stored = edition_contents(session, edition)
    assert {lang: len(c.items) for lang, c in stored.items()} == {"en": 2, "be": 2, "ru": 3}
    assert stored["en"].items[1].image is not None
    assert stored["en"].items[1].image.credit == "photo: elements.envato.com"


def test_a_failed_feed_refuses_unless_accepted(rt: Runtime, site: str) -> None:
    broken = profile(site, ru="/ru/missing/")
    with rt.session() as session, pytest.raises(StartRefused) as raised:
        start_from_feeds(session, broken, "2026-W49", *WEEK, NOW, fetch=local_fetch)
    assert messages(raised) == [("feeds", f"ru feed: HTTP 404 at {site}/ru/missing/")]
    with rt.session() as session:
        assert find_edition(session, "2026-W49") is None  # nothing half-saved
        started = start_from_feeds(
            session, broken, "2026-W49", *WEEK, NOW, accept_failed_feeds=True, fetch=local_fetch
        )
        session.commit()
        assert started.notes[0] == f"ru feed: HTTP 404 at {site}/ru/missing/"
        stored = edition_contents(session, started.edition)
    assert {lang: len(c.items) for lang, c in stored.items()} == {"en": 2, "be": 2, "ru": 0}


def test_refusals_name_the_field(rt: Runtime, site: str) -> None:
    with rt.session() as session:
        start_empty(session, profile(site), "2026-W49", *WEEK, NOW)
        session.commit()
        with pytest.raises(StartRefused) as raised:
            start_from_feeds(session, profile(site), "2026-W49", *WEEK, NOW, fetch=local_fetch)
        assert messages(raised) == [
            ("key", "edition 2026-W49 exists already: open it, or choose another key")
        ]
        with pytest.raises(StartRefused) as raised:
            start_empty(session, profile(site), "2026 W50", *WEEK, NOW)
        assert messages(raised) == [
            ("key", "edition key '2026 W50' must be letters, digits, '.', '_' or '-'")
        ]
        with pytest.raises(StartRefused) as raised:
            start_from_feeds(
                session,
                profile(site),
                "2027-W01",
                date(2027, 1, 4),
                date(2027, 1, 10),
                NOW,
                fetch=local_fetch,
            )
        assert messages(raised) == [
            ("feeds", "no article in any feed was published from 2027-01-04 to 2027-01-10")
        ]
    with pytest.raises(StartRefused) as raised:
        period_of("2026-12-06", "2026-11-30")
    assert messages(raised) == [
        ("period", "the period ends (2026-11-30) before it starts (2026-12-06)")
    ]
    with pytest.raises(StartRefused) as raised:
        period_of("next week", "")
    assert raised.value.refusals[0].field == "period"


def test_empty_edition_has_every_language_and_no_items(rt: Runtime, site: str) -> None:
    with rt.session() as session:
        started = start_empty(
            session, profile(site), "2026-W50", date(2026, 12, 7), date(2026, 12, 13), NOW
        )
        session.commit()
        stored = edition_contents(session, started.edition)
    assert sorted(stored) == ["be", "en", "ru"]
    assert all(c.items == () and c.subject == "" for c in stored.values())


def test_from_a_zip_checked_first(rt: Runtime, tmp_path: Path) -> None:
    source = read_edition(SAMPLE)
    with rt.session() as session:
        # Nothing stored yet: the zip sets the newsletter up, which only an operator may do
        with pytest.raises(StartRefused) as raised:
            start_from_bundle(session, bundle_of(source), NOW, "")
        assert messages(raised)[0][1].startswith("newsletter.yaml changes name.en, name.be, ")
        started = start_from_bundle(session, bundle_of(source), NOW, "", may_change_profile=True)
        session.commit()
        assert edition_contents(session, started.edition) == dict(source.contents)
        assert "from_address" in started.profile_changes
        with pytest.raises(StartRefused) as raised:
            start_from_bundle(session, bundle_of(source), NOW, "")
        assert messages(raised) == [
            ("key", "edition 2024-W28 exists already: open it, or choose another key")
        ]
        broken = replace(
            source,
            contents={
                **source.contents,
                "be": replace(source.contents["be"], subject="two\nlines"),
            },
        )
        with pytest.raises(StartRefused) as raised:
            start_from_bundle(session, bundle_of(replace(broken)), NOW, "")
        assert messages(raised) == [
            (
                "bundle",
                "the edition in the archive has a mistake: be.yaml:7: subject: must be one line",
            )
        ]
        with pytest.raises(StartRefused) as raised:
            start_from_bundle(session, b"not a zip", NOW, "")
        assert messages(raised)[0][0] == "bundle"
        assert messages(raised)[0][1].startswith("the archive cannot be used: not a zip archive")
