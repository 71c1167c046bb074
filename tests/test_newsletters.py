"""The newsletter row and editions in the database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from tests.samples import SAMPLE_EDITION
from worker.db import make_engine
from worker.editions.files import read_edition, read_newsletter_profile
from worker.editions.store import EditionLocked, get_newsletter, save_edition, save_newsletter
from worker.models import Send

NOW = datetime(2024, 7, 15, 6, 0, tzinfo=UTC)


def test_a_second_process_creating_the_newsletter_at_the_same_moment_reads_the_first_ones(
    pg_url: str,
) -> None:
    # Given one session that has inserted the newsletter but not committed yet
    engine = make_engine(pg_url)
    profile_path = str(SAMPLE_EDITION / "newsletter.yaml")
    first = Session(engine)
    created = save_newsletter(
        first, read_newsletter_profile(SAMPLE_EDITION / "newsletter.yaml"), NOW, "race"
    )
    result: dict[str, int] = {}

    def second() -> None:
        with Session(engine) as session:
            result["id"] = get_newsletter(session, NOW, slug="race", profile_path=profile_path).id
            session.commit()

    # When a second session asks for it (its INSERT waits on the first one's unique key)
    thread = threading.Thread(target=second)
    thread.start()
    thread.join(0.5)
    first.commit()
    thread.join(10)
    # Then it gets the first session's row instead of an IntegrityError
    assert result["id"] == created.id
    first.close()
    engine.dispose()


def test_loading_an_edition_again_updates_it_until_a_send_exists(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    source = read_edition(SAMPLE_EDITION)
    with Session(engine) as session:
        edition = save_edition(session, source, NOW)
        again = save_edition(session, source, NOW)
        assert again.id == edition.id
        assert sorted(c.language for c in again.contents) == ["be", "en", "ru"]
        session.add(Send(edition_id=edition.id, status="sending", created_at=NOW))
        session.flush()
        with pytest.raises(EditionLocked):
            save_edition(session, source, NOW)
    engine.dispose()
